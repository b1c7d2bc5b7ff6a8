"""The audit chain and the file audit log: record shape, keyed chain across reopen, durability, anchors,
torn lines, failing writes, tamper detection, the CLI.

Every test writes a real file and reads it back; `medserve audit verify` runs as a real subprocess. Disk
failures are real too: the log's path is pointed at /dev/full (every write fails with ENOSPC).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from medserve_runtime.audit import GENESIS, AuditLog, anchor_file, main, verify
from medserve_runtime.auditchain import chain_hash
from medserve_runtime.groupcommit import AuditUnavailable

MEDSERVE = Path(sys.executable).with_name("medserve")
KEY = b"test-audit-key"


def write(path: Path, count: int, *, key: bytes = KEY, **extra: Any) -> None:
    with AuditLog(path, key=key) as log:
        futures = [log.record(key_id="clinician-app", endpoint="/predict", status=200, outcome="ok",
                              latency_ms=1.5 + i, model_version="3", prediction_id=f"pred-{i}",
                              patient_hash="pt_abc", **extra) for i in range(count)]
        for future in futures:
            future.result(timeout=30)


@contextlib.contextmanager
def full_disk(log: AuditLog, path: Path) -> Iterator[None]:
    """The log's path is /dev/full (every write fails with ENOSPC) inside the block, the file again after."""
    log._sink.journal.close()  # type: ignore[union-attr]  # the next write reopens the path
    saved = path.with_name("saved.jsonl")
    os.replace(path, saved)
    path.symlink_to("/dev/full")
    try:
        yield
    finally:
        path.unlink()
        os.replace(saved, path)  # space again
        log._sink.journal.close()  # type: ignore[union-attr]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def requests(path: Path) -> list[dict[str, Any]]:
    return [r for r in lines(path) if r["event"] == "request"]


def test_record_shape_and_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 3, priority="urgent", batch_size=4)
    records = lines(path)
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["event"] for r in records] == ["writer_start", "request", "request", "request", "writer_stop"]
    first = records[1]
    assert list(first)[:4] == ["seq", "time", "event", "writer"] and list(first)[-2:] == ["prev_hash", "hash"]
    assert first["time"].endswith("Z")
    expected = {"key_id": "clinician-app", "endpoint": "/predict", "status": 200, "outcome": "ok",
                "latency_ms": 1.5, "model_version": "3", "prediction_id": "pred-0", "patient_hash": "pt_abc",
                "priority": "urgent", "batch_size": 4, "prev_hash": records[0]["hash"]}  # fmt: skip
    assert expected.items() <= first.items()
    for prev, record in zip([None, *records], records, strict=False):
        assert record["prev_hash"] == (prev["hash"] if prev else GENESIS)
        body = {k: v for k, v in record.items() if k != "hash"}
        assert record["hash"] == chain_hash(record["prev_hash"], body, KEY)
        assert record["hash"] != chain_hash(record["prev_hash"], body)  # keyed, not plain SHA-256
    result = verify(path, key=KEY)
    assert result.ok and result.notes == [], result
    assert not verify(path, key=b"another key").ok


def test_a_record_is_durable_when_its_future_resolves(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key=KEY)
    log.record(key_id="a", endpoint="/x", status=200, outcome="ok", latency_ms=1).result(timeout=10)
    # Read by another handle before close: it is on disk, and the anchor already counts it.
    assert [r["event"] for r in lines(path)] == ["writer_start", "request"]
    assert json.loads(anchor_file(path).read_text())["seq"] == 2
    log.close()


def test_rejected_requests_without_a_key_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, key=KEY) as log:
        log.record(key_id=None, endpoint="/predict", status=401, outcome="unauthenticated", latency_ms=0.1)
    (record,) = requests(path)
    assert record["key_id"] is None and record["status"] == 401 and record["patient_hash"] is None


def test_reserved_field_names_are_refused(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.jsonl", key=KEY) as log, pytest.raises(ValueError, match="reserved"):
        log.record(key_id="a", endpoint="/x", status=200, outcome="ok", latency_ms=1, hash="forged")


def test_chain_continues_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 2)
    write(path, 2)
    records = lines(path)
    assert [r["seq"] for r in records] == list(range(1, 9))
    assert records[4]["prev_hash"] == records[3]["hash"] and records[4]["event"] == "writer_start"
    assert verify(path, key=KEY).ok and verify(path, key=KEY).records == 8


