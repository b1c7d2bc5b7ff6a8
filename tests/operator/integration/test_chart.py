"""The Helm chart (charts/medserve): `helm lint`, `helm template`, and every rendered object is valid Kubernetes.

Runs the real `helm` binary (on PATH, or the one `make helm` / `.ci/install-tools` put into .venv/bin);
skipped with the reason when there is none.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "medserve"
KUBERNETES_VERSION = "1.32.0"
HELM = shutil.which("helm") or shutil.which("helm", path=str(Path(sys.executable).parent))

pytestmark = pytest.mark.skipif(HELM is None, reason="no helm binary on PATH or in .venv/bin (run `make helm`)")


def helm(*args: str) -> str:
    assert HELM is not None
    result = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def render(*values: str) -> list[dict[str, Any]]:
    sets = [arg for value in values for arg in ("--set", value)]
    out = helm("template", "medserve", str(CHART), "--namespace", "medserve-system", "--include-crds", *sets)
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_helm_lint() -> None:
    out = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("values", [
    (),
    ("operator.watchNamespaces={clinical,research}", "operator.logLevel=debug",
     "runtime.image.repository=example/rt", "runtime.image.tag=1",
     "mlflow.runtimeTrackingUri=http://mlflow:5000", "serviceAccount.create=false", "serviceAccount.name=ops",
     "audit.dsnSecret.name=audit-db", "audit.keySecret.name=audit-key", "redis.secret.name=redis",
     "audit.spool.persistent=true", "audit.spool.storageClassName=nfs-rwx", "audit.spool.size=5Gi",
     "networkPolicy.enabled=true", "networkPolicy.namespaces={clinical}", "networkPolicy.postgres.enabled=true",
     "networkPolicy.postgres.to[0].ipBlock.cidr=10.0.5.0/24", "networkPolicy.redis.enabled=true"),
], ids=["defaults", "every-option"])
def test_every_rendered_object_is_valid(values: tuple[str, ...]) -> None:
    objects = render(*values)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds.count("CustomResourceDefinition") == 3
    assert {"Deployment", "ClusterRole", "ClusterRoleBinding"} <= set(kinds)
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.path}: {exc.message}")


def test_chart_crds_are_the_generated_ones() -> None:
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        assert (CHART / "crds" / crd.name).read_text() == crd.read_text(), f"run `make crds`: {crd.name} differs"


def test_operator_pod_is_restricted() -> None:
    (deployment,) = by_kind(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MEDSERVE_MLFLOW_URI"].startswith("http")
    assert env["MEDSERVE_RESYNC_SECONDS"] == "30"
    assert pod["serviceAccountName"] == "medserve"


def test_cluster_role_grants_exactly_what_the_operator_uses() -> None:
    (role,) = by_kind(render(), "ClusterRole")
    grants = {(group, resource): set(rule["verbs"])
              for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}
    assert grants == {
        # A RetrainPolicy with promotion strategy abtest creates a challenger and an ABTest.
        ("medserve.io", "modeldeployments"): {"get", "list", "watch", "patch", "create", "delete"},
        ("medserve.io", "abtests"): {"get", "list", "watch", "patch", "create"},
        ("medserve.io", "retrainpolicies"): {"get", "list", "watch", "patch"},
        ("medserve.io", "modeldeployments/status"): {"patch"},
        ("medserve.io", "abtests/status"): {"patch"},
        ("medserve.io", "retrainpolicies/status"): {"patch"},
        # blockOwnerDeletion under OwnerReferencesPermissionEnforcement.
        ("medserve.io", "modeldeployments/finalizers"): {"update"},
        ("medserve.io", "abtests/finalizers"): {"update"},
        ("medserve.io", "retrainpolicies/finalizers"): {"update"},
        ("serving.kserve.io", "inferenceservices"): {"get", "list", "watch", "create", "update"},
        ("serving.kserve.io", "inferencegraphs"): {"get", "list", "watch", "create", "update"},
        ("batch", "jobs"): {"list", "watch", "create"},
        ("batch", "cronjobs"): {"get", "create", "update", "delete"},
        ("", "events"): {"create"},
        ("", "persistentvolumeclaims"): {"get", "create", "update"},  # the audit spool
        # The ABTest waits for KServe's router to route away from an arm before it is removed.
        ("apps", "deployments"): {"get"},
        ("serving.knative.dev", "services"): {"get"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("", "namespaces"): {"list", "watch"},
    }
    (binding,) = by_kind(render(), "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "medserve", "namespace": "medserve-system"}]


def test_external_postgres_and_redis_are_operator_defaults_by_secret_name() -> None:
    (deployment,) = by_kind(render("audit.dsnSecret.name=audit-db", "audit.keySecret.name=audit-key",
                                   "audit.keySecret.key=hmac", "redis.secret.name=redis",
                                   "audit.spool.persistent=true", "audit.spool.storageClassName=nfs-rwx"),
                            "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["MEDSERVE_AUDIT_DSN_SECRET"], env["MEDSERVE_AUDIT_DSN_SECRET_KEY"]) == ("audit-db", "dsn")
    assert (env["MEDSERVE_AUDIT_KEY_SECRET"], env["MEDSERVE_AUDIT_KEY_SECRET_KEY"]) == ("audit-key", "hmac")
    assert (env["MEDSERVE_REDIS_SECRET"], env["MEDSERVE_REDIS_SECRET_KEY"]) == ("redis", "url")
    assert (env["MEDSERVE_AUDIT_SPOOL_PERSISTENT"], env["MEDSERVE_AUDIT_SPOOL_STORAGE_CLASS"],
            env["MEDSERVE_AUDIT_SPOOL_SIZE"]) == ("true", "nfs-rwx", "1Gi")
    assert not any(o["kind"] in {"StatefulSet", "Secret"} for o in render())  # no bundled database
    (plain,) = by_kind(render(), "Deployment")
    defaults = {e["name"] for e in plain["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "MEDSERVE_AUDIT_DSN_SECRET" not in defaults and "MEDSERVE_REDIS_SECRET" not in defaults


def test_watch_namespaces_become_arguments() -> None:
    (deployment,) = by_kind(render("operator.watchNamespaces={clinical,research}"), "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=clinical" in args and "--namespace=research" in args
