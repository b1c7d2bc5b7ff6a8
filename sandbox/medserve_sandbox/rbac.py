"""Authentication and RBAC authorization for the emulator, as kube-apiserver does them.

Who is asking (`authenticate`):
- a bearer token minted by the emulator's TokenRequest API (`kubectl create token SA`, POST
  `serviceaccounts/NAME/token`) is that ServiceAccount: user `system:serviceaccount:NS:NAME`, groups
  `system:serviceaccounts`, `system:serviceaccounts:NS`, `system:authenticated`
  (k8s.io/apiserver pkg/authentication/serviceaccount/util.go: MakeUsername, MakeGroupNames). The token
  stops working when the ServiceAccount is deleted or replaced, as a bound token does. The real server's
  tokens are JWTs signed with the service-account key; these are opaque (clients do not read them);
- an unknown or expired token is 401 Unauthorized;
- the token of the emulator's own kubeconfig (ADMIN_TOKEN), or no credentials at all, is the cluster
  admin (`system:masters`, as the admin client certificate of kubeadm's or envtest's kubeconfig is);
  the real server would call a request without credentials `system:anonymous`.

What they may do (`authorize`): kube-apiserver's RBAC authorizer (plugin/pkg/auth/authorizer/rbac/rbac.go:
RBACAuthorizer.Authorize, RuleAllows; pkg/apis/rbac/v1/evaluation_helpers.go: VerbMatches,
APIGroupMatches, ResourceMatches with `*/subresource`, ResourceNameMatches, NonResourceURLMatches with a
trailing `*`; pkg/registry/rbac/validation/rule.go: appliesToUser), over the ClusterRoleBindings and the
request namespace's RoleBindings in the store, plus the bootstrap policy's bindings every cluster has
(bootstrappolicy/policy.go: system:discovery and system:basic-user for system:authenticated,
system:public-info-viewer for everyone). `system:masters` may do anything (the union authorizer's
privileged-group check). The request's attributes come from the URL as
k8s.io/apiserver pkg/endpoints/request/requestinfo.go NewRequestInfo derives them (GET on a collection is
list, or watch with ?watch; DELETE on a collection is deletecollection; a list or watch with the field
selector metadata.name=X is about X). A refusal is a 403 whose message is
responsewriters/errors.go forbiddenMessage's.

Admission (`check_owner_references`): OwnerReferencesPermissionEnforcement
(plugin/pkg/admission/gc/gc_admission.go: gcPermissionsEnforcement.Validate): changing an object's
ownerReferences other than by creating it needs `delete` on the object, and a new
`blockOwnerDeletion: true` reference needs `update` on the owner's `finalizers` subresource.

Not reproduced: ClusterRole aggregation (aggregationRule), Node and Webhook authorizers, impersonation,
escalation checks on writing Roles and bindings (anyone allowed to write RBAC objects may grant anything).
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
import secrets
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from medserve_sandbox.apierrors import ApiError

if TYPE_CHECKING:
    from medserve_sandbox.store import Store

MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
RBAC_GROUP = "rbac.authorization.k8s.io"
TOKEN_SECONDS = 3600
ADMIN_TOKEN = "medserve-emulator"
"""The bearer token in the kubeconfig `medserve emulator` writes."""


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()


ADMIN = User("system:admin", (MASTERS, AUTHENTICATED))
SYSTEM = User("system:apiserver", (MASTERS,))
"""The emulator's own writes (garbage collection, the stand-ins' controllers run in-process)."""

CURRENT_USER: contextvars.ContextVar[User] = contextvars.ContextVar("medserve_emulator_user", default=SYSTEM)
"""Who made the request being served (set by the API server for the request's task)."""


def service_account_user(namespace: str, name: str) -> User:
    return User(f"system:serviceaccount:{namespace}:{name}",
                ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED))


@dataclasses.dataclass(frozen=True)
class Attributes:
    """authorizer.AttributesRecord: what a request asks to do."""

    user: User
    verb: str
    resource_request: bool
    path: str = ""
    namespace: str = ""
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


