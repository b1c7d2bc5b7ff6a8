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
import logging
import os
import sys
import threading
from pathlib import Path

import kserve
import kserve.logging
import kserve.model_server

from medserve_runtime import loader, routes
from medserve_runtime.accesslog import AccessLog, Deadline, quiet_third_party_loggers
from medserve_runtime.api import ClinicalApi
from medserve_runtime.audit import AuditLog
from medserve_runtime.batching import Arrivals
from medserve_runtime.errors import add_exception_handlers
from medserve_runtime.gate import Gate
from medserve_runtime.metrics import RuntimeMetrics
from medserve_runtime.model import ClinicalModel
from medserve_runtime.phi import PhiHasher, PhiScrubFilter, redact_secrets
from medserve_runtime.security import KeyStore, RateLimiter
from medserve_runtime.serving import RuntimeServer, limits_from_args, load_within
from medserve_runtime.stats import PredictionLog, VersionStats

logger = logging.getLogger("medserve_runtime")

KEYS_POLL_SECONDS = 10.0


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
    limiter = RateLimiter(args.rate_limit_per_minute) if args.rate_limit_per_minute > 0 else None
    audit = AuditLog(args.audit_log)
    if args.audit_log is None:
        logger.warning("audit log disabled (no --audit_log)")

    metrics = RuntimeMetrics(args.model_name, min_cohort=args.metrics_min_cohort)
    metrics_token = _read_token(args.metrics_token_file)
    stats = VersionStats()
    predictions = PredictionLog(args.prediction_memory)
    arrivals = Arrivals()
    source = args.model_uri or str(args.model_dir)
    model = ClinicalModel(args.model_name, source, device=args.device, optimization=args.optimization,
                          max_batch_size=args.max_batch_size, max_latency_ms=args.max_latency_ms,
                          metrics=metrics, stats=stats, predictions=predictions, arrivals=arrivals)
    limits = limits_from_args(args)
    loader.bound_registry_calls(args.registry_timeout_s)
    try:
        load_within(model.load, args.startup_timeout_s, redact_secrets(source))
        app = kserve.model_server.app
        routes.register(app, ClinicalApi(model, hasher=hasher, metrics=metrics, stats=stats,
                                         predictions=predictions, metrics_token=metrics_token))
        add_exception_handlers(app)
        app.add_middleware(Deadline, seconds=limits.request_deadline_s)  # inside the gate: it audits the 503
        app.add_middleware(Gate, keys=keys, limiter=limiter, audit=audit, metrics=metrics, stats=stats,
                           max_request_bytes=args.max_request_bytes, ready=lambda: bool(model.ready),
                           version=lambda: model.version or "", arrivals=arrivals)
        app.add_middleware(AccessLog)
        logger.info("serving %s on port %d (max batch %d, max latency %g ms, rate limit %s/min, audit %s)",
                    args.model_name, args.http_port, args.max_batch_size, args.max_latency_ms,
                    args.rate_limit_per_minute or "unlimited", args.audit_log or "off")
        server = RuntimeServer(http_port=args.http_port, enable_docs_url=args.enable_docs_url,
                               event_loop=args.event_loop, limits=limits)
        model.repository = server.registered_models
        server.start([model])
    finally:
        audit.close()
    logger.info("stopped (pid %d)", os.getpid())
    return 0
