"""`medserve-runtime` / `python -m medserve_runtime`: the KServe custom model server for clinical models.

The command line extends KServe's own (`kserve.model_server.parser`, so --http_port, --model_name,
--protocol, --workers, ... mean what they mean for every KServe server) with where the model comes
from and the runtime's serving, security and audit settings, as the medserve operator renders them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from medserve_runtime.loader import DEVICES, OPTIMIZATIONS
from medserve_runtime.stats import DEFAULT_CAPACITY


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _http_implementation(text: str) -> str:
    if text != "httptools":
        raise argparse.ArgumentTypeError(
            f"{text!r} is not served: the header size and count limits (431), the header and body read "
            "timeouts, the idle keep-alive timeout and the connection cap are enforced in the httptools "
            "protocol (serving.LimitedHttpProtocol); h11 would serve without them")
    return text


def build_parser() -> argparse.ArgumentParser:
    import kserve.model_server  # parses sys.argv when imported: main() takes --http out first

    p = argparse.ArgumentParser(prog="medserve-runtime", parents=[kserve.model_server.parser],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Serve a clinical torch model: KServe V1/V2, the clinical API.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_uri", help="MLflow registry URI models:/NAME/VERSION or models:/NAME@ALIAS "
                                            "(the tracking server is $MLFLOW_TRACKING_URI)")
    source.add_argument("--model_dir", type=Path,
                        help="local directory with model.pt, feature_spec.json, reference_profile.json")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where the forward pass runs")
    p.add_argument("--optimization", choices=OPTIMIZATIONS, default="none",
                   help="dynamic-int8: int8 Linear weights, activations quantized on the fly (CPU)")
    p.add_argument("--max_batch_size", type=_positive_int, default=16, help="most rows per forward pass")
    p.add_argument("--max_latency_ms", type=_non_negative_float, default=5.0,
                   help="longest a batch waits for requests already on their way")
    p.add_argument("--rate_limit_per_minute", type=_non_negative_int, default=0,
                   help="requests per minute per API key (0: unlimited)")
    p.add_argument("--max_request_bytes", type=_positive_int, default=1 << 20,
                   help="largest request body (413)")
    p.add_argument("--api_keys_file", type=Path, default=None,
                   help="JSON list of {id, sha256, permissions}; without it authentication is DISABLED")
    audit = p.add_mutually_exclusive_group()
    audit.add_argument("--audit_log", type=Path, default=None,
                       help="append-only JSON-lines audit log, fsynced before each answer")
    audit.add_argument("--audit_dsn", default=None,
                       help="PostgreSQL URL for the audit trail (no password here: $PGPASSWORD, or --audit_dsn_file)")
    audit.add_argument("--audit_dsn_file", type=Path, default=None,
                       help="file holding the PostgreSQL URL, password included (a mounted Secret)")
    p.add_argument("--audit_spool", type=Path, default=None,
                   help="with --audit_dsn*: where records wait, fsynced, while PostgreSQL is unreachable "
                        "(a persistent volume); without it requests get 503 then")
    p.add_argument("--audit_key_file", type=Path, default=None,
                   help="HMAC key of the audit chain (else $MEDSERVE_AUDIT_KEY[_FILE]; unset: unkeyed, warned)")
    p.add_argument("--redis_url", default=None,
                   help="Redis shared by the replicas for rate limits (else $MEDSERVE_REDIS_URL; unset: local)")
    p.add_argument("--rate_limit_replicas", type=_positive_int, default=1,
                   help="replicas sharing the limit: without Redis each allows its share of it")
    p.add_argument("--rate_limit_window_s", type=_positive_float, default=60.0,
                   help="the sliding window the per-minute limit is granted over (its share of it)")
    p.add_argument("--prediction_cache_ttl_s", type=_non_negative_float, default=0.0,
                   help="with --redis_url: cache predictions by model version and encoded features for this "
                        "long (0: off)")
    p.add_argument("--auth_failures_per_minute", type=_non_negative_int, default=30,
                   help="failed authentications per client address before 429 (0: unlimited)")
    p.add_argument("--phi_hash_key_file", type=Path, default=None,
                   help="key for hashing patient ids (else $MEDSERVE_PHI_HASH_KEY[_FILE], else random)")
    p.add_argument("--prediction_memory", type=_positive_int, default=DEFAULT_CAPACITY,
                   help="how many recent predictions /feedback can refer to")
    p.add_argument("--metrics_min_cohort", type=_positive_int, default=10,
                   help="per-record metrics (features, class, confidence) are published in cohorts of this many "
                        "records, so that no scrape difference shows one patient")
    p.add_argument("--metrics_token_file", type=Path, default=None,
                   help="file holding a token GET /metrics then requires as `Authorization: Bearer` (else open)")
    arms = p.add_argument_group("A/B test arms behind KServe's InferenceGraph router (arms.py)")
    arms.add_argument("--peer", action="append", default=[], metavar="NAME=URL",
                      help="another arm (its --model_name) and its base URL; feedback for its predictions is "
                           "forwarded there (repeatable)")
    arms.add_argument("--peer_url_template", default=os.environ.get("MEDSERVE_PEER_URL_TEMPLATE") or None,
                      help="the base URL of any other arm, {arm} standing for its name (e.g. KServe's "
                           "http://{arm}-predictor.NAMESPACE.svc.cluster.local)")
    arms.add_argument("--peer_timeout_s", type=_positive_float, default=5.0,
                      help="longest a forwarded feedback request may take (503 after)")
    limits = p.add_argument_group("server limits (slow, idle and oversized clients; outages)")
    limits.add_argument("--max_header_bytes", type=_positive_int, default=16 * 1024,
                        help="request line plus headers (431 beyond)")
    limits.add_argument("--max_headers", type=_positive_int, default=100, help="header fields (431 beyond)")
    limits.add_argument("--header_timeout_s", type=_positive_float, default=10.0,
                        help="from connection (or previous response) to the end of the headers (408)")
    limits.add_argument("--body_timeout_s", type=_positive_float, default=30.0,
                        help="from the end of the headers to the end of the body (408)")
    limits.add_argument("--max_connections", type=_positive_int, default=1024,
                        help="open connections at once (503 beyond)")
    limits.add_argument("--request_deadline_s", type=_positive_float, default=30.0,
                        help="longest a request may run in the server (503 after)")
    limits.add_argument("--forwarded_allow_ips", default="",
                        help="comma-separated proxy addresses whose X-Forwarded-For is believed (default: none)")
    limits.add_argument("--registry_timeout_s", type=_positive_float, default=10.0,
                        help="per MLflow registry call (connect and read), retried at most once")
    limits.add_argument("--startup_timeout_s", type=_positive_float, default=60.0,
                        help="give up loading the first model version after this (exit 2); also the longest a "
                             "reload's registry download may take (then it is killed)")
    p.set_defaults(enable_grpc=False)
    return p


def _take_http(argv: list[str]) -> list[str]:
    """`argv` without uvicorn's `--http IMPL` / `--http=IMPL`, which only httptools may be (the limits are
    enforced in its protocol). KServe's own parser would read `--http` as an abbreviation of --http_port."""
    out: list[str] = []
    rest = iter(argv)
    for arg in rest:
        if arg == "--http" or arg.startswith("--http="):
            value = arg.partition("=")[2] if "=" in arg else next(rest, "")
            try:
                _http_implementation(value)
            except argparse.ArgumentTypeError as exc:
                sys.stderr.write(f"medserve-runtime: error: argument --http: {exc}\n")
                raise SystemExit(2) from None
            continue
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _take_http(sys.argv[1:] if argv is None else argv)
    sys.argv = sys.argv[:1] + argv  # what kserve.model_server reads on import
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers != 1:
        parser.error("--workers must be 1: batching and statistics live in the process (scale with replicas)")
    if args.audit_spool is not None and args.audit_dsn is None and args.audit_dsn_file is None:
        parser.error("--audit_spool is the PostgreSQL audit trail's; give --audit_dsn or --audit_dsn_file")
    if args.prediction_cache_ttl_s > 0 and not (args.redis_url or os.environ.get("MEDSERVE_REDIS_URL")):
        parser.error("--prediction_cache_ttl_s needs Redis: give --redis_url (or $MEDSERVE_REDIS_URL)")
    if args.enable_grpc:
        parser.error("--enable_grpc: gRPC is not served here (it would bypass API keys and the audit log)")
    try:
        import httptools  # noqa: F401 - the limits live in its protocol; uvicorn would fall back to h11
    except ImportError:
        parser.error("httptools is not installed: the server's limits are enforced in its protocol and h11 "
                     "is not served (install uvicorn[standard])")
    # OpenMP's threads sleep when idle instead of spinning against the event loop; read by the OpenMP
    # runtime when torch loads it, so set before the import below (loader.cpu_limit sets the count).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Imported after parsing: --help and argument errors answer without loading torch.
    from medserve_runtime.loader import ModelLoadError
    from medserve_runtime.server import serve

    try:
        return serve(args)
    except (ModelLoadError, ValueError) as exc:
        # Bad keys file, unloadable model, unreachable registry: one clear line, no traceback.
        logging.getLogger("medserve_runtime").error("cannot start: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