def request_attributes(user: User, method: str, path: str, query: Mapping[str, str], *, resource_request: bool,
                       group: str = "", namespace: str | None = None, plural: str = "", name: str | None = None,
                       subresource: str | None = None) -> Attributes:
    """The attributes kube-apiserver's RequestInfoFactory derives from a request (see the module docstring)."""
    verb = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete"}.get(method, "")
    if not resource_request:
        return Attributes(user=user, verb=verb, resource_request=False, path=path)
    if not name and verb == "get":
        verb = "watch" if query.get("watch", "false").lower() not in {"false", "0"} else "list"
        selected = [term.split("=", 1)[1].lstrip("=") for term in (query.get("fieldSelector") or "").split(",")
                    if term.startswith("metadata.name=")]
        if len(selected) == 1:
            name = selected[0]
    if not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(user=user, verb=verb, resource_request=True, path=path, namespace=namespace or "",
                      api_group=group, resource=plural, subresource=subresource or "", name=name or "")


# --- the bootstrap policy's bindings (bootstrappolicy/policy.go), evaluated as if stored -------------------------

DISCOVERY_URLS = ("/livez", "/readyz", "/healthz", "/version", "/version/", "/openapi", "/openapi/*", "/api",
                  "/api/*", "/apis", "/apis/*")
BOOTSTRAP: tuple[tuple[str, tuple[str, ...], list[dict[str, Any]]], ...] = (
    ("system:discovery", (AUTHENTICATED,), [{"verbs": ["get"], "nonResourceURLs": list(DISCOVERY_URLS)}]),
    ("system:basic-user", (AUTHENTICATED,), [
        {"verbs": ["create"], "apiGroups": ["authorization.k8s.io"],
         "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]},
        {"verbs": ["create"], "apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"]},
    ]),
    ("system:public-info-viewer", (AUTHENTICATED, UNAUTHENTICATED), [
        {"verbs": ["get"], "nonResourceURLs": ["/livez", "/readyz", "/healthz", "/version", "/version/"]}]),
)


def _matches(values: Iterable[str] | None, wanted: str, wildcard: str = "*") -> bool:
    return any(value in (wildcard, wanted) for value in values or ())


def rule_allows(attrs: Attributes, rule: Mapping[str, Any]) -> bool:
    """rbac.go RuleAllows over one PolicyRule."""
    if not _matches(rule.get("verbs"), attrs.verb):
        return False
    if not attrs.resource_request:
        return any(url == "*" or url == attrs.path or (url.endswith("*") and attrs.path.startswith(url.rstrip("*")))
                   for url in rule.get("nonResourceURLs") or ())
    combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    resources = rule.get("resources") or ()
    resource_ok = any(r in ("*", combined) or (attrs.subresource and r == f"*/{attrs.subresource}")
                      for r in resources)
    names = rule.get("resourceNames") or ()
    return _matches(rule.get("apiGroups"), attrs.api_group) and resource_ok and (not names or attrs.name in names)


def applies_to_user(user: User, subject: Mapping[str, Any], namespace: str) -> bool:
    """rule.go appliesToUser."""
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return user.name == name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        sa_namespace = subject.get("namespace") or namespace
        return bool(sa_namespace) and user.name == f"system:serviceaccount:{sa_namespace}:{name}"
    return False


def _find(store: Store, group: str, plural: str, namespace: str | None, name: str) -> Mapping[str, Any] | None:
    rtype = store.types.get((group, plural))
    return None if rtype is None else store.find(rtype, namespace, name)


def _all(store: Store, group: str, plural: str, namespace: str | None) -> list[Mapping[str, Any]]:
    rtype = store.types.get((group, plural))
    return [] if rtype is None else list(store.iterate(rtype, namespace))


