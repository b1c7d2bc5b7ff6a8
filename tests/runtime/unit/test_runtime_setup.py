"""The runtime's process set-up: CPU limit for torch's threads, the event loop, --http, the fast path's rows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import uvloop
from medserve_runtime.__main__ import _take_http
from medserve_runtime.api import ClinicalApi
from medserve_runtime.fastpath import direct_routes
from medserve_runtime.loader import cpu_limit
from medserve_runtime.serving import event_loop_factory


def test_the_cpu_limit_is_the_cgroup_quota_rounded_up_within_the_allowed_cpus(tmp_path: Path) -> None:
    allowed = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # a pod limit of 1.5 CPUs
    assert cpu_limit(quota) == min(allowed, 2)
    quota.write_text("max 100000\n")
    assert cpu_limit(quota) == allowed
    assert cpu_limit(tmp_path / "missing") == allowed


def test_auto_and_uvloop_mean_uvloop_and_asyncio_means_asyncio() -> None:
    assert event_loop_factory("auto") is uvloop.new_event_loop
    assert event_loop_factory("uvloop") is uvloop.new_event_loop
    assert event_loop_factory("asyncio") is None


def test_http_httptools_is_taken_out_and_anything_else_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert _take_http(["--http", "httptools", "--http_port=1"]) == ["--http_port=1"]
    assert _take_http(["--http=httptools"]) == []
    with pytest.raises(SystemExit) as exit_:
        _take_http(["--http=h11"])
    assert exit_.value.code == 2
    assert "'h11' is not served" in capsys.readouterr().err


def test_the_fast_path_serves_exactly_the_parameterless_clinical_rows() -> None:
    rows = direct_routes(ClinicalApi.__new__(ClinicalApi))
    assert set(rows) == {("POST", "/predict"), ("POST", "/batch_predict"), ("POST", "/feedback"),
                         ("GET", "/health"), ("GET", "/metrics"), ("GET", "/models")}
    assert not rows["GET", "/health"][1] and rows["POST", "/predict"][1]  # whether it takes the Request
