"""The PostgreSQL audit trail against a real PostgreSQL server: group commit, schema, outage and spool,
a killed writer, tampering found by `medserve audit verify --dsn`, prune (itself audited).

The writer runs in the test process (the runtime's wiring is tested in test_audit_faults.py); every fault
is real: the server is stopped and started, a writer process is SIGKILLed, the table is edited with psql.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from medserve_runtime.auditdb import PostgresAuditLog, migrate
from medserve_runtime.groupcommit import AuditUnavailable
from medserve_sandbox.postgres_server import PostgresServer

MEDSERVE = Path(sys.executable).with_name("medserve")
KEY = b"test-audit-key"


def writer(pg: PostgresServer, name: str, spool: Path | None) -> PostgresAuditLog:
    return PostgresAuditLog(pg.dsn, key=KEY, writer=name, spool=spool)


def record(log: PostgresAuditLog, i: int) -> concurrent.futures.Future[None]:
    return log.record(key_id="clinician", endpoint="/predict", status=200, outcome="ok", latency_ms=1.0,
                      prediction_id=f"p{i}")


def cli(pg: PostgresServer, *args: str, dsn_in_env: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDSERVE_AUDIT_KEY": KEY.decode()}
    if dsn_in_env:
        env["MEDSERVE_AUDIT_DSN"] = pg.dsn
    else:
        args = (*args, "--dsn", pg.dsn)
    return subprocess.run([str(MEDSERVE), "audit", *args], capture_output=True, text=True, timeout=120, env=env)


def rows(pg: PostgresServer, name: str) -> list[dict[str, Any]]:
    out = pg.sql(f"SELECT record FROM audit_records WHERE writer = '{name}' ORDER BY seq")
    return [json.loads(line) for line in out.splitlines() if line]


def test_records_are_committed_before_their_future_resolves_and_verify(postgres: PostgresServer,
                                                                        tmp_path: Path) -> None:
    log = writer(postgres, "pod-a/3/t1", tmp_path / "spool.jsonl")
    record(log, 0).result(timeout=30)
    assert [r["event"] for r in rows(postgres, "pod-a/3/t1")] == ["writer_start", "request"]
    futures = [record(log, i) for i in range(1, 3001)]
    for future in futures:
        future.result(timeout=60)
    log.close()
    found = rows(postgres, "pod-a/3/t1")
    assert [r["seq"] for r in found] == list(range(1, 3004))
    assert [r["prediction_id"] for r in found if r["event"] == "request"] == [f"p{i}" for i in range(3001)]
    head = postgres.sql("SELECT head_seq FROM audit_writers WHERE writer = 'pod-a/3/t1'").strip()
    assert head == "3003"  # the request counter checkpointed with the records
    done = cli(postgres, "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok," in done.stdout and postgres.password not in done.stdout


def test_schema_creation_is_idempotent_and_safe_for_replicas_starting_together(postgres: PostgresServer) -> None:
    async def run() -> list[int]:
        conns = [await asyncpg.connect(postgres.dsn) for _ in range(4)]
        try:
            return list(await asyncio.gather(*(migrate(conn) for conn in conns)))
        finally:
            for conn in conns:
                await conn.close()

    assert asyncio.run(run()) == [1, 1, 1, 1]
    assert postgres.sql("SELECT count(*) FROM audit_schema").strip() == "1"


def test_an_outage_goes_to_the_spool_and_drains_in_order_exactly_once(tmp_path: Path) -> None:
    with PostgresServer(tmp_path / "pg") as pg:
        spool = tmp_path / "spool.jsonl"
        log = writer(pg, "pod-b/3/t1", spool)
        acked: list[int] = []
        lock = threading.Lock()
        stop = threading.Event()

        def load(worker: int) -> None:
            i = 0
            while not stop.is_set():
                n = worker * 1_000_000 + i
                try:
                    record(log, n).result(timeout=30)
                except AuditUnavailable:
                    continue
                with lock:
                    acked.append(n)
                i += 1
                time.sleep(0.002)

        threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        pg.stop()
        time.sleep(3.0)
        assert log.health()["database"] == "unreachable" and log.health()["spooled"] > 0
        assert log.writable()  # the spool keeps the runtime answering
        pg.start()
        time.sleep(3.0)
        stop.set()
        for thread in threads:
            thread.join()
        health = log.health()
        log.close()
        assert health["database"] == "connected" and health["spooled"] == 0 and health["drained_total"] > 0
        found = rows(pg, "pod-b/3/t1")
        ids = [int(r["prediction_id"][1:]) for r in found if r["event"] == "request"]
        assert sorted(ids) == sorted(acked) and len(ids) == len(set(ids))  # every acked one, once
        assert [r["seq"] for r in found] == list(range(1, len(found) + 1))  # in order, no hole
        assert spool.read_text() == ""
        done = cli(pg, "verify")
        assert done.returncode == 0, done.stdout


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from medserve_runtime.auditdb import PostgresAuditLog
log = PostgresAuditLog(sys.argv[1], key=b"test-audit-key", writer="pod-k/3/t1", spool=Path(sys.argv[2]))
for i in range(int(sys.argv[3])):
    log.record(key_id="a", endpoint="/predict", status=200, outcome="ok", latency_ms=1).result(timeout=30)
with open(sys.argv[2], "a") as fh:
    fh.write('{"seq": 99, "torn')  # a write cut off by the kill
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_writer_killed_during_an_outage_is_drained_by_the_next_and_reported(tmp_path: Path) -> None:
    with PostgresServer(tmp_path / "pg") as pg:
        spool = tmp_path / "spool.jsonl"
        first = writer(pg, "pod-k/3/t0", spool)
        first.close()
        pg.stop()
        killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, pg.dsn, str(spool), "20"], timeout=120,
                                check=False, capture_output=True, text=True)
        assert killed.returncode == -9, killed.stderr
        assert len(spool.read_text().splitlines()) == 22  # start + 20 + the torn line
        pg.start()
        after = writer(pg, "pod-k/3/t2", spool)
        record(after, 0).result(timeout=30)
        after.close()
        start = rows(pg, "pod-k/3/t2")[0]
        assert start["repaired_bytes"] == len('{"seq": 99, "torn')
        assert [r["seq"] for r in rows(pg, "pod-k/3/t1")] == list(range(1, 22))
        done = cli(pg, "verify")
        assert done.returncode == 0, done.stdout
        assert "writer pod-k/3/t1: writer session started at" in done.stdout and "no clean shutdown" in done.stdout


def test_no_destination_at_all_fails_closed_and_recovers(tmp_path: Path) -> None:
    with PostgresServer(tmp_path / "pg") as pg:
        log = writer(pg, "pod-c/3/t1", None)  # no spool: the database is the only destination
        record(log, 0).result(timeout=30)
        pg.stop()
        with pytest.raises(AuditUnavailable):
            record(log, 1).result(timeout=30)
        assert not log.writable()
        pg.start()
        deadline = time.monotonic() + 20
        while not log.writable() and time.monotonic() < deadline:  # reconnects by itself, no request needed
            time.sleep(0.1)
        assert log.writable()
        record(log, 2).result(timeout=30)
        log.close()
        assert [r.get("prediction_id") for r in rows(pg, "pod-c/3/t1")] == [None, "p0", "p2", None]
        assert cli(pg, "verify").returncode == 0


@pytest.mark.parametrize(("how", "problem"), [
    ("edit", "writer pod-t/3/t1: record seq 4: hash mismatch"),
    ("edit-column", "writer pod-t/3/t1: record seq 4: its columns disagree with the record"),
    ("delete", "writer pod-t/3/t1: record seq 5: seq 5 follows 3"),
    ("delete-newest", "writer pod-t/3/t1: records 8..12 are missing"),
    ("reorder", "writer pod-t/3/t1: record seq 4: its columns disagree with the record"),
    ("insert", "writer pod-t/3/t1: record seq 4: its columns disagree with the record"),
    ("forge-checkpoint", "writer pod-t/3/t1: the anchor's MAC does not match"),
])
def test_tampering_by_hand_is_named_by_verify(tmp_path: Path, how: str, problem: str) -> None:
    with PostgresServer(tmp_path / "pg") as pg:
        log = writer(pg, "pod-t/3/t1", None)
        for future in [record(log, i) for i in range(10)]:
            future.result(timeout=30)
        log.close()
        w = "writer = 'pod-t/3/t1'"
        edits = {
            "edit": f"UPDATE audit_records SET record = replace(record, '\"status\":200', '\"status\":500') "
                    f"WHERE {w} AND seq = 4",
            "edit-column": f"UPDATE audit_records SET event = 'writer_stop' WHERE {w} AND seq = 4",
            "delete": f"DELETE FROM audit_records WHERE {w} AND seq = 4",
            "delete-newest": f"DELETE FROM audit_records WHERE {w} AND seq >= 8",
            "reorder": f"UPDATE audit_records SET seq = -seq WHERE {w} AND seq IN (4, 5); UPDATE audit_records "
                       f"SET seq = CASE seq WHEN -4 THEN 5 ELSE 4 END WHERE {w} AND seq < 0",
            # Shift from the top (through negative numbers) so the primary key never collides half-way.
            "insert": f"UPDATE audit_records SET seq = -seq WHERE {w} AND seq >= 4; "
                      f"UPDATE audit_records SET seq = -seq + 1 WHERE {w} AND seq < 0; "
                      "INSERT INTO audit_records SELECT writer, 4, recorded_at, event, hash, record FROM "
                      f"audit_records WHERE {w} AND seq = 2",
            "forge-checkpoint": f"UPDATE audit_writers SET head_seq = 7, head_hash = (SELECT hash FROM "
                                f"audit_records WHERE {w} AND seq = 7) WHERE {w}; "
                                f"DELETE FROM audit_records WHERE {w} AND seq >= 8",
        }
        sql = edits[how]
        pg.sql(sql)
        done = cli(pg, "verify", dsn_in_env=False)
        assert done.returncode == 1, done.stdout
        assert f"TAMPERED, first broken at {problem}" in done.stdout, done.stdout


def test_prune_deletes_old_prefixes_keeps_chains_verifiable_and_is_audited(tmp_path: Path) -> None:
    with PostgresServer(tmp_path / "pg") as pg:
        log = writer(pg, "pod-p/3/t1", None)
        for future in [record(log, i) for i in range(5)]:
            future.result(timeout=30)
        pg.sql("UPDATE audit_records SET recorded_at = recorded_at - interval '7 years' WHERE seq <= 3")
        for future in [record(log, i) for i in range(5, 8)]:
            future.result(timeout=30)
        log.close()
        bad = cli(pg, "prune", "--older-than", "6 years")
        assert bad.returncode == 2 and "'6 years' is not an age" in bad.stderr
        done = cli(pg, "prune", "--older-than", "6y")
        assert done.returncode == 0, done.stderr
        assert "pruned 3 records older than 6y" in done.stdout
        assert rows(pg, "pod-p/3/t1")[0]["seq"] == 4
        (prune_writer,) = pg.sql("SELECT writer FROM audit_writers WHERE writer LIKE 'prune/%'").split()
        events = [(r["event"], r.get("deleted")) for r in rows(pg, prune_writer)]
        assert events == [("writer_start", None), ("prune", 3), ("writer_stop", None)]
        verified = cli(pg, "verify")
        assert verified.returncode == 0, verified.stdout
        pg.sql("UPDATE audit_writers SET pruned_seq = 5 WHERE writer = 'pod-p/3/t1'")  # hide record 4, 5
        pg.sql("DELETE FROM audit_records WHERE writer = 'pod-p/3/t1' AND seq <= 5")
        forged = cli(pg, "verify")
        assert forged.returncode == 1 and "prune mark's MAC does not match" in forged.stdout
