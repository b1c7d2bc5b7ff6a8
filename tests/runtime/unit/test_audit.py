"""The hash-chained audit log: record shape, chain across reopen, concurrency, tamper detection, the CLI.

Every test writes a real file and reads it back; `medserve audit verify` runs as a real subprocess.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from medserve_runtime.audit import GENESIS, AuditLog, chain_hash, main, verify

MEDSERVE = Path(sys.executable).with_name("medserve")


def write(path: Path, count: int, **extra: Any) -> None:
    with AuditLog(path) as log:
        for i in range(count):
            log.record(
                key_id="clinician-app",
                endpoint="/predict",
                status=200,
                outcome="ok",
                latency_ms=1.5 + i,
                model_version="3",
                prediction_id=f"pred-{i}",
                patient_hash="pt_abc",
                **extra,
            )


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_record_shape_and_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 3, priority="urgent", batch_size=4)
    records = lines(path)
    assert [r["seq"] for r in records] == [1, 2, 3]
    first = records[0]
    assert list(first)[:2] == ["seq", "time"] and list(first)[-2:] == ["prev_hash", "hash"]
    assert first["time"].endswith("Z")
    expected = {"key_id": "clinician-app", "endpoint": "/predict", "status": 200, "outcome": "ok",
                "latency_ms": 1.5, "model_version": "3", "prediction_id": "pred-0", "patient_hash": "pt_abc",
                "priority": "urgent", "batch_size": 4, "prev_hash": GENESIS}  # fmt: skip
    assert expected.items() <= first.items()
    for prev, record in zip([None, *records], records, strict=False):
        assert record["prev_hash"] == (prev["hash"] if prev else GENESIS)
        body = {k: v for k, v in record.items() if k != "hash"}
        assert record["hash"] == chain_hash(record["prev_hash"], body)
    assert verify(path).ok


def test_rejected_requests_without_a_key_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.record(key_id=None, endpoint="/predict", status=401, outcome="unauthenticated", latency_ms=0.1)
    (record,) = lines(path)
    assert record["key_id"] is None and record["status"] == 401 and record["patient_hash"] is None


def test_reserved_field_names_are_refused(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.jsonl") as log, pytest.raises(ValueError, match="reserved"):
        log.record(key_id="a", endpoint="/x", status=200, outcome="ok", latency_ms=1, hash="forged")


def test_chain_continues_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 2)
    write(path, 2)
    records = lines(path)
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert records[2]["prev_hash"] == records[1]["hash"]
    assert verify(path).ok and verify(path).records == 4


def test_reopen_refuses_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 2)
    path.write_text(path.read_text()[:-20])
    with pytest.raises(ValueError, match="last line is incomplete"):
        AuditLog(path)


def test_disabled_log_drops_records(tmp_path: Path) -> None:
    log = AuditLog(None)
    log.record(key_id="a", endpoint="/x", status=200, outcome="ok", latency_ms=1)
    log.flush()
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_flush_writes_without_close_and_records_after_close_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.record(key_id="a", endpoint="/x", status=200, outcome="ok", latency_ms=1)
    log.flush()
    assert len(lines(path)) == 1
    log.close()
    log.record(key_id="a", endpoint="/x", status=200, outcome="late", latency_ms=1)  # during shutdown
    assert [r["outcome"] for r in lines(path)] == ["ok", "late"]
    assert verify(path).ok


def test_eight_threads_record_4000_contiguous_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)

    def worker(n: int) -> None:
        for i in range(500):
            log.record(key_id=f"k{n}", endpoint="/predict", status=200, outcome="ok", latency_ms=i)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    records = lines(path)
    assert len(records) == 4000
    assert [r["seq"] for r in records] == list(range(1, 4001))
    assert {r["key_id"] for r in records} == {f"k{n}" for n in range(8)}
    assert verify(path).ok


async def test_asyncio_tasks_record_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)

    async def request(i: int) -> None:
        await asyncio.sleep(0)
        log.record(
            key_id="k", endpoint="/predict", status=200, outcome="ok", latency_ms=1, prediction_id=f"p{i}"
        )

    await asyncio.gather(*(request(i) for i in range(1000)))
    log.close()
    records = lines(path)
    assert sorted(r["prediction_id"] for r in records) == sorted(f"p{i}" for i in range(1000))
    assert verify(path).ok


def tamper(path: Path, how: str) -> None:
    text = path.read_text().splitlines(keepends=True)
    if how == "edit":
        record = json.loads(text[3])
        record["status"] = 500
        text[3] = json.dumps(record, separators=(",", ":")) + "\n"
    elif how == "edit-and-rehash":
        record = json.loads(text[3])
        record["outcome"] = "forged"
        del record["hash"]
        record["hash"] = chain_hash(record["prev_hash"], record)
        text[3] = json.dumps(record) + "\n"
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
        ("edit-and-rehash", "line 5: prev_hash does not match"),
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
    result = verify(path)
    assert not result.ok
    assert result.problems[0].startswith(problem), result.problems


def test_cli_verify_exit_codes_and_output(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    write(good, 5)
    write(bad, 5)
    tamper(bad, "edit")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(MEDSERVE), "audit", *args], capture_output=True, text=True, timeout=60)

    ok = run("verify", str(good))
    assert ok.returncode == 0 and ok.stdout == f"{good}: ok, 5 records, chain intact\n"
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
    assert "ok, 0 records" in capsys.readouterr().out