def test_a_torn_last_line_is_cut_off_and_reported_at_start(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 2)
    whole = path.read_text()
    path.write_text(whole + whole.splitlines(keepends=True)[1][:25])  # a write killed half-way
    assert not verify(path, key=KEY).ok
    write(path, 1)  # starts (no crash loop) and goes on
    records = lines(path)
    assert records[4]["event"] == "writer_start" and records[4]["repaired_bytes"] == 25
    assert verify(path, key=KEY).ok


def test_disabled_log_drops_records(tmp_path: Path) -> None:
    log = AuditLog(None)
    log.record(key_id="a", endpoint="/x", status=200, outcome="ok", latency_ms=1).result(timeout=1)
    log.flush()
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_flush_writes_without_close_and_records_after_close_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key=KEY)
    log.record(key_id="a", endpoint="/x", status=200, outcome="ok", latency_ms=1)
    log.flush()
    assert len(requests(path)) == 1
    log.close()
    log.record(key_id="a", endpoint="/x", status=200, outcome="late", latency_ms=1).result(timeout=10)
    assert [r["outcome"] for r in requests(path)] == ["ok", "late"]
    assert verify(path, key=KEY).ok


def test_writes_fail_closed_and_recover_without_writing_twice(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key=KEY)
    log.record(key_id="a", endpoint="/x", status=200, outcome="before", latency_ms=1).result(timeout=10)
    good = path.read_bytes()
    with full_disk(log, path):
        with pytest.raises(AuditUnavailable):
            log.record(key_id="a", endpoint="/x", status=200, outcome="lost", latency_ms=1).result(timeout=10)
        assert not log.writable()
    deadline = 50
    while not log.writable() and deadline:  # the writer's own probe notices, with no request needed
        threading.Event().wait(0.1)
        deadline -= 1
    assert log.writable()
    log.record(key_id="a", endpoint="/x", status=200, outcome="after", latency_ms=1).result(timeout=10)
    log.close()
    assert path.read_bytes().startswith(good)
    assert [r["outcome"] for r in requests(path)] == ["before", "after"]
    assert verify(path, key=KEY).ok


def test_eight_threads_record_4000_contiguous_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key=KEY)

    def worker(n: int) -> None:
        futures = [log.record(key_id=f"k{n}", endpoint="/predict", status=200, outcome="ok", latency_ms=i)
                   for i in range(500)]
        concurrent.futures.wait(futures)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    records = lines(path)
    assert len(records) == 4002
    assert [r["seq"] for r in records] == list(range(1, 4003))
    assert {r["key_id"] for r in requests(path)} == {f"k{n}" for n in range(8)}
    assert verify(path, key=KEY).ok


