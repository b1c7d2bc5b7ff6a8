"""The file audit log (`--audit_log FILE`) and the `medserve audit` command.

One JSON line per record, chained and keyed as auditchain.py describes; one file is one chain, continued
across restarts, with a `writer_start`/`writer_stop` pair around each runtime process. Records are
durable before the request is answered: the gate awaits the Future `record()` returns, which resolves
after the group commit (groupcommit.py) has appended and fsynced its batch (journal.py). A torn last
line is cut off and reported at start (in the log and in the session's `writer_start` record). When the
file cannot be written, `writable()` is false, the gate answers 503 and readiness goes false, until a
probe write succeeds again; a failed batch is cut off and rewound, so nothing is ever written twice.

The anchor — the chain's head, MAC'd — is checkpointed after every batch to `<FILE>.anchor` (or
`anchor_path`, ideally on another volume), so deleting the newest records or emptying the file is found
by `medserve audit verify FILE`. `AuditLog(None)` is the disabled log: records are dropped.

`medserve audit verify --dsn URL` and `medserve audit prune --dsn URL --older-than 6y` work on the
PostgreSQL store (auditdb.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medserve_runtime.auditchain import (
    GENESIS,
    Anchor,
    Chain,
    anchor_problems,
    check_chain,
    key_fingerprint,
    load_key,
    timestamp,
)
from medserve_runtime.groupcommit import AuditTrail, AuditUnavailable, GroupCommit, Sealed
from medserve_runtime.journal import Journal, last_record_line

logger = logging.getLogger(__name__)

FILE_CHAIN = "file-log"  # the anchor's chain name: one file is one chain

__all__ = ["GENESIS", "AuditLog", "AuditTrail", "AuditUnavailable", "VerifyResult", "main", "verify", "writer_identity"]


def writer_identity(model_version: str | None = None, *, started: float | None = None) -> str:
    """pod/model version/start time: what names one writer's chain (POD_NAME as the pod's name)."""
    pod = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{pod}/{model_version or 'unknown'}/{timestamp(started if started is not None else time.time())}"


def anchor_file(path: Path) -> Path:
    return path.with_name(path.name + ".anchor")


def read_anchor(path: Path) -> Anchor | None:
    """The anchor at `path`, or None when there is none; ValueError when it is unreadable."""
    try:
        data = json.loads(path.read_text())
        return Anchor(seq=int(data["seq"]), hash=str(data["hash"]), mac=str(data["mac"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not an audit anchor ({exc})") from exc


ANCHOR_SYNC_S = 1.0
"""The anchor is rewritten after every batch but fsynced at most this often (and at close)."""


def write_anchor(path: Path, anchor: Anchor, *, sync: bool = True) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        fh.write(json.dumps(dataclasses.asdict(anchor)) + "\n")
        fh.flush()
        if sync:
            os.fsync(fh.fileno())
    tmp.replace(path)


class _FileSink:
    def __init__(self, journal: Journal, anchor_path: Path) -> None:
        self.journal = journal
        self.anchor_path = anchor_path
        self.anchor_ok = True
        self._anchor_synced = 0.0
        self._chain: Chain | None = None

    def persist(self, batch: list[Sealed], chain: Chain) -> None:
        self.journal.append([item.line for item in batch])
        self._chain = chain
        # The records are fsynced above: they are the durability. The anchor (evidence against deleting the
        # newest records) is current in the file after every batch but fsynced at most every ANCHOR_SYNC_S
        # and at close: its fsync cost as much as the batch's own. A crash can leave it that much behind
        # the records, which verify allows (an anchor that lags).
        now = time.monotonic()
        sync = now - self._anchor_synced >= ANCHOR_SYNC_S
        self._write_anchor(chain, sync=sync)
        if sync:
            self._anchor_synced = now

    def _write_anchor(self, chain: Chain, *, sync: bool) -> None:
        try:
            write_anchor(self.anchor_path, Anchor.make(FILE_CHAIN, chain.seq, chain.prev_hash, chain.key),
                         sync=sync)
            self.anchor_ok = True
        except OSError as exc:  # the records are durable; the anchor only lags (verify allows that)
            if self.anchor_ok:
                logger.error("audit anchor %s could not be written: %s", self.anchor_path, exc)
            self.anchor_ok = False

    def prepare(self, chain: Chain) -> None:
        return None

    def idle(self, chain: Chain) -> bool:
        self.journal.probe()
        return True

    def close(self) -> None:
        if self._chain is not None:
            self._write_anchor(self._chain, sync=True)
        self.journal.close()

    def health(self) -> dict[str, Any]:
        return {"destination": "file", "anchor_ok": self.anchor_ok}


def _resume(journal: Journal) -> tuple[int, str]:
    """(seq, hash) of the journal's last record, to continue its chain."""
    if journal.size == 0:
        return 0, GENESIS
    last = last_record_line(journal.path, journal.size)
    try:
        record = json.loads(last or b"")
        return int(record["seq"]), str(record["hash"])
    except (ValueError, KeyError, TypeError):
        pass
    # A complete but foreign last line (edited by hand): continue after the last real record, so the
    # runtime starts; verify reports the bad line.
    for line in reversed(journal.read_lines()):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = json.loads(line)
            logger.error("audit log %s: the last line is not an audit record; continuing the chain after "
                         "record %s (check it with `medserve audit verify`)", journal.path, record["seq"])
            return int(record["seq"]), str(record["hash"])
    return 0, GENESIS


