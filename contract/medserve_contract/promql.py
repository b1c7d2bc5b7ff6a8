"""The one builder of PromQL over the runtime's series: every value escaped, every selector scoped to a
ModelDeployment in a namespace (pure functions, strings in, strings out)."""

from __future__ import annotations

from medserve_contract.metrics import MODEL_LABEL, NAMESPACE_LABEL, VERSION_LABEL

_RE2_SPECIAL = frozenset(r"\.+*?()|[]{}^$")


def string_literal(value: str) -> str:
    """`value` as a PromQL double-quoted string literal (backslashes, quotes and newlines escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def regex_literal(value: str) -> str:
    """`value` as a literal inside a PromQL (RE2) regular expression."""
    return "".join("\\" + ch if ch in _RE2_SPECIAL else ch for ch in value)


def selector(metric: str, *, deployment: str, namespace: str, version: str | None = None,
             **labels: str) -> str:
    """`metric{model="deployment", version="v", namespace=~"ns|", ...}`.

    The namespace matcher also accepts series without a namespace label (a runtime scraped outside
    Kubernetes, as in the sandbox), which can only be the deployment's own.
    """
    matchers = [f"{MODEL_LABEL}={string_literal(deployment)}"]
    if version is not None:
        matchers.append(f"{VERSION_LABEL}={string_literal(version)}")
    matchers += [f"{name}={string_literal(value)}" for name, value in labels.items()]
    matchers.append(f"{NAMESPACE_LABEL}=~{string_literal(regex_literal(namespace) + '|')}")
    return f"{metric}{{{','.join(matchers)}}}"


def range_ms(seconds: float) -> str:
    """A duration in seconds as a PromQL range in whole milliseconds (at least 1ms)."""
    return f"{max(1, round(seconds * 1000))}ms"
