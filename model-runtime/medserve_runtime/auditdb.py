"""Audit records in PostgreSQL (`--audit_dsn`), with a local spool while the database is unreachable.

Each runtime process is one writer (pod/model version/start time) with its own chain (auditchain.py).
The group commit (groupcommit.py) hands this sink a batch; the batch goes into `audit_records` in one
transaction (asyncpg, one `unnest` insert), and the same transaction moves the writer's checkpoint in
`audit_writers` — its head seq and hash, MAC'd: the anchor that shows deleted newest records, and the
request counter verify compares the chain with. When the database cannot be reached, the batch is
appended and fsynced to the spool (journal.py, on a persistent volume) instead, so the request is still
answered; the spool drains in order (`ON CONFLICT DO NOTHING`: a batch whose commit was acknowledged too
late is not written twice) as soon as the database answers, before any new record goes to the database.
When neither can be written, `writable()` is false and the gate answers 503.

Writers may share one spool directory (`--audit_spool DIR/$(POD_NAME).jsonl` on a ReadWriteMany volume):
each holds an exclusive lock on its own file (journal.py), and every writer, at start and every
`ORPHAN_SCAN_INTERVAL_S`, drains the other files there whose lock it can take — spools of writers that are
gone (a pod deleted while the database was down) — into the database, in order and exactly once
(`ON CONFLICT DO NOTHING`, so a drainer killed half-way is redone by the next), removes them, and audits
that in its own chain (`spool_recovered`: the file's name, the chains and record counts).

The schema is created and migrated idempotently by every writer at start (under an advisory lock, so
replicas starting together do not race). `verify_database` checks every chain; `prune` deletes records
older than an age as a prefix of each chain (recording where each chain now starts, MAC'd) and audits
itself as a writer of its own.

asyncpg runs on a private event loop owned by the group-commit thread, so the server's loop never waits
on the database and shutdown (after the server's loop has stopped) can still write the stop record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg

from medserve_runtime.auditchain import (
    GENESIS,
    Anchor,
    Chain,
    ChainReport,
    check_chain,
    key_fingerprint,
    parse_age,
    timestamp,
)
from medserve_runtime.groupcommit import AuditTrail, GroupCommit, Sealed
from medserve_runtime.journal import Journal

logger = logging.getLogger(__name__)

DSN_ENV = "MEDSERVE_AUDIT_DSN"
DSN_FILE_ENV = "MEDSERVE_AUDIT_DSN_FILE"
CONNECT_TIMEOUT_S = 2.0
RECONNECT_INTERVAL_S = 1.0
WRITE_TIMEOUT_S = 5.0  # a database that hangs (not refuses) must not hold requests longer
DRAIN_CHUNK = 5000
ORPHAN_SCAN_INTERVAL_S = 10.0
SPOOL_SUFFIX = ".jsonl"
SPOOL_RECOVERED = "spool_recovered"
SCHEMA_LOCK = 7_310_214_001  # pg_advisory_xact_lock id for migrations

# Each entry is one schema version; applied in order, each in the migration transaction, never edited.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE audit_writers (
        writer      text PRIMARY KEY,
        first_at    timestamptz NOT NULL,
        head_seq    bigint NOT NULL,
        head_hash   text NOT NULL,
        anchor_mac  text NOT NULL,
        pruned_seq  bigint NOT NULL DEFAULT 0,
        pruned_hash text NOT NULL DEFAULT '{genesis}',
        pruned_mac  text,
        updated_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE audit_records (
        writer      text NOT NULL,
        seq         bigint NOT NULL,
        recorded_at timestamptz NOT NULL,
        event       text NOT NULL,
        hash        text NOT NULL,
        record      text NOT NULL,
        PRIMARY KEY (writer, seq)
    );
    CREATE INDEX audit_records_recorded_at ON audit_records (recorded_at);
    """.replace("{genesis}", GENESIS),
)