class AuditLog(AuditTrail):
    """See the module docstring. `key=None` reads the key from the environment (auditchain.load_key)."""

    def __init__(self, path: Path | None, *, key: bytes | None = None, anchor_path: Path | None = None,
                 writer: str | None = None) -> None:
        self.path = path
        if path is None:
            super().__init__(None, None)
            return
        key = load_key() if key is None else key
        journal = Journal(path)
        seq, head = _resume(journal)
        self.anchor_path = anchor_path or anchor_file(path)
        try:
            anchored = read_anchor(self.anchor_path)
        except ValueError as exc:
            logger.error("audit log %s: %s", path, exc)
            anchored = None
        if anchored is not None and anchored.seq > seq:
            logger.error("audit log %s has %d records but its anchor says %d: records were deleted",
                         path, seq, anchored.seq)
        start = {"key": key_fingerprint(key), "repaired_bytes": journal.repaired_bytes,
                 "anchored_seq": anchored.seq if anchored is not None else None}
        sink = _FileSink(journal, self.anchor_path)
        chain = Chain(writer or writer_identity(), key, seq=seq, prev_hash=head)
        super().__init__(GroupCommit(chain, sink, start_fields=start), sink)

    def __enter__(self) -> AuditLog:
        return self


@dataclasses.dataclass
class VerifyResult:
    ok: bool
    records: int
    problems: list[str]
    notes: list[str] = dataclasses.field(default_factory=list)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        raise ValueError("duplicate keys")
    return record


def _file_records(path: Path, problems: list[str]) -> Iterator[tuple[str, dict[str, Any] | str]]:
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            where = f"line {number}"
            if not raw.endswith(b"\n"):
                problems.append(f"{where}: incomplete last line (file truncated?)")
                return
            try:
                record = json.loads(raw, object_pairs_hook=_no_duplicates)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                yield where, f"not a JSON audit record ({exc})"
                continue
            yield where, record


def verify(path: Path, *, key: bytes | None = None, anchor_path: Path | None = None) -> VerifyResult:
    """Check a file log's chain and its anchor; raises OSError if the file cannot be read."""
    key = load_key() if key is None else key
    anchor_path = anchor_path or anchor_file(path)
    problems: list[str] = []
    try:
        anchor = read_anchor(anchor_path)
    except ValueError as exc:
        problems.append(str(exc))
        anchor = None
    report = check_chain(_file_records(path, problems), key=key)
    if anchor is not None:
        problems.extend(anchor_problems(anchor, FILE_CHAIN, key, report.last_seq, report.last_hash))
    notes = report.notes
    if anchor is None and not problems:
        notes.append(f"no anchor at {anchor_path}: deleting the newest records could not be detected")
    if not key:
        notes.append("unkeyed chain (no audit key): a record edited with its chain recomputed is not detected")
    # The torn-line problem (from the reader) comes after the records before it, as the first line touched.
    problems = report.problems + problems
    return VerifyResult(ok=not problems, records=report.records, problems=problems, notes=notes)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medserve audit", description="Audit log tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="check the chains of audit logs (exit 0 ok, 1 tampered)")
    check.add_argument("files", nargs="*", type=Path, metavar="FILE")
    check.add_argument("--dsn", help="check every chain in this PostgreSQL database instead "
                                     "(or $MEDSERVE_AUDIT_DSN / the file named by $MEDSERVE_AUDIT_DSN_FILE)")
    check.add_argument("--key-file", type=Path, help="the audit key (else $MEDSERVE_AUDIT_KEY[_FILE])")
    prune = commands.add_parser("prune", help="delete PostgreSQL audit records older than an age (audited)")
    prune.add_argument("--dsn")
    prune.add_argument("--older-than", required=True, help="an age such as 6y or 90d")
    prune.add_argument("--key-file", type=Path)
    try:
        args = parser.parse_args(argv)
        if args.command == "verify" and not args.files and args.dsn is None and not _env_dsn():
            parser.error("name FILE(s) or --dsn")
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    try:
        key = load_key(args.key_file)
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    if args.command == "prune" or not args.files:
        from medserve_runtime import auditdb

        try:
            dsn = auditdb.resolve_dsn(args.dsn)
        except ValueError as exc:
            sys.stderr.write(f"{exc}\n")
            return 2
        if args.command == "prune":
            return auditdb.prune_main(dsn, args.older_than, key)
        return auditdb.verify_main(dsn, key)
    status = 0
    for path in args.files:
        try:
            result = verify(path, key=key)
        except OSError as exc:
            sys.stderr.write(f"{path}: cannot read: {exc.strerror or exc}\n")
            status = 2
            continue
        if result.ok:
            sys.stdout.write(f"{path}: ok, {result.records} records, chain intact\n")
        else:
            status = max(status, 1)
            sys.stdout.write(f"{path}: TAMPERED, first broken at {result.problems[0]}\n")
            for problem in result.problems[1:]:
                sys.stdout.write(f"  {problem}\n")
        for note in result.notes:
            sys.stdout.write(f"  note: {note}\n")
    return status


def _env_dsn() -> bool:
    return bool(os.environ.get("MEDSERVE_AUDIT_DSN") or os.environ.get("MEDSERVE_AUDIT_DSN_FILE"))
