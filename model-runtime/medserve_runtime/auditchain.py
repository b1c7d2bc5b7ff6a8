"""The audit chain shared by every audit destination: keyed record hashes, writer sessions, checks.

A record is a flat JSON object: `seq` (1, 2, 3, ... within its chain), `time`, `event` (`request`,
`writer_start`, `writer_stop`, `prune`, `auth_failures`), the event's fields, `prev_hash` (the previous
record's `hash`, 64 zeros for the first) and `hash` = HMAC-SHA256(key, prev_hash + canonical JSON of the
record without `hash`), canonical meaning sorted keys, no spaces, ASCII. With a key nobody who lacks it can
edit a record and recompute the chain behind it; without one (`key=b""`) the hash is a plain SHA-256 and
verify says the chain is unkeyed. Editing, deleting, inserting or reordering records breaks the chain at
the first record touched.

Deleting the newest records leaves nothing pointing back at them, so every writer also checkpoints its
head — `Anchor(seq, hash)`, MAC'd with the same key — somewhere outside the records (a file beside the
file log, the `audit_writers` row in PostgreSQL); `check_chain` reports records missing between the
chain's end and the anchor. A writer opens its session with a `writer_start` record and closes it with
`writer_stop`; a session without its stop record ended uncleanly (SIGKILL, node loss): that is reported
as a note, not as tampering, since the records it did write are intact.

The key comes from a file (a mounted Secret) or the environment, like the PHI hash key, never from the
command line.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
KEY_ENV = "MEDSERVE_AUDIT_KEY"
KEY_FILE_ENV = "MEDSERVE_AUDIT_KEY_FILE"
RESERVED = frozenset({"seq", "time", "event", "writer", "prev_hash", "hash"})
FIELDS = (
    "request_id", "key_id", "endpoint", "status", "outcome", "latency_ms", "model_version", "prediction_id",
    "patient_hash",
)  # fmt: skip
"""A request record's fields: `request_id` is the one its access log line and `x-request-id` carry."""
START, STOP, REQUEST = "writer_start", "writer_stop", "request"


def canonical(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def chain_hash(prev_hash: str, record: Mapping[str, Any], key: bytes = b"") -> str:
    """The `hash` of `record` (without its own `hash`) following `prev_hash`, keyed when `key` is set."""
    data = (prev_hash + canonical(record)).encode()
    if key:
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def key_fingerprint(key: bytes) -> str:
    """What a `writer_start` record says about its key: enough to tell a wrong key from tampering."""
    return hashlib.sha256(b"medserve-audit-key:" + key).hexdigest()[:16] if key else "unkeyed"


def load_key(key_file: Path | None = None, environ: Mapping[str, str] | None = None) -> bytes:
    """The chain key from `key_file`, $MEDSERVE_AUDIT_KEY or the file named by $MEDSERVE_AUDIT_KEY_FILE.

    Empty when none is set (an unkeyed chain, with a warning). A named file that cannot be read, or that
    is empty, is an error: a deployment that meant to key its chain must not silently run unkeyed.
    """
    env = os.environ if environ is None else environ
    path = key_file or (Path(env[KEY_FILE_ENV]) if env.get(KEY_FILE_ENV) else None)
    if path is None:
        return env.get(KEY_ENV, "").encode()
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"audit key file {path}: cannot read it: {exc.strerror or exc}") from exc
    if not key:
        raise ValueError(f"audit key file {path} is empty")
    return key


def timestamp(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True, slots=True)
class Anchor:
    """A chain's head (its last seq and hash) as checkpointed outside the records, with its MAC."""

    seq: int
    hash: str
    mac: str

    @staticmethod
    def mac_of(writer: str, seq: int, head: str, key: bytes) -> str:
        return chain_hash(GENESIS, {"anchor": writer, "seq": seq, "hash": head}, key)

    @classmethod
    def make(cls, writer: str, seq: int, head: str, key: bytes) -> Anchor:
        return cls(seq, head, cls.mac_of(writer, seq, head, key))

    def valid(self, writer: str, key: bytes) -> bool:
        return hmac.compare_digest(self.mac, self.mac_of(writer, self.seq, self.hash, key))