# One statement, so one round trip and one implicit transaction: the records and the writer's checkpoint
# (head seq, hash and MAC) commit together or not at all. A data-modifying CTE runs even unreferenced.
_WRITE = """
WITH records AS (
    INSERT INTO audit_records (writer, seq, recorded_at, event, hash, record)
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::text[], $5::text[], $6::text[])
    {conflict}
)
INSERT INTO audit_writers (writer, first_at, head_seq, head_hash, anchor_mac)
SELECT * FROM unnest($7::text[], $8::timestamptz[], $9::bigint[], $10::text[], $11::text[])
ON CONFLICT (writer) DO UPDATE SET head_seq = EXCLUDED.head_seq, head_hash = EXCLUDED.head_hash,
    anchor_mac = EXCLUDED.anchor_mac, updated_at = now()
WHERE audit_writers.head_seq < EXCLUDED.head_seq
"""
_WRITE_NEW = _WRITE.replace("{conflict}", "")
_WRITE_AGAIN = _WRITE.replace("{conflict}", "ON CONFLICT (writer, seq) DO NOTHING")

_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError,
              TimeoutError, ConnectionError)
"""What a database write can fail with; the batch then goes to the spool. InternalClientError (not an
InterfaceError) is asyncpg refusing an operation on a connection left mid-operation ("cannot switch to state
12; another operation (2) is in progress") as the server shuts down: without it, that batch was answered 503."""


def resolve_dsn(dsn: str | None, *, dsn_file: Path | None = None) -> str:
    """The DSN from the argument, `dsn_file`, $MEDSERVE_AUDIT_DSN or the file $MEDSERVE_AUDIT_DSN_FILE names."""
    if dsn:
        return dsn
    path = dsn_file or (Path(os.environ[DSN_FILE_ENV]) if os.environ.get(DSN_FILE_ENV) else None)
    if path is not None:
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"audit DSN file {path}: cannot read it: {exc.strerror or exc}") from exc
        if not text:
            raise ValueError(f"audit DSN file {path} is empty")
        return text
    if os.environ.get(DSN_ENV):
        return os.environ[DSN_ENV]
    raise ValueError(f"no audit database: pass --dsn, or set ${DSN_ENV} or ${DSN_FILE_ENV}")


def redact(dsn: str) -> str:
    """The DSN without its password, for log lines."""
    head, sep, tail = dsn.partition("@")
    if not sep or "://" not in head:
        return dsn
    scheme, _, userinfo = head.partition("://")
    return f"{scheme}://{userinfo.split(':', 1)[0]}@{tail}"