def _rules(store: Store, namespace: str | None, ref: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], str]:
    """The rules of a binding's roleRef, and an error when the role does not exist (rbac.go reports it)."""
    kind, name = ref.get("kind"), str(ref.get("name"))
    plural = "clusterroles" if kind == "ClusterRole" else "roles"
    role = _find(store, RBAC_GROUP, plural, None if kind == "ClusterRole" else namespace, name)
    if role is None:
        where = "" if kind == "ClusterRole" else f" in namespace {namespace!r}"
        return [], f'{kind.lower() if kind else "role"}.rbac.authorization.k8s.io "{name}" not found{where}'
    return list(role.get("rules") or []), ""


def _describe(subject: Mapping[str, Any], binding_namespace: str) -> str:
    """rule.go describeSubject."""
    if subject.get("kind") == "ServiceAccount":
        return f'ServiceAccount "{subject.get("name")}/{subject.get("namespace") or binding_namespace}"'
    return f'{subject.get("kind")} "{subject.get("name")}"'


def visible_rules(store: Store, user: User, namespace: str) -> tuple[list[tuple[str, Mapping[str, Any]]], list[str]]:
    """Every rule bound to `user` cluster-wide and in `namespace`, each with the binding that grants it (as
    rule.go's describers word it), and the errors met resolving the bindings' roles."""
    rules: list[tuple[str, Mapping[str, Any]]] = []
    errors: list[str] = []
    for role, groups, bootstrap_rules in BOOTSTRAP:
        group = next((g for g in groups if g in user.groups), None)
        if group is not None:
            source = f'ClusterRoleBinding "{role}" of ClusterRole "{role}" to Group "{group}"'
            rules += [(source, rule) for rule in bootstrap_rules]
    bindings: list[tuple[Mapping[str, Any], str]] = [
        (binding, "") for binding in _all(store, RBAC_GROUP, "clusterrolebindings", None)]
    if namespace:
        bindings += [(binding, namespace) for binding in _all(store, RBAC_GROUP, "rolebindings", namespace)]
    for binding, where in bindings:
        subject = next((subject for subject in binding.get("subjects") or []
                        if applies_to_user(user, subject, where)), None)
        if subject is None:
            continue
        ref = binding.get("roleRef") or {}
        found, error = _rules(store, where or None, ref)
        name = binding["metadata"]["name"] + (f"/{where}" if where else "")
        source = (f'{"RoleBinding" if where else "ClusterRoleBinding"} "{name}" of {ref.get("kind")} '
                  f'"{ref.get("name")}" to {_describe(subject, where)}')
        rules += [(source, rule) for rule in found]
        if error:
            errors.append(error)
    return rules, errors


def authorize(store: Store, attrs: Attributes) -> tuple[bool, str]:
    """(allowed, reason): RBACAuthorizer.Authorize, after the privileged-group check."""
    if MASTERS in attrs.user.groups:
        return True, ""
    rules, errors = visible_rules(store, attrs.user, attrs.namespace)
    source = next((source for source, rule in rules if rule_allows(attrs, rule)), None)
    if source is not None:
        return True, f"RBAC: allowed by {source}"
    return False, f"RBAC: [{', '.join(errors)}]" if len(errors) > 1 else f"RBAC: {errors[0]}" if errors else ""


def forbidden(attrs: Attributes, reason: str = "") -> ApiError:
    """responsewriters.ForbiddenStatusError: the 403 kube-apiserver answers a refused request with."""
    user = attrs.user.name
    if not attrs.resource_request:
        message = f'User "{user}" cannot {attrs.verb} path "{attrs.path}"'
    else:
        resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
        where = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
        message = f'User "{user}" cannot {attrs.verb} resource "{resource}" in API group "{attrs.api_group}" {where}'
    if reason:
        message = f"{message}: {reason}"
    return forbidden_error(attrs.api_group, attrs.resource, attrs.name, message)


def forbidden_error(group: str, resource: str, name: str, message: str) -> ApiError:
    """apierrors.NewForbidden."""
    qualified = f"{resource}.{group}" if group else resource
    if not qualified:
        text = f"forbidden: {message}"
    elif not name:
        text = f"{qualified} is forbidden: {message}"
    else:
        text = f'{qualified} "{name}" is forbidden: {message}'
    details = {"group": group, "kind": resource, "name": name} if qualified else {}
    return ApiError(403, "Forbidden", text, {k: v for k, v in details.items() if v})


