"""The emulator's authentication and RBAC (sandbox/rbac.py) as kube-apiserver answers: ServiceAccount tokens
from the TokenRequest API, 401 for an unknown token, ClusterRoleBindings and namespaced RoleBindings,
`*/subresource` and resourceNames rules, the 403 message word for word, the discovery every authenticated
user has, the authorization reviews answered by the same rules, and a token that dies with its account."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator

import httpx
import pytest
from medserve_sandbox.emulator import EmulatorProcess
from medserve_sandbox.emulator_process import KUBECTL

SA = "system:serviceaccount:team:reader"


@pytest.fixture(scope="module")
def emulator(emulator_factory: Callable[..., EmulatorProcess]) -> EmulatorProcess:
    emulator = emulator_factory()
    if not isinstance(emulator, EmulatorProcess):
        pytest.skip("the emulator's RBAC; the real server's is exercised by test_chart_rbac in the envtest tier")
    emulator.kubectl("create", "namespace", "team")
    emulator.kubectl("create", "namespace", "other")
    emulator.kubectl("create", "serviceaccount", "reader", "-n", "team")
    emulator.kubectl("create", "clusterrole", "pod-reader", "--verb=get,list,watch", "--resource=pods")
    emulator.kubectl("create", "rolebinding", "reader", "-n", "team", "--clusterrole=pod-reader",
                     "--serviceaccount=team:reader")
    emulator.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "status-and-one"},
        "rules": [{"apiGroups": [""], "resources": ["*/status"], "verbs": ["get"]},
                  {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["settings"]}]}))
    emulator.kubectl("create", "clusterrolebinding", "status-and-one", "--clusterrole=status-and-one",
                     "--serviceaccount=team:reader")
    return emulator


@pytest.fixture(scope="module")
def reader(emulator: EmulatorProcess) -> Iterator[httpx.Client]:
    token = emulator.kubectl("create", "token", "reader", "-n", "team").stdout.strip()
    with httpx.Client(base_url=emulator.url, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def test_a_role_binding_grants_in_its_namespace_only(reader: httpx.Client) -> None:
    assert reader.get("/api/v1/namespaces/team/pods").status_code == 200
    answer = reader.get("/api/v1/namespaces/other/pods")
    assert answer.status_code == 403
    assert answer.json() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": f'pods is forbidden: User "{SA}" cannot list resource "pods" in API group "" in the namespace '
                   '"other"',
        "details": {"kind": "pods"}}
    watch = reader.get("/api/v1/pods", params={"watch": "true", "timeoutSeconds": "1"})
    assert watch.status_code == 403
    assert watch.json()["message"] == (f'pods is forbidden: User "{SA}" cannot watch resource "pods" in API group '
                                       '"" at the cluster scope')


def test_subresource_wildcards_and_resource_names(reader: httpx.Client) -> None:
    assert reader.get("/api/v1/namespaces/default/serviceaccounts/default/status").status_code != 403
    assert reader.get("/api/v1/namespaces/team/configmaps/settings").status_code == 404  # allowed, absent
    refused = reader.get("/api/v1/namespaces/team/configmaps/other")
    assert refused.status_code == 403
    assert refused.json()["message"] == (f'configmaps "other" is forbidden: User "{SA}" cannot get resource '
                                         '"configmaps" in API group "" in the namespace "team"')
    assert reader.get("/api/v1/namespaces/team/configmaps").status_code == 403  # a list names no resource


def test_writes_need_their_verb(reader: httpx.Client) -> None:
    created = reader.post("/api/v1/namespaces/team/pods", json={
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    assert created.status_code == 403
    assert created.json()["message"] == (f'pods is forbidden: User "{SA}" cannot create resource "pods" in API '
                                         'group "" in the namespace "team"')


def test_discovery_is_every_authenticated_users(reader: httpx.Client) -> None:
    for path in ("/api", "/apis", "/version", "/api/v1", "/openapi/v2"):
        assert reader.get(path).status_code == 200, path
    metrics = reader.get("/metrics")
    assert metrics.status_code == 403
    assert metrics.json()["message"] == f'forbidden: User "{SA}" cannot get path "/metrics"'


def test_reviews_answer_with_the_same_rules(reader: httpx.Client) -> None:
    def review(attributes: dict[str, str]) -> dict[str, object]:
        answer = reader.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", json={
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes}})
        assert answer.status_code == 201
        status: dict[str, object] = answer.json()["status"]
        return status

    assert review({"namespace": "team", "verb": "list", "resource": "pods"}) == {
        "allowed": True,
        "reason": 'RBAC: allowed by RoleBinding "reader/team" of ClusterRole "pod-reader" to ServiceAccount '
                  '"reader/team"'}
    assert review({"namespace": "other", "verb": "list", "resource": "pods"}) == {"allowed": False}
    rules = reader.post("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", json={
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": "team"}})
    assert {"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["pods"]} \
        in rules.json()["status"]["resourceRules"]


def test_unknown_tokens_are_unauthorized_and_a_token_dies_with_its_account(emulator: EmulatorProcess) -> None:
    unknown = httpx.get(f"{emulator.url}/api/v1/namespaces/team/pods", headers={"Authorization": "Bearer nope"})
    assert unknown.status_code == 401
    assert unknown.json()["reason"] == "Unauthorized"
    emulator.kubectl("create", "serviceaccount", "brief", "-n", "team")
    token = emulator.kubectl("create", "token", "brief", "-n", "team").stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{emulator.url}/api", headers=headers).status_code == 200
    emulator.kubectl("delete", "serviceaccount", "brief", "-n", "team")
    emulator.kubectl("create", "serviceaccount", "brief", "-n", "team")  # same name, another account
    assert httpx.get(f"{emulator.url}/api", headers=headers).status_code == 401


def test_kubectl_as_the_account(emulator: EmulatorProcess, tmp_path_factory: pytest.TempPathFactory) -> None:
    """kubectl sends a token over https only: the account's kubeconfig points at the emulator's TLS port."""
    kubeconfig = emulator.service_account_kubeconfig(tmp_path_factory.mktemp("sa") / "kubeconfig", "team", "reader")

    def as_reader(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True,
                              timeout=60, check=False)

    assert as_reader("auth", "can-i", "list", "pods", "-n", "team").stdout.strip() == "yes"
    assert as_reader("auth", "can-i", "list", "pods", "-n", "other").stdout.strip() == "no"
    refused = as_reader("get", "secrets", "-n", "team")
    assert refused.returncode == 1
    assert (f'Error from server (Forbidden): secrets is forbidden: User "{SA}" cannot list resource "secrets" in API '
            'group "" in the namespace "team"') in refused.stderr