async def migrate(conn: asyncpg.Connection) -> int:
    """Create or migrate the schema to the latest version; idempotent; returns the version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS audit_schema "
                           "(version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM audit_schema")
        for version, sql in enumerate(MIGRATIONS, start=1):
            if version > current:
                await conn.execute(sql)
                await conn.execute("INSERT INTO audit_schema (version) VALUES ($1)", version)
        return len(MIGRATIONS)


@dataclasses.dataclass(frozen=True, slots=True)
class _Row:
    writer: str
    seq: int
    at: dt.datetime
    event: str
    hash: str
    line: str

    @classmethod
    def parse(cls, line: str) -> _Row:
        record = json.loads(line)
        at = dt.datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00"))
        return cls(str(record["writer"]), int(record["seq"]), at, str(record["event"]), str(record["hash"]), line)


def _columns(rows: list[_Row]) -> tuple[list[Any], ...]:
    return ([r.writer for r in rows], [r.seq for r in rows], [r.at for r in rows], [r.event for r in rows],
            [r.hash for r in rows], [r.line for r in rows])


def _heads(rows: list[_Row], key: bytes) -> tuple[list[Any], ...]:
    last: dict[str, _Row] = {}
    first: dict[str, dt.datetime] = {}
    for row in rows:
        first.setdefault(row.writer, row.at)
        if row.writer not in last or row.seq > last[row.writer].seq:
            last[row.writer] = row
    writers = sorted(last)
    return (writers, [first[w] for w in writers], [last[w].seq for w in writers], [last[w].hash for w in writers],
            [Anchor.mac_of(w, last[w].seq, last[w].hash, key) for w in writers])


class PostgresSink:
    """The group commit's destination: PostgreSQL, else the spool (None: no spool, fail instead)."""

    def __init__(self, dsn: str, *, key: bytes, spool: Path | None) -> None:
        self.dsn = dsn
        self.key = key
        self.loop = asyncio.new_event_loop()
        self.spool = Journal(spool, exclusive=True) if spool is not None else None
        self.conn: asyncpg.Connection | None = None
        self._next_connect = 0.0
        self._next_orphan_scan = 0.0
        self._resync = True
        self.spooled_total = 0
        self.spooled_now = len(self.spool.read_lines()) if self.spool is not None else 0
        self.drained_total = 0
        self.recovered_total = 0
        self.on_recovered: Callable[[Mapping[str, Any]], object] | None = None
        """Audits a recovered spool (set by `PostgresAuditLog`: an event in this writer's own chain)."""
        self._connect()

    @property
    def repaired_bytes(self) -> int:
        return self.spool.repaired_bytes if self.spool is not None else 0

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def _connect(self) -> bool:
        """Connect (and migrate) unless connected or a recent attempt failed; True when connected."""
        if self.conn is not None and not self.conn.is_closed():
            return True
        if time.monotonic() < self._next_connect:
            return False
        self._next_connect = time.monotonic() + RECONNECT_INTERVAL_S
        try:
            conn = self._run(asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT_S))
        except _DB_ERRORS as exc:
            logger.warning("audit database %s unreachable: %s", redact(self.dsn), exc)
            return False
        try:
            self._run(migrate(conn))
        except _DB_ERRORS as exc:
            logger.error("audit database %s: schema migration failed: %s", redact(self.dsn), exc)
            self._run(conn.close())
            return False
        self.conn = conn
        self._resync = True
        logger.info("audit database %s connected", redact(self.dsn))
        return True

    def _drop(self, exc: BaseException) -> None:
        logger.error("audit database write failed (%s); records go to the spool until it answers", exc)
        if self.conn is not None:
            conn, self.conn = self.conn, None
            try:
                self._run(asyncio.wait_for(conn.close(), 1.0))
            except (*_DB_ERRORS, asyncio.CancelledError):
                conn.terminate()
        self._next_connect = time.monotonic() + RECONNECT_INTERVAL_S

    async def _insert(self, rows: list[_Row], *, idempotent: bool) -> None:
        assert self.conn is not None
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await self.conn.execute(_WRITE_AGAIN if idempotent else _WRITE_NEW, *_columns(rows),
                                    *_heads(rows, self.key))

    def _drain(self) -> bool:
        """Move the spool into the database, in order, then empty it; True when the spool is empty."""
        if self.spool is None or self.spool.size == 0:
            return True
        if not self._connect():
            return False
        lines = self.spool.read_lines()
        rows = [_Row.parse(line) for line in lines]
        try:
            for start in range(0, len(rows), DRAIN_CHUNK):
                self._run(self._insert(rows[start:start + DRAIN_CHUNK], idempotent=True))
        except _DB_ERRORS as exc:
            self._drop(exc)
            return False
        self.spool.reset()
        self.spooled_now = 0
        self.drained_total += len(rows)
        logger.warning("audit spool drained: %d records written to the database", len(rows))
        return True

    def _drain_orphans(self) -> None:
        """Drain and remove the spools of gone writers in our spool's directory (see the module docstring)."""
        if self.spool is None or time.monotonic() < self._next_orphan_scan:
            return
        self._next_orphan_scan = time.monotonic() + ORPHAN_SCAN_INTERVAL_S
        for path in sorted(self.spool.path.parent.glob("*" + SPOOL_SUFFIX)):
            if path == self.spool.path or not self._connect():
                continue
            orphan = Journal.claim(path)
            if orphan is None:  # a live writer's
                continue
            try:
                rows = [_Row.parse(line) for line in orphan.read_lines()]
                for start in range(0, len(rows), DRAIN_CHUNK):
                    self._run(self._insert(rows[start:start + DRAIN_CHUNK], idempotent=True))
            except _DB_ERRORS as exc:
                orphan.close()  # the lock goes with it: this or another writer tries again later
                self._drop(exc)
                return
            except (ValueError, KeyError, TypeError) as exc:  # not a spool, or damaged: left for a person
                orphan.close()
                logger.error("audit spool %s of a gone writer is unreadable, left in place: %s", path.name, exc)
                continue
            orphan.remove()
            self.recovered_total += len(rows)
            chains: dict[str, int] = {}
            for row in rows:
                chains[row.writer] = chains.get(row.writer, 0) + 1
            logger.warning("audit spool %s of a gone writer drained: %d records of %d chains written to the "
                           "database", path.name, len(rows), len(chains))
            if self.on_recovered is not None:
                self.on_recovered({"spool": path.name, "records": len(rows), "repaired_bytes": orphan.repaired_bytes,
                                   "chains": chains})

    def prepare(self, chain: Chain) -> None:
        """After a reconnect: a batch whose commit was acknowledged too late may be in the database though
        it was rewound here; continue after whatever the database holds for this writer."""
        if not self._resync or self.conn is None:
            return
        row = self._run(self.conn.fetchrow("SELECT seq, hash FROM audit_records WHERE writer = $1 "
                                           "ORDER BY seq DESC LIMIT 1", chain.writer))
        self._resync = False
        if row is not None and row["seq"] > chain.seq:
            logger.warning("audit chain %s continues after record %d found in the database", chain.writer,
                           row["seq"])
            chain.rewind((int(row["seq"]), str(row["hash"])))

    def persist(self, batch: list[Sealed], chain: Chain) -> None:
        rows = [_Row(chain.writer, s.seq, dt.datetime.fromtimestamp(s.epoch, dt.UTC), s.event, s.hash, s.line)
                for s in batch]
        if self._drain() and self._connect():
            try:
                self._run(self._insert(rows, idempotent=False))
                return
            except _DB_ERRORS as exc:
                self._drop(exc)
        if self.spool is None:
            raise ConnectionError("the audit database is unreachable and there is no spool")
        try:
            self.spool.append([r.line for r in rows])
        except OSError:
            self._resync = True  # the database may have the batch after all
            raise
        self.spooled_total += len(rows)
        self.spooled_now += len(rows)

    def idle(self, chain: Chain) -> bool:
        if self._drain() and self._connect():
            self._drain_orphans()
            return True
        if self.spool is None:
            return False
        self.spool.probe()
        return True

    def health(self) -> dict[str, Any]:
        connected = self.conn is not None and not self.conn.is_closed()
        return {"destination": "postgresql", "database": "connected" if connected else "unreachable",
                "spooled": self.spooled_now, "spooled_total": self.spooled_total, "drained_total": self.drained_total,
                "recovered_total": self.recovered_total}

    def close(self) -> None:
        if self.conn is not None:
            try:
                self._run(asyncio.wait_for(self.conn.close(), 5.0))
            except (*_DB_ERRORS, asyncio.CancelledError):
                self.conn.terminate()
            self.conn = None
        if self.spool is not None:
            self.spool.close()
        self.loop.close()


