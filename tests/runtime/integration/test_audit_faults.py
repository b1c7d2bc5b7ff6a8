"""The runtime's audit trail under real faults: PostgreSQL stopped for 20 s under concurrent load, the
runtime SIGKILLed mid-load, no destination at all (503 and readiness false, then recovery), the table
edited by hand, and failed authentications throttled and audited in aggregate.

Real processes only: `python -m medserve_runtime` with `--audit_dsn_file` (the DSN, password included, in
a file as a mounted Secret would hold it), a real PostgreSQL server that the tests stop and start, and
`medserve audit verify --dsn` as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from medserve_sandbox.postgres_server import PostgresServer
from runtime_kit import RuntimeProcess, auth, predict_body, trained_model

MEDSERVE = Path(sys.executable).with_name("medserve")
AUDIT_KEY = "fault-test-audit-key"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_model(tmp_path_factory)


def pg_runtime(workdir: Path, model_dir: Path, pg: PostgresServer, *, spool: bool = True,
               spool_path: Path | None = None, args: tuple[str, ...] = (),
               env: dict[str, str] | None = None) -> RuntimeProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    dsn_file = workdir / "dsn"
    dsn_file.write_text(pg.dsn)
    key_file = workdir / "audit.key"
    key_file.write_text(AUDIT_KEY)
    flags = [f"--audit_dsn_file={dsn_file}", f"--audit_key_file={key_file}"]
    if spool:
        flags.append(f"--audit_spool={spool_path or workdir / 'spool.jsonl'}")
    return RuntimeProcess(workdir, model_dir=model_dir, audit=False, args=[*flags, *args], env=env)


def verify(pg: PostgresServer) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDSERVE_AUDIT_DSN": pg.dsn, "MEDSERVE_AUDIT_KEY": AUDIT_KEY}
    return subprocess.run([str(MEDSERVE), "audit", "verify"], capture_output=True, text=True, timeout=300,
                          env=env, check=False)


def requests_in_db(pg: PostgresServer) -> list[dict[str, Any]]:
    out = pg.sql("SELECT record FROM audit_records WHERE event = 'request' ORDER BY writer, seq")
    return [json.loads(line) for line in out.splitlines() if line]


class Load:
    """`clients` sequential clients POSTing /predict; each keeps the ids of its 2xx answers in order."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.ok: list[list[str]] = [[] for _ in range(clients)]
        self.statuses: dict[int, int] = {}
        self.stop = asyncio.Event()

    async def client(self, n: int) -> None:
        async with httpx.AsyncClient(base_url=self.url, headers=auth("clinician"), timeout=30) as http:
            while not self.stop.is_set():
                try:
                    r = await http.post("/predict", json=predict_body(f"patient-{n}"))
                except httpx.TransportError:
                    self.statuses[0] = self.statuses.get(0, 0) + 1
                    await asyncio.sleep(0.05)
                    continue
                self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
                if r.is_success:
                    self.ok[n].append(r.json()["prediction_id"])

    async def run(self, fault: Any) -> None:
        tasks = [asyncio.create_task(self.client(n)) for n in range(len(self.ok))]
        try:
            await fault
        finally:
            self.stop.set()
            await asyncio.gather(*tasks)


