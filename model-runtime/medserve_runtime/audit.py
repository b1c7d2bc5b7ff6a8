"""The audit log: one JSON line per request, hash-chained so that tampering is detectable.

Each record carries `seq` (1, 2, 3, ...), `prev_hash` (the previous record's `hash`, 64 zeros for the
first) and `hash` = sha256(prev_hash + canonical JSON of the record without `hash`), canonical meaning
sorted keys, no spaces, ASCII. Editing a field, deleting, inserting or reordering lines therefore
breaks the chain at the first line touched; `medserve audit verify FILE` finds it. Removing whole lines
from the end cannot be seen from the file alone (nothing after them points back).

The request path only takes a lock, numbers the record and appends it to a list; a background thread
serialises, chains and writes the batch at least every FLUSH_INTERVAL_S, so no request waits on the disk.
Reopening an existing log continues its chain from the last line. `close()` (the server calls it on
SIGTERM) writes what is pending and fsyncs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
FLUSH_INTERVAL_S = 0.05
RESERVED = frozenset({"seq", "time", "prev_hash", "hash"})
FIELDS = (
    "key_id", "endpoint", "status", "outcome", "latency_ms", "model_version", "prediction_id", "patient_hash",
)  # fmt: skip

Pending = tuple[int, float, tuple[Any, ...], dict[str, Any]]


def chain_hash(prev_hash: str, record: dict[str, Any]) -> str:
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def _timestamp(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _tail(path: Path) -> tuple[int, str]:
    """The (seq, hash) of the last record of an existing log, or (0, GENESIS) for an empty or new one."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0, GENESIS
    if size == 0:
        return 0, GENESIS
    with path.open("rb") as fh:
        block = 1 << 16
        while True:
            start = max(0, size - block)
            fh.seek(start)
            data = fh.read()
            if not data.endswith(b"\n"):
                raise ValueError(
                    f"{path}: the last line is incomplete; check it with `medserve audit verify`"
                )
            lines = data[:-1].rsplit(b"\n", 1)
            if len(lines) == 2 or start == 0:
                last = lines[-1]
                break
            block *= 4
    try:
        record = json.loads(last)
        return int(record["seq"]), str(record["hash"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: the last line is not an audit record ({exc}); cannot continue the chain"
        ) from exc


class AuditLog:
    """Append-only, hash-chained JSON-lines log; `path=None` disables it (records are dropped)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()  # guards _seq and _pending (the request path)
        self._write_lock = threading.Lock()  # one writer at a time: keeps the chain in seq order
        self._pending: list[Pending] = []
        self._backlog = ""  # serialised lines a failed write left behind, retried first
        self._closed = False
        self._fh: IO[str] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if path is None:
            self._seq, self._prev_hash = 0, GENESIS
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._seq, self._prev_hash = _tail(path)
        self._fh = path.open("a", encoding="utf-8")
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def record(
        self,
        *,
        key_id: str | None,
        endpoint: str,
        status: int,
        outcome: str,
        latency_ms: float,
        model_version: str | None = None,
        prediction_id: str | None = None,
        patient_hash: str | None = None,
        **extra: str | int | float | None,
    ) -> None:
        if self.path is None:
            return
        if extra and not RESERVED.isdisjoint(extra):
            raise ValueError(f"audit fields {sorted(RESERVED & extra.keys())} are reserved")
        values = (key_id, endpoint, status, outcome, latency_ms, model_version, prediction_id, patient_hash)
        now = time.time()
        with self._lock:
            self._seq += 1
            self._pending.append((self._seq, now, values, extra))
        if self._closed:  # after close (a request finishing during shutdown): write it now
            self.flush()

    def _serialise(self, batch: list[Pending]) -> str:
        lines = []
        prev = self._prev_hash
        for seq, now, values, extra in batch:
            record: dict[str, Any] = {
                "seq": seq,
                "time": _timestamp(now),
                **dict(zip(FIELDS, values, strict=True)),
            }
            record.update(extra)
            record["prev_hash"] = prev
            prev = record["hash"] = chain_hash(prev, record)
            lines.append(json.dumps(record, separators=(",", ":"), ensure_ascii=True, default=str))
        self._prev_hash = prev
        return "\n".join(lines) + "\n" if lines else ""

    def flush(self) -> None:
        """Write everything recorded so far (blocking; the background thread calls it periodically)."""
        if self.path is None:
            return
        with self._write_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            text = self._backlog + self._serialise(batch)
            if not text:
                return
            try:
                fh = self._fh if self._fh is not None else self.path.open("a", encoding="utf-8")
                fh.write(text)
                fh.flush()
                if fh is not self._fh:
                    fh.close()
                self._backlog = ""
            except OSError as exc:
                self._backlog = text
                logger.error(
                    "audit log %s: write failed, %d bytes kept for retry: %s", self.path, len(text), exc
                )

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            self.flush()

    def close(self) -> None:
        if self.path is None or self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()
        with self._write_lock:
            if self._fh is not None:
                try:
                    os.fsync(self._fh.fileno())
                finally:
                    self._fh.close()
                    self._fh = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass
class VerifyResult:
    ok: bool
    records: int
    problems: list[str]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        raise ValueError("duplicate keys")
    return record


def verify(path: Path) -> VerifyResult:
    """Check the chain line by line; raises OSError if the file cannot be read.

    After a broken line the check goes on from that line's own hash, so one edit is reported once and
    the first problem listed is always the first line touched.
    """
    problems: list[str] = []
    records = 0
    prev_hash, prev_seq = GENESIS, 0
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            where = f"line {number}"
            if not raw.endswith(b"\n"):
                problems.append(f"{where}: incomplete last line (file truncated?)")
                break
            try:
                record = json.loads(raw, object_pairs_hook=_no_duplicates)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                problems.append(f"{where}: not a JSON audit record ({exc})")
                continue
            records += 1
            stored, seq, link = record.pop("hash", None), record.get("seq"), record.get("prev_hash")
            if not isinstance(stored, str) or not isinstance(seq, int) or not isinstance(link, str):
                problems.append(f"{where}: missing or malformed seq, prev_hash or hash")
                continue
            found = []
            if seq != prev_seq + 1:
                found.append(f"seq {seq} follows {prev_seq} (a record was deleted, inserted or moved)")
            if link != prev_hash:
                found.append("prev_hash does not match the previous record's hash")
            if chain_hash(link, record) != stored:
                found.append("hash mismatch (the record was edited)")
            if found:
                problems.append(f"{where}: {'; '.join(found)}")
            prev_hash, prev_seq = stored, seq
    return VerifyResult(ok=not problems, records=records, problems=problems)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medserve audit", description="Audit log tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="check the hash chain of audit logs (exit 0 ok, 1 tampered)")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    status = 0
    for path in args.files:
        try:
            result = verify(path)
        except OSError as exc:
            sys.stderr.write(f"{path}: cannot read: {exc.strerror or exc}\n")
            status = 2
            continue
        if result.ok:
            sys.stdout.write(f"{path}: ok, {result.records} records, chain intact\n")
            continue
        status = max(status, 1)
        sys.stdout.write(f"{path}: TAMPERED, first broken at {result.problems[0]}\n")
        for problem in result.problems[1:]:
            sys.stdout.write(f"  {problem}\n")
    return status