class PostgresAuditLog(AuditTrail):
    """The runtime's audit trail in PostgreSQL (the module docstring); `spool=None`: fail when unreachable."""

    def __init__(self, dsn: str, *, key: bytes, writer: str, spool: Path | None,
                 start_fields: dict[str, Any] | None = None) -> None:
        self.writer = writer
        self.sink = PostgresSink(dsn, key=key, spool=spool)
        start = {"key": key_fingerprint(key), "repaired_bytes": self.sink.repaired_bytes, **(start_fields or {})}
        super().__init__(GroupCommit(Chain(writer, key), self.sink, start_fields=start), self.sink)
        self.sink.on_recovered = lambda fields: self.event(SPOOL_RECOVERED, fields)


def _fmt_problem(writer: str, report: ChainReport) -> Iterator[str]:
    for problem in report.problems:
        yield f"writer {writer}: {problem}"


@dataclasses.dataclass
class DatabaseReport:
    ok: bool
    writers: int
    records: int
    problems: list[str]
    notes: list[str]


async def verify_database(conn: asyncpg.Connection, key: bytes) -> DatabaseReport:
    """Check every writer's chain, its checkpoint (anchor, request counter) and its prune mark."""
    problems: list[str] = []
    notes: list[str] = []
    total = 0
    marks = {r["writer"]: r for r in await conn.fetch("SELECT * FROM audit_writers")}
    writers = sorted(set(marks) | {r["writer"] for r in await conn.fetch("SELECT DISTINCT writer FROM audit_records")})
    for writer in writers:
        mark = marks.get(writer)
        first_seq, first_prev, anchor = 1, GENESIS, None
        if mark is None:
            problems.append(f"writer {writer}: no checkpoint row in audit_writers (deleted?)")
        else:
            anchor = Anchor(int(mark["head_seq"]), str(mark["head_hash"]), str(mark["anchor_mac"]))
            if mark["pruned_seq"]:
                pruned = Anchor(int(mark["pruned_seq"]), str(mark["pruned_hash"]), str(mark["pruned_mac"] or ""))
                if not pruned.valid("prune:" + writer, key):
                    problems.append(f"writer {writer}: the prune mark's MAC does not match (edited)")
                first_seq, first_prev = pruned.seq + 1, pruned.hash
        records: list[tuple[str, dict[str, Any] | str]] = []
        async with conn.transaction():
            async for row in conn.cursor("SELECT seq, event, hash, record, writer FROM audit_records "
                                         "WHERE writer = $1 ORDER BY seq", writer, prefetch=2000):
                where = f"record seq {row['seq']}"
                try:
                    record = json.loads(row["record"])
                except ValueError as exc:
                    records.append((where, f"not a JSON audit record ({exc})"))
                    continue
                if not isinstance(record, dict):
                    records.append((where, "not a JSON object"))
                    continue
                if (record.get("seq"), record.get("writer"), record.get("hash"), record.get("event")) != (
                        row["seq"], row["writer"], row["hash"], row["event"]):
                    problems.append(f"writer {writer}: {where}: its columns disagree with the record (edited)")
                records.append((where, record))
        report = check_chain(records, key=key, first_seq=first_seq, first_prev=first_prev, anchor=anchor,
                             anchor_writer=writer)
        total += report.records
        problems.extend(_fmt_problem(writer, report))
        notes.extend(f"writer {writer}: {note}" for note in report.notes)
    if not key:
        notes.append("unkeyed chains (no audit key): records edited with the chain recomputed are not detected")
    return DatabaseReport(ok=not problems, writers=len(writers), records=total, problems=problems, notes=notes)


