"""Wiring: build the runtime's parts from the parsed command line and run them on KServe's ModelServer.

KServe 0.21 has no hook for extra routes or middleware on its REST server: `RESTServer` builds its
routes at start on the module-level FastAPI app `kserve.model_server.app`, which is importable and
is the app it serves. So the runtime adds its routes (routes.py), its exception handlers (errors.py)
and its middlewares (access log, gate, deadline) to that app before the server starts; KServe's
V1/V2 routes are then added by KServe itself, exactly as for its own servers, on a REST server with
the runtime's limits and error handlers (serving.py).

gRPC stays off: KServe's gRPC server would answer inference without the gate (no API key, no audit
record), which a clinical deployment must not allow. One uvicorn worker only: the micro-batcher,
prediction memory and statistics live in the process (scale with replicas, as KServe does).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import kserve
import kserve.logging
import kserve.model_server

from medserve_runtime import loader, routes
from medserve_runtime.accesslog import AccessLog, Deadline, quiet_third_party_loggers
from medserve_runtime.api import ClinicalApi
from medserve_runtime.arms import GraphPaths, Peers, parse_peers
from medserve_runtime.audit import AuditLog, writer_identity
from medserve_runtime.auditchain import load_key
from medserve_runtime.batching import Arrivals
from medserve_runtime.errors import add_exception_handlers
from medserve_runtime.fastpath import FastPath
from medserve_runtime.gate import Gate
from medserve_runtime.groupcommit import AuditTrail
from medserve_runtime.metrics import RuntimeMetrics
from medserve_runtime.model import ClinicalModel
from medserve_runtime.phi import PhiHasher, PhiScrubFilter, redact_secrets
from medserve_runtime.ratelimit import FailedAuthLimiter, SharedLimiter
from medserve_runtime.security import KeyStore
from medserve_runtime.serving import RuntimeServer, limits_from_args, load_within
from medserve_runtime.stats import PredictionLog, VersionStats

logger = logging.getLogger("medserve_runtime")

KEYS_POLL_SECONDS = 10.0
AUTH_FAILURES_REPORT_S = 5.0


def configure_logging(log_config_file: str | None) -> None:
    """KServe's logging setup, plus a root handler in its format for the runtime's own loggers."""
    kserve.logging.configure_logging(log_config_file)
    root = logging.getLogger()
    if not root.handlers:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(logging.Formatter(kserve.logging.KSERVE_LOGGER_FORMAT,
                                              kserve.logging.KSERVE_LOGGER_DATE_FORMAT))
        root.addHandler(stderr)
    root.setLevel(logging.INFO)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    quiet_third_party_loggers()  # they print raw request lines; accesslog.py writes the access log


def watch_keys(keys: KeyStore, path: Path, *, interval: float = KEYS_POLL_SECONDS) -> threading.Thread:
    """Re-read the keys file when it changes (a rotated Secret); a bad new file keeps the old keys."""

    def stamp() -> tuple[int, int] | None:
        try:
            st = path.stat()  # follows the ..data symlink a Secret volume swaps on update
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def run() -> None:
        seen = stamp()
        while not stop.wait(interval):
            now = stamp()
            if now is not None and now != seen:
                seen = now
                try:
                    keys.reload()
                    logger.info("reloaded API keys from %s: %d keys", path, len(keys.ids))
                except ValueError as exc:
                    logger.error("kept the previous API keys: %s", exc)

    stop = threading.Event()
    thread = threading.Thread(target=run, name="api-keys-watch", daemon=True)
    thread.start()
    return thread


def open_audit(args: argparse.Namespace, model_version: str | None) -> AuditTrail:
    """The audit trail the flags name: PostgreSQL (with its spool), the file log, or none (warned)."""
    key = load_key(args.audit_key_file)
    if not key and (args.audit_log or args.audit_dsn or args.audit_dsn_file):
        logger.warning("the audit chain is UNKEYED (no --audit_key_file or $MEDSERVE_AUDIT_KEY): a record "
                       "edited with its chain recomputed would not be detected")
    if args.audit_dsn is not None or args.audit_dsn_file is not None:
        from medserve_runtime.auditdb import PostgresAuditLog, redact, resolve_dsn

        dsn = resolve_dsn(args.audit_dsn, dsn_file=args.audit_dsn_file)
        trail = PostgresAuditLog(dsn, key=key, writer=writer_identity(model_version), spool=args.audit_spool,
                                 start_fields={"model": args.model_name})
        logger.info("audit trail: PostgreSQL %s (spool %s)", redact(dsn), args.audit_spool or "none")
        return trail
    if args.audit_log is None:
        logger.warning("audit log disabled (no --audit_log or --audit_dsn)")
    return AuditLog(args.audit_log, key=key, writer=writer_identity(model_version))


def report_auth_failures(limiter: FailedAuthLimiter, audit: AuditTrail, *,
                         interval: float = AUTH_FAILURES_REPORT_S) -> threading.Event:
    """One `auth_failures` audit record per client address and interval; set the Event to stop (flushes)."""

    def flush() -> None:
        for address, count in sorted(limiter.take_counts().items()):
            audit.event("auth_failures", {"client_address": address, "count": count, "interval_s": interval})

    def run() -> None:
        while not stop.wait(interval):
            flush()
        flush()

    stop = threading.Event()
    threading.Thread(target=run, name="auth-failures-report", daemon=True).start()
    return stop


GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Fewer, cheaper collections on the request path, for the tail: everything loaded so far (torch,
    FastAPI, the model) is moved out of the collector's sight (`gc.freeze`), so a full collection no
    longer walks it, and the youngest generation is collected every 50,000 allocations rather than 700
    (a request allocates a few hundred objects, nearly all freed by reference counting)."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, second, third)


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the metrics scrape token: {exc.strerror}") from exc
    if not token:
        raise ValueError(f"{path}: the metrics scrape token file is empty")
    return token


def serve(args: argparse.Namespace) -> int:
    """Load the model, start the server, block until it stops (SIGTERM), flush the audit log."""
    configure_logging(args.log_config_file)
    hasher = PhiHasher.from_env(key_file=args.phi_hash_key_file)
    PhiScrubFilter(hasher).install()

    keys: KeyStore | None = None
    if args.api_keys_file is not None:
        keys = KeyStore.from_file(args.api_keys_file)
        watch_keys(keys, args.api_keys_file)
        logger.info("API keys: %d loaded from %s", len(keys.ids), args.api_keys_file)
    else:
        logger.warning("AUTHENTICATION IS DISABLED: no --api_keys_file, so every endpoint is open to anyone "
                       "who can reach this server. Never run a clinical deployment like this.")
    redis_url = args.redis_url or os.environ.get("MEDSERVE_REDIS_URL") or None
    limiter = (SharedLimiter(redis_url, args.rate_limit_per_minute, replicas=args.rate_limit_replicas,
                             window_s=args.rate_limit_window_s) if args.rate_limit_per_minute > 0 else None)
    auth_failures = (FailedAuthLimiter(redis_url, args.auth_failures_per_minute, replicas=args.rate_limit_replicas)
                     if keys is not None and args.auth_failures_per_minute > 0 else None)

    metrics = RuntimeMetrics(args.model_name, min_cohort=args.metrics_min_cohort)
    metrics_token = _read_token(args.metrics_token_file)
    stats = VersionStats()
    predictions = PredictionLog(args.prediction_memory)
    arrivals = Arrivals()
    source = args.model_uri or str(args.model_dir)
    cache = None
    if redis_url is not None and args.prediction_cache_ttl_s > 0:
        from medserve_runtime.predcache import PredictionCache

        cache = PredictionCache(redis_url, args.model_name, ttl_s=args.prediction_cache_ttl_s,
                                on_lookup=metrics.observe_cache)
    model = ClinicalModel(args.model_name, source, device=args.device, optimization=args.optimization,
                          max_batch_size=args.max_batch_size, max_latency_ms=args.max_latency_ms,
                          metrics=metrics, stats=stats, predictions=predictions, arrivals=arrivals,
                          cache=cache, fetch_timeout_s=args.startup_timeout_s)
    peers = None
    if args.peer or args.peer_url_template:
        peers = Peers(args.model_name, peers=parse_peers(args.peer), url_template=args.peer_url_template,
                      timeout_s=args.peer_timeout_s)
        model.id_prefix = peers.id_prefix
    limits = limits_from_args(args)
    loader.bound_registry_calls(args.registry_timeout_s)
    cpus = loader.cpu_limit()
    loader.set_torch_threads(cpus)
    audit: AuditTrail | None = None
    stop_reports: threading.Event | None = None
    try:
        load_within(model.load, args.startup_timeout_s, redact_secrets(source))
        audit = open_audit(args, model.version)
        if auth_failures is not None:
            stop_reports = report_auth_failures(auth_failures, audit)
        app = kserve.model_server.app
        trail = audit

        def dependencies() -> tuple[bool, dict[str, Any]]:
            details: dict[str, Any] = {"audit": trail.health()}
            if limiter is not None:
                details["rate_limit"] = limiter.health()
            return trail.writable(), details

        metrics.watch(audit_writable=trail.writable,
                      rate_limit_degraded=lambda: limiter is not None and limiter.health()["degraded"])
        api = ClinicalApi(model, hasher=hasher, metrics=metrics, stats=stats, predictions=predictions,
                          dependencies=dependencies, metrics_token=metrics_token, peers=peers)
        routes.register(app, api)
        add_exception_handlers(app)
        app.add_middleware(FastPath, api=api, handlers_of=lambda: app.exception_handlers)  # innermost
        app.add_middleware(Deadline, seconds=limits.request_deadline_s)  # inside the gate: it audits the 503
        app.add_middleware(Gate, keys=keys, limiter=limiter, audit=audit, metrics=metrics, stats=stats,
                           max_request_bytes=args.max_request_bytes, ready=lambda: bool(model.ready),
                           version=lambda: model.version or "", arrivals=arrivals, auth_failures=auth_failures)
        # Outside the gate: a clinical body at the router's path gets the clinical route's policy.
        app.add_middleware(GraphPaths, model_name=args.model_name, version=lambda: model.version,
                           max_request_bytes=args.max_request_bytes)
        app.add_middleware(AccessLog)
        logger.info("serving %s on port %d (max batch %d, max latency %g ms, rate limit %s/min, audit %s, "
                    "%d torch threads)", args.model_name, args.http_port, args.max_batch_size, args.max_latency_ms,
                    args.rate_limit_per_minute or "unlimited", audit.health()["destination"], cpus)
        server = RuntimeServer(http_port=args.http_port, enable_docs_url=args.enable_docs_url,
                               event_loop=args.event_loop, limits=limits)
        model.repository = server.registered_models
        tune_gc()
        server.start([model])
    finally:
        if stop_reports is not None:
            stop_reports.set()
        if audit is not None:
            audit.close()
    logger.info("stopped (pid %d)", os.getpid())
    return 0
