"""The ArgoCD health checks (charts/medserve/argocd/medserve.io/KIND/health.lua) run by a real Lua interpreter.

Fixtures are in the layout of ArgoCD's own resource_customizations (argoproj/argo-cd,
`resource_customizations/<group>/<kind>/health_test.yaml`: `tests: [{healthStatus: {status, message},
inputPath: testdata/...}]`), and each script is run the way ArgoCD's `lua.VM` runs a health script: the
object as the global `obj`, the chunk's return value the health. ArgoCD embeds gopher-lua (Lua 5.1); the
scripts keep to what 5.1 and Debian's lua5.4 share. Skipped with the reason where lua5.4 is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from medserve_operator.tools import monitoring

LUA = shutil.which("lua5.4")
HEALTH = monitoring.CHART / monitoring.HEALTH_DIR
STATES = {"Healthy", "Progressing", "Degraded", "Suspended"}

pytestmark = pytest.mark.skipif(LUA is None, reason="lua5.4 is not installed (apt-get install lua5.4)")


def lua_literal(value: Any) -> str:
    """A Lua table constructor for a YAML/JSON value (strings through JSON escapes, which Lua reads too)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def run_health(script: Path, obj: dict[str, Any]) -> dict[str, str]:
    assert LUA is not None
    program = (f"obj = {lua_literal(obj)}\n"
               f"local hs = assert(loadfile({json.dumps(str(script))}))()\n"
               "io.write(hs.status, '\\n', hs.message or '')\n")
    result = subprocess.run([LUA, "-"], input=program, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, f"{script}: {result.stderr}"
    status, _, message = result.stdout.partition("\n")
    return {"status": status, "message": message}


def cases() -> list[tuple[str, Path, dict[str, str]]]:
    out = []
    for kind in monitoring.KINDS:
        spec = yaml.safe_load((HEALTH / kind / "health_test.yaml").read_text())
        for test in spec["tests"]:
            out.append((kind, HEALTH / kind / test["inputPath"], test["healthStatus"]))
    return out


@pytest.mark.parametrize(("kind", "fixture", "want"), cases(), ids=lambda v: v.name if isinstance(v, Path) else None)
def test_health_of_each_fixture(kind: str, fixture: Path, want: dict[str, str]) -> None:
    obj = yaml.safe_load(fixture.read_text())
    assert obj["kind"] == kind
    assert run_health(HEALTH / kind / "health.lua", obj) == want


def test_every_kind_has_each_state_and_every_fixture_is_tested() -> None:
    for kind in monitoring.KINDS:
        tested = [c for c in cases() if c[0] == kind]
        states = {want["status"] for _, _, want in tested}
        assert {"Healthy", "Progressing", "Degraded"} <= states, kind
        assert {p.name for p in (HEALTH / kind / "testdata").glob("*.yaml")} == {f.name for _, f, _ in tested}
    assert "Suspended" in {want["status"] for _, _, want in cases()}


def test_a_wrong_expectation_fails() -> None:
    """The harness can fail: a Ready ModelDeployment is not reported Degraded."""
    kind, fixture, want = next(c for c in cases() if c[0] == "ModelDeployment" and c[2]["status"] == "Healthy")
    got = run_health(HEALTH / kind / "health.lua", yaml.safe_load(fixture.read_text()))
    assert got != {**want, "status": "Degraded"}


def test_argocd_cm_snippet_carries_the_scripts() -> None:
    cm = yaml.safe_load((monitoring.CHART / monitoring.ARGOCD_CM).read_text())
    assert cm["metadata"] == {"name": "argocd-cm", "namespace": "argocd",
                              "labels": {"app.kubernetes.io/part-of": "argocd"}}
    for kind in monitoring.KINDS:
        assert cm["data"][f"resource.customizations.health.medserve.io_{kind}"] == (
            HEALTH / kind / "health.lua").read_text()