async def _prune(conn: asyncpg.Connection, cutoff: dt.datetime, key: bytes) -> tuple[int, int]:
    """Delete each chain's records older than `cutoff` (a prefix); (records deleted, chains touched)."""
    deleted = touched = 0
    async with conn.transaction():
        heads = await conn.fetch(
            "SELECT DISTINCT ON (writer) writer, seq, hash FROM audit_records WHERE recorded_at < $1 "
            "ORDER BY writer, seq DESC", cutoff)
        for head in heads:
            writer, seq, digest = head["writer"], int(head["seq"]), str(head["hash"])
            status = await conn.execute("DELETE FROM audit_records WHERE writer = $1 AND seq <= $2", writer, seq)
            deleted += int(status.split()[-1])
            touched += 1
            await conn.execute("UPDATE audit_writers SET pruned_seq = $2, pruned_hash = $3, pruned_mac = $4 "
                               "WHERE writer = $1", writer, seq, digest, Anchor.mac_of("prune:" + writer, seq,
                                                                                       digest, key))
    return deleted, touched


def verify_main(dsn: str, key: bytes) -> int:
    async def run() -> DatabaseReport:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await migrate(conn)
            return await verify_database(conn, key)
        finally:
            await conn.close()

    try:
        report = asyncio.run(run())
    except _DB_ERRORS as exc:
        sys.stderr.write(f"{redact(dsn)}: cannot check the audit database: {exc}\n")
        return 2
    if report.ok:
        sys.stdout.write(f"{redact(dsn)}: ok, {report.records} records in {report.writers} chains, intact\n")
    else:
        sys.stdout.write(f"{redact(dsn)}: TAMPERED, first broken at {report.problems[0]}\n")
        for problem in report.problems[1:]:
            sys.stdout.write(f"  {problem}\n")
    for note in report.notes:
        sys.stdout.write(f"  note: {note}\n")
    return 0 if report.ok else 1


def prune_main(dsn: str, older_than: str, key: bytes) -> int:
    try:
        age = parse_age(older_than)
    except ValueError as exc:
        sys.stderr.write(f"--older-than: {exc}\n")
        return 2
    cutoff = dt.datetime.now(dt.UTC) - age
    started = time.time()

    async def run() -> tuple[int, int]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await migrate(conn)
            return await _prune(conn, cutoff, key)
        finally:
            await conn.close()

    writer = f"prune/{socket.gethostname()}/{timestamp(started)}"
    try:
        log = PostgresAuditLog(dsn, key=key, writer=writer, spool=None, start_fields={"tool": "medserve audit prune"})
        deleted, touched = asyncio.run(run())
        done = log.event("prune", {"older_than": older_than, "cutoff": cutoff.isoformat(),
                                   "deleted": deleted, "chains": touched})
        log.close()
        done.result(timeout=30)
    except Exception as exc:  # the database went away half-way: say so, the prune is one transaction
        sys.stderr.write(f"{redact(dsn)}: prune failed: {exc}\n")
        return 2
    sys.stdout.write(f"{redact(dsn)}: pruned {deleted} records older than {older_than} "
                     f"(before {cutoff.isoformat()}) from {touched} chains; audited as {writer}\n")
    return 0