async def test_asyncio_tasks_await_their_record(tmp_path: Path) -> None:
    """The gate's way: record_durable returns only once the record is on disk (settled on the loop once
    per batch); a thread's Future and the loop's awaits share the batches."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key=KEY)
    found: list[bool] = []

    async def request(i: int) -> None:
        await asyncio.sleep(0)
        await log.record_durable(key_id="k", endpoint="/predict", status=200, outcome="ok", latency_ms=1,
                                 prediction_id=f"p{i}")
        if i % 100 == 0:
            found.append(f'"prediction_id":"p{i}"' in path.read_text())

    threaded = log.record(key_id="t", endpoint="/predict", status=200, outcome="ok", latency_ms=1)
    await asyncio.gather(*(request(i) for i in range(1000)))
    threaded.result(timeout=10)
    log.close()
    assert found == [True] * 10
    assert sorted(r["prediction_id"] for r in requests(path) if r["key_id"] == "k") == \
        sorted(f"p{i}" for i in range(1000))
    assert verify(path, key=KEY).ok


async def test_record_durable_raises_when_nothing_can_be_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key=KEY)
    await log.record_durable(key_id="a", endpoint="/x", status=200, outcome="before", latency_ms=1)
    with full_disk(log, path):
        results = await asyncio.gather(*(log.record_durable(key_id="a", endpoint="/x", status=200,
                                                            outcome="lost", latency_ms=1) for _ in range(5)),
                                       return_exceptions=True)
        assert all(isinstance(r, AuditUnavailable) for r in results), results
        log.flush()  # returns: failed records are settled too
    log.close()
    assert [r["outcome"] for r in requests(path)] == ["before"]
    await AuditLog(None).record_durable(key_id="a", endpoint="/x", status=200, outcome="ok", latency_ms=1)


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from medserve_runtime.audit import AuditLog
log = AuditLog(Path(sys.argv[1]), key=b"test-audit-key")
for i in range(3):
    log.record(key_id="a", endpoint="/x", status=200, outcome="ok", latency_ms=1).result(timeout=10)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writer_is_a_note_not_a_failure(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], timeout=60, check=False)
    assert done.returncode == -9
    assert [r["event"] for r in lines(path)] == ["writer_start", "request", "request", "request"]
    result = verify(path, key=KEY)
    assert result.ok and any("no clean shutdown record" in note for note in result.notes), result
    write(path, 1)  # the next start goes on; the killed session is still named
    result = verify(path, key=KEY)
    assert result.ok and any("ended without a clean shutdown record" in note for note in result.notes)


def tamper(path: Path, how: str) -> None:
    text = path.read_text().splitlines(keepends=True)
    if how == "edit":
        record = json.loads(text[3])
        record["status"] = 500
        text[3] = json.dumps(record, separators=(",", ":")) + "\n"
    elif how in ("edit-and-rehash", "rehash-all"):
        prev = None
        for index in range(3, len(text) if how == "rehash-all" else 4):
            record = json.loads(text[index])
            record["outcome"] = "forged"
            del record["hash"]
            record["prev_hash"] = prev or record["prev_hash"]
            prev = record["hash"] = chain_hash(record["prev_hash"], record)  # without the key
            text[index] = json.dumps(record) + "\n"
    elif how == "drop-newest":
        text = text[:-3]
    elif how == "empty":
        text = []
    elif how == "delete":
        del text[3]
    elif how == "swap":
        text[3], text[4] = text[4], text[3]
    elif how == "insert":
        text.insert(3, text[1])
    elif how == "duplicate-key":
        text[3] = text[3].replace('{"seq":4,', '{"seq":4,"status":500,', 1)
    elif how == "truncate":
        text = text[:6]
        text[5] = text[5][:30]
    path.write_text("".join(text))


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("edit", "line 4: hash mismatch"),
        ("edit-and-rehash", "line 4: hash mismatch"),
        ("rehash-all", "line 4: hash mismatch"),
        ("drop-newest", "records 8..10 are missing"),
        ("empty", "records 1..10 are missing"),
        ("delete", "line 4: seq 5 follows 3"),
        ("swap", "line 4: seq 5 follows 3"),
        ("insert", "line 4: seq 2 follows 3"),
        ("duplicate-key", "line 4: not a JSON audit record (duplicate keys)"),
        ("truncate", "line 6: incomplete last line"),
    ],
)
def test_tampering_is_found_at_the_first_line_touched(tmp_path: Path, how: str, problem: str) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 8)
    tamper(path, how)
    result = verify(path, key=KEY)
    assert not result.ok
    assert result.problems[0].startswith(problem), result.problems


def test_cli_verify_exit_codes_and_output(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    write(good, 5)
    write(bad, 5)
    tamper(bad, "edit")
    env = {**os.environ, "MEDSERVE_AUDIT_KEY": KEY.decode()}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(MEDSERVE), "audit", *args], capture_output=True, text=True, timeout=60,
                              env=env)

    ok = run("verify", str(good))
    assert ok.returncode == 0 and ok.stdout == f"{good}: ok, 7 records, chain intact\n"
    key_file = tmp_path / "key"
    key_file.write_bytes(b"wrong")
    assert run("verify", "--key-file", str(key_file), str(good)).returncode == 1
    tampered = run("verify", str(good), str(bad))
    assert tampered.returncode == 1
    assert f"{bad}: TAMPERED, first broken at line 4: hash mismatch" in tampered.stdout
    missing = run("verify", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "nope.jsonl: cannot read" in missing.stderr
    usage = run("frobnicate")
    assert usage.returncode == 2 and "usage" in usage.stderr
    assert run("verify").returncode == 2


def test_main_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert main(["verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ok, 0 records" in out and "no anchor" in out