class Chain:
    """One writer's chain: numbers, links and MACs records in the order they are sealed (not thread-safe:
    the group-commit thread is its only user)."""

    def __init__(self, writer: str, key: bytes, *, seq: int = 0, prev_hash: str = GENESIS) -> None:
        self.writer = writer
        self.key = key
        self.seq = seq
        self.prev_hash = prev_hash

    def seal(self, event: str, epoch: float, fields: Mapping[str, Any]) -> tuple[int, str, str]:
        """(seq, the record's JSON line without newline, its hash); advances the chain."""
        record: dict[str, Any] = {"seq": self.seq + 1, "time": timestamp(epoch), "event": event,
                                  "writer": self.writer, **fields, "prev_hash": self.prev_hash}
        record["hash"] = digest = chain_hash(self.prev_hash, record, self.key)
        self.seq += 1
        self.prev_hash = digest
        return self.seq, json.dumps(record, separators=(",", ":"), ensure_ascii=True, default=str), digest

    def mark(self) -> tuple[int, str]:
        return self.seq, self.prev_hash

    def rewind(self, mark: tuple[int, str]) -> None:
        """Forget the records sealed since `mark` (their batch could not be made durable)."""
        self.seq, self.prev_hash = mark

    def anchor(self) -> Anchor:
        return Anchor.make(self.writer, self.seq, self.prev_hash, self.key)


@dataclasses.dataclass
class ChainReport:
    """What `check_chain` found: `problems` mean tampering or loss, `notes` do not fail verification."""

    records: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    last: dict[str, Any] | None = None
    last_seq: int = 0
    last_hash: str = GENESIS


def check_chain(
    records: Iterable[tuple[str, dict[str, Any] | str]],
    *,
    key: bytes,
    first_seq: int = 1,
    first_prev: str = GENESIS,
    anchor: Anchor | None = None,
    anchor_writer: str | None = None,
) -> ChainReport:
    """Check one chain: `records` are (where, parsed record or the reason it could not be parsed).

    After a broken record the check goes on from that record's own hash, so one edit is reported once
    and the first problem listed is the first record touched. `first_seq`/`first_prev` let a chain whose
    oldest records were pruned start later. With `anchor`, records missing between the chain's end and
    the anchored head are reported (the newest records deleted), and so is an anchor that does not match.
    """
    report = ChainReport()
    prev_hash, prev_seq = first_prev, first_seq - 1
    open_session: str | None = None
    for where, record in records:
        if isinstance(record, str):
            report.problems.append(f"{where}: {record}")
            continue
        report.records += 1
        body = dict(record)
        stored, seq, link = body.pop("hash", None), body.get("seq"), body.get("prev_hash")
        if not isinstance(stored, str) or not isinstance(seq, int) or not isinstance(link, str):
            report.problems.append(f"{where}: missing or malformed seq, prev_hash or hash")
            continue
        found = []
        if seq != prev_seq + 1:
            found.append(f"seq {seq} follows {prev_seq} (a record was deleted, inserted or moved)")
        if link != prev_hash:
            found.append("prev_hash does not match the previous record's hash")
        if not hmac.compare_digest(chain_hash(link, body, key), stored):
            found.append("hash mismatch (the record was edited, or verify has the wrong key)")
        if found:
            report.problems.append(f"{where}: {'; '.join(found)}")
        event = body.get("event")
        if event == START:
            anchored = body.get("anchored_seq")
            if isinstance(anchored, int) and anchored > seq - 1:
                report.problems.append(f"{where}: records {seq}..{anchored} were deleted before this session "
                                       f"started (the anchor then said {anchored} records)")
            if open_session is not None:
                report.notes.append(f"writer session started at {open_session} ended without a clean "
                                    "shutdown record (killed?)")
            open_session = str(body.get("time"))
        elif event == STOP:
            open_session = None
        prev_hash, prev_seq = stored, seq
        report.last = record
    if open_session is not None:
        report.notes.append(f"writer session started at {open_session} has no clean shutdown record "
                            "(still running, or killed)")
    report.last_seq, report.last_hash = prev_seq, prev_hash
    if anchor is not None:
        report.problems.extend(anchor_problems(anchor, anchor_writer, key, prev_seq, prev_hash))
    return report


def anchor_problems(anchor: Anchor, writer: str | None, key: bytes, last_seq: int, last_hash: str) -> list[str]:
    """What is wrong between a chain that ends at (`last_seq`, `last_hash`) and its checkpointed head."""
    if writer is not None and not anchor.valid(writer, key):
        return ["the anchor's MAC does not match (the anchor was edited)"]
    if anchor.seq > last_seq:
        return [f"records {last_seq + 1}..{anchor.seq} are missing: the anchor (the writer's checkpointed "
                f"count) says {anchor.seq} were written"]
    if anchor.seq == last_seq and anchor.hash != last_hash:
        return [f"record {last_seq} is not the one anchored (the chain was rewritten)"]
    return []


_DURATION = re.compile(r"^(\d+)([ywdhms])$")
_UNIT_S = {"y": 365.25 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_age(text: str) -> dt.timedelta:
    """`6y`, `90d`, `12h`, ... (years of 365.25 days) as a timedelta; ValueError naming the input."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an age such as 6y, 90d, 12h, 30m or 10s")
    return dt.timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)])