async def test_postgres_stopped_20s_under_load_loses_nothing(model_dir: Path, tmp_path: Path) -> None:
    with PostgresServer(tmp_path / "pg") as pg:
        rt = pg_runtime(tmp_path / "rt", model_dir, pg).start()
        load = Load(rt.url, 6)
        health: list[dict[str, Any]] = []

        async def fault() -> None:
            await asyncio.sleep(2)
            await asyncio.to_thread(pg.stop)
            await asyncio.sleep(10)
            health.append(httpx.get(f"{rt.url}/health", timeout=10).json())
            await asyncio.sleep(10)  # 20 s down in all
            await asyncio.to_thread(pg.start)
            await asyncio.sleep(4)

        await load.run(fault())
        assert rt.stop() == 0
        during = health[0]["audit"]
        assert during["database"] == "unreachable" and during["spooled"] > 0 and during["writable"] is True
        assert set(load.statuses) == {200}, load.statuses  # the spool kept every request answerable
        records = requests_in_db(pg)
        by_id = {r["prediction_id"]: r for r in records}
        assert len(by_id) == len(records)  # exactly once
        for answered in load.ok:
            assert answered, "a client got no answer at all"
            found = [by_id[pid]["seq"] for pid in answered]  # KeyError: an answered request without record
            assert found == sorted(found)  # in the order the client was answered
        assert sum(map(len, load.ok)) == len(records)
        done = verify(pg)
        assert done.returncode == 0, done.stdout
        # The table edited by hand afterwards: verify names the record.
        victim = records[len(records) // 2]
        pg.sql(f"UPDATE audit_records SET record = replace(record, '\"status\":200', '\"status\":201') "
               f"WHERE writer = '{victim['writer']}' AND seq = {victim['seq']}")
        tampered = verify(pg)
        assert tampered.returncode == 1
        assert f"writer {victim['writer']}: record seq {victim['seq']}: hash mismatch" in tampered.stdout


async def test_sigkill_mid_load_every_answer_recorded_unclean_end_reported(model_dir: Path,
                                                                           tmp_path: Path) -> None:
    with PostgresServer(tmp_path / "pg") as pg:
        rt = pg_runtime(tmp_path / "rt", model_dir, pg).start()
        load = Load(rt.url, 6)

        async def fault() -> None:
            await asyncio.sleep(3)
            assert rt.proc is not None
            os.killpg(rt.proc.pid, signal.SIGKILL)
            await asyncio.to_thread(rt.proc.wait)

        await load.run(fault())
        rt.proc = None
        answered = {pid for ids in load.ok for pid in ids}
        assert answered
        recorded = {r["prediction_id"] for r in requests_in_db(pg)}
        assert answered <= recorded, f"{len(answered - recorded)} answered requests have no record"
        done = verify(pg)
        assert done.returncode == 0, done.stdout
        assert "no clean shutdown record" in done.stdout


def test_a_deleted_pods_spool_is_drained_by_another_writer(model_dir: Path, tmp_path: Path) -> None:
    """Pod A is killed while PostgreSQL is down (its answered requests only in its spool); pod B, on the same
    spool directory (the ReadWriteMany volume), drains A's file into the database once and removes it."""
    spools = tmp_path / "spool"
    with PostgresServer(tmp_path / "pg") as pg:
        a = pg_runtime(tmp_path / "a", model_dir, pg, spool_path=spools / "pod-a.jsonl",
                       env={"POD_NAME": "pod-a"}).start()
        http = a.client()
        assert http.post("/predict", json=predict_body()).status_code == 200
        pg.stop()
        answered = []
        for n in range(5):
            r = http.post("/predict", json=predict_body(f"patient-{n}"))
            assert r.status_code == 200, r.text
            answered.append(r.json()["prediction_id"])
        assert a.proc is not None
        os.killpg(a.proc.pid, signal.SIGKILL)
        a.proc.wait()
        a.proc = None
        assert (spools / "pod-a.jsonl").stat().st_size > 0
        pg.start()
        with pg_runtime(tmp_path / "b", model_dir, pg, spool_path=spools / "pod-b.jsonl",
                        env={"POD_NAME": "pod-b"}) as b:
            deadline = time.monotonic() + 60
            while (spools / "pod-a.jsonl").exists():
                assert time.monotonic() < deadline, "pod A's spool was not drained"
                time.sleep(0.2)
            assert httpx.get(f"{b.url}/health", timeout=10).json()["audit"]["recovered_total"] > 0
        recorded = [r for r in requests_in_db(pg) if r["writer"].startswith("pod-a/")]
        assert [r["prediction_id"] for r in recorded][-5:] == answered  # in order
        assert len({(r["writer"], r["seq"]) for r in recorded}) == len(recorded) == 6  # exactly once
        (recovery,) = [json.loads(line) for line in pg.sql(
            "SELECT record FROM audit_records WHERE event = 'spool_recovered'").splitlines()]
        assert recovery["writer"].startswith("pod-b/") and recovery["spool"] == "pod-a.jsonl"
        assert sum(recovery["chains"].values()) == recovery["records"] >= 5
        done = verify(pg)
        assert done.returncode == 0, done.stdout
        unclean = [line for line in done.stdout.splitlines() if "no clean shutdown record" in line]
        assert len(unclean) == 1 and "writer pod-a/" in unclean[0], done.stdout


def test_no_audit_destination_means_503_and_not_ready_then_recovery(model_dir: Path, tmp_path: Path) -> None:
    with PostgresServer(tmp_path / "pg") as pg, pg_runtime(tmp_path / "rt", model_dir, pg, spool=False) as rt:
        http = rt.client()
        assert http.post("/predict", json=predict_body()).status_code == 200
        pg.stop()
        first = http.post("/predict", json=predict_body())
        assert first.status_code == 503 and first.json()["code"] == "audit_unavailable", first.text
        ready = httpx.get(f"{rt.url}/v2/health/ready", timeout=10)
        assert ready.status_code == 503
        health = httpx.get(f"{rt.url}/health", timeout=10)
        assert health.status_code == 503 and health.json()["audit"]["writable"] is False
        assert http.post("/predict", json=predict_body()).status_code == 503
        pg.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{rt.url}/v2/health/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "readiness did not come back"
            time.sleep(0.2)
        assert http.post("/predict", json=predict_body()).status_code == 200
        assert rt.stop() == 0
        statuses = [r["status"] for r in requests_in_db(pg)]
        assert statuses == [200, 200]  # the refused requests were never answered with data
        assert verify(pg).returncode == 0


def test_failed_authentication_is_throttled_and_audited_in_aggregate(model_dir: Path, tmp_path: Path) -> None:
    rt = RuntimeProcess(tmp_path / "rt", model_dir=model_dir, args=["--auth_failures_per_minute=5"])
    with rt:
        bad = httpx.Client(base_url=rt.url, headers={"Authorization": "Bearer wrong-guess"}, timeout=10)
        codes = [bad.post("/predict", json=predict_body()).status_code for _ in range(30)]
        assert codes == [401] * 5 + [429] * 25
        refused = rt.client().post("/predict", json=predict_body())  # even the right key, from this address
        assert refused.status_code == 429 and "failed authentications" in refused.json()["error"]
    records = rt.audit_records(None)
    assert [r for r in records if r["event"] == "request"] == []
    (aggregate,) = [r for r in records if r["event"] == "auth_failures"]
    assert aggregate["client_address"] == "127.0.0.1" and aggregate["count"] == 31


def test_postgres_records_carry_the_request_id_of_the_answer(model_dir: Path, tmp_path: Path) -> None:
    """The runtime's request id (its access line's, `x-request-id`) is in the record PostgreSQL stores:
    the record column holds the whole chained record, so no schema change, and verify still holds."""
    with PostgresServer(tmp_path / "pg") as pg:
        rt = pg_runtime(tmp_path / "rt", model_dir, pg, spool=False).start()
        try:
            ok = httpx.post(f"{rt.url}/predict", headers=auth("clinician"), json=predict_body("rid-pg"), timeout=30)
            bad = httpx.post(f"{rt.url}/predict", headers=auth("clinician"), json={"patient_id": "x"}, timeout=30)
        finally:
            assert rt.stop() == 0
        stored = {r["request_id"]: r["status"] for r in requests_in_db(pg)}
        assert stored == {ok.headers["x-request-id"]: 200, bad.headers["x-request-id"]: 422}
        done = verify(pg)
        assert done.returncode == 0, done.stdout + done.stderr