def require(store: Store, attrs: Attributes) -> None:
    allowed, reason = authorize(store, attrs)
    if not allowed:
        raise forbidden(attrs, reason)


# --- tokens ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TokenIssuer:
    """Bearer tokens of ServiceAccounts, as the TokenRequest API issues them."""

    tokens: dict[str, tuple[str, str, str, datetime.datetime]] = dataclasses.field(default_factory=dict)
    """token -> (namespace, name, the ServiceAccount's uid, expiry)."""

    def issue(self, account: Mapping[str, Any], expiration_seconds: int | None) -> tuple[str, datetime.datetime]:
        meta = account["metadata"]
        seconds = expiration_seconds or TOKEN_SECONDS
        expiry = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(seconds=seconds)
        token = f"emulator.{secrets.token_urlsafe(32)}"
        self.tokens[token] = (meta["namespace"], meta["name"], meta["uid"], expiry)
        return token, expiry

    def authenticate(self, store: Store, authorization: str | None) -> User:
        """The user a request's Authorization header names (see the module docstring); 401 when unknown."""
        if not authorization:
            return ADMIN
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip() == ADMIN_TOKEN:
            return ADMIN
        entry = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if entry is not None:
            namespace, name, uid, expiry = entry
            account = _find(store, "", "serviceaccounts", namespace, name)
            if account is not None and account["metadata"].get("uid") == uid \
                    and datetime.datetime.now(datetime.UTC) < expiry:
                return service_account_user(namespace, name)
        raise ApiError(401, "Unauthorized", "Unauthorized")


# --- OwnerReferencesPermissionEnforcement ----------------------------------------------------------------------


def _blocking(refs: Iterable[Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]]:
    return {str(ref.get("uid")): ref for ref in refs or () if ref.get("blockOwnerDeletion")}


def check_owner_references(store: Store, user: User, *, group: str, plural: str, namespace: str | None,
                           obj: Mapping[str, Any], old: Mapping[str, Any] | None, subresource: str | None,
                           resolve_owner: Any) -> None:
    """gcPermissionsEnforcement.Validate for one write (see the module docstring). `resolve_owner(apiVersion,
    kind)` gives the owner's (group, plural) or None."""
    if MASTERS in user.groups:
        return
    new_refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    old_refs = ((old or {}).get("metadata") or {}).get("ownerReferences") or []
    if new_refs == old_refs:
        return
    name = str((obj.get("metadata") or {}).get("name") or "")
    if old is not None:
        attrs = Attributes(user=user, verb="delete", resource_request=True, namespace=namespace or "",
                           api_group=group, resource=plural, subresource=subresource or "", name=name)
        allowed, reason = authorize(store, attrs)
        if not allowed:
            raise forbidden_error(group, plural, name, "cannot set an ownerRef on a resource you can't delete: "
                                                            f"{reason}, <nil>")
    old_blocking = _blocking(old_refs)
    for uid, ref in _blocking(new_refs).items():
        if uid in old_blocking:
            continue
        owner = resolve_owner(str(ref.get("apiVersion")), str(ref.get("kind")))
        if owner is None:
            raise forbidden_error(group, plural, name, "cannot set blockOwnerDeletion in this case because "
                                       f"cannot find RESTMapping for APIVersion {ref.get('apiVersion')} Kind "
                                       f"{ref.get('kind')}")
        attrs = Attributes(user=user, verb="update", resource_request=True, namespace=namespace or "",
                           api_group=owner[0], resource=owner[1], subresource="finalizers",
                           name=str(ref.get("name") or ""))
        allowed, reason = authorize(store, attrs)
        if not allowed:
            raise forbidden_error(group, plural, name, "cannot set blockOwnerDeletion if an ownerReference "
                                       f"refers to a resource you can't set finalizers on: {reason}, <nil>")

