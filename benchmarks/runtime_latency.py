"""Model runtime latency and throughput: medserve-runtime against a plain KServe server, same torch model.

Both servers run as real processes on loopback, side by side, serving the same TorchScript file:
  (a) baseline: `kserve.ModelServer` with the minimal `kserve.Model` below (V1 predict, forward on the
      event loop, already encoded features in, probabilities out: nothing but the model);
  (b) medserve-runtime with API keys, the audit log, metrics and validation on (POST /predict with a
      clinical_data body: auth, rate limit, pydantic and feature-spec validation, encoding, the
      micro-batcher, metrics, an audit record, the full clinical response);
plus the raw in-process forward time of one record, the floor under both.

Latency: sequential requests (concurrency 1), p50 and p99. Throughput: `--concurrency` clients
(default 32) for a fixed number of requests. Measurement rounds alternate between the two servers,
so that a busy neighbour on a shared machine slows both alike.

The model is the example triage network (examples/training/train.py) or, with `--hidden 512,512`, a
wider network with the same inputs and outputs (random weights: only the arithmetic matters here);
batching pays off in proportion to the forward's share of a request's cost.

    python benchmarks/runtime_latency.py --json
    python benchmarks/runtime_latency.py --hidden 1024,1024 --requests 3000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TRAINING = REPO / "examples" / "training"
API_KEY = "msk_benchmark_key_3c1d"


# --- (a) the baseline server ---------------------------------------------------------------------

def serve_plain(model_dir: Path, port: int) -> None:
    """A minimal KServe custom model: load the TorchScript file, run it on V1 instances."""
    import kserve
    import torch

    class PlainModel(kserve.Model):  # type: ignore[misc]
        def load(self) -> bool:
            self.module = torch.jit.load(str(model_dir / "model.pt")).eval()  # type: ignore[no-untyped-call]
            self.ready = True
            return True

        def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
            with torch.no_grad():
                probs = torch.softmax(self.module(torch.tensor(payload["instances"], dtype=torch.float32)), 1)
            return {"predictions": probs.tolist()}

    model = PlainModel("triage")
    model.load()
    kserve.ModelServer(http_port=port, enable_grpc=False, workers=1).start([model])


# --- the benchmark -------------------------------------------------------------------------------

def prepare_model(out: Path, hidden: list[int] | None) -> Path:
    """Train the example model into `out`; with `hidden`, replace its network by a wider one."""
    subprocess.run([sys.executable, str(TRAINING / "train.py"), "--output-dir", str(out), "--epochs", "5"],
                   check=True, capture_output=True)
    if hidden:
        sys.path.insert(0, str(TRAINING))
        import torch
        import trainlib  # type: ignore[import-not-found]  # examples/training, put on sys.path above
        from medserve_contract.modelspec import load_feature_spec, load_reference_profile

        spec = load_feature_spec(out)
        torch.manual_seed(0)
        trainlib.export(trainlib.MLP(spec.input_dim, len(spec.labels), hidden), spec,
                        load_reference_profile(out), out)
    return out


def raw_forward_ms(model_dir: Path, row: list[float], *, calls: int = 2000) -> float:
    import torch

    module = torch.jit.load(str(model_dir / "model.pt")).eval()  # type: ignore[no-untyped-call]
    x = torch.tensor([row], dtype=torch.float32)
    times = []
    with torch.no_grad():
        for _ in range(200):
            module(x)
        for _ in range(calls):
            started = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def free_port() -> int:
    from medserve_sandbox.procs import free_port as pick

    return pick()


@contextlib.contextmanager
def server(cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    from medserve_sandbox import procs

    proc = procs.spawn(cmd, log_path=log, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_until(lambda: procs.http_ok(f"{url}/v2/health/ready"), proc=proc, log_path=log,
                         what=" ".join(cmd[:3]), timeout=120)
        yield url
    finally:
        procs.stop(proc)


async def _latencies(url: str, body: bytes, headers: dict[str, str], n: int) -> list[float]:
    import aiohttp

    out = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(n):
            started = time.perf_counter()
            async with session.post(url, data=body) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url} answered {r.status}: {await r.text()}")
            out.append(time.perf_counter() - started)
    return out


async def _throughput(url: str, body: bytes, headers: dict[str, str], n: int, concurrency: int) -> float:
    import aiohttp

    remaining = n

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            async with session.post(url, data=body) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url} answered {r.status}: {await r.text()}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return n / (time.perf_counter() - started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(TRAINING))
    with tempfile.TemporaryDirectory(prefix="medserve-bench-") as tmp:
        return measure(args, Path(tmp))


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import train  # type: ignore[import-not-found]  # examples/training, on sys.path

    model_dir = args.model_dir or prepare_model(work / "model", args.hidden)
    from medserve_contract.modelspec import load_feature_spec

    spec = load_feature_spec(model_dir)
    record = train.generate(1, seed=3)[0][0]
    row = [float(v) for v in spec.encode(record)]
    plain_body = json.dumps({"instances": [row]}).encode()
    clinical_body = json.dumps({"patient_id": "MRN-20240611", "clinical_data": record}).encode()
    keys = work / "keys.json"
    keys.write_text(json.dumps([{"id": "bench", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
                                 "permissions": ["predict"]}]))
    plain_port, runtime_port = free_port(), free_port()
    plain_cmd = [sys.executable, __file__, "--serve-plain", str(model_dir), "--port", str(plain_port)]
    runtime_cmd = [sys.executable, "-m", "medserve_runtime", "--model_name=triage",
                   f"--model_dir={model_dir}", f"--http_port={runtime_port}", f"--api_keys_file={keys}",
                   f"--audit_log={work / 'audit.jsonl'}",
                   f"--max_batch_size={args.max_batch_size}", f"--max_latency_ms={args.max_latency_ms}",
                   "--rate_limit_per_minute=100000000", f"--device={args.device}"]
    json_headers = {"content-type": "application/json"}
    with server(plain_cmd, plain_port, work / "plain.log") as plain_url, \
            server(runtime_cmd, runtime_port, work / "runtime.log",
                   env={"MEDSERVE_PHI_HASH_KEY": "benchmark"}) as runtime_url:
        targets = {
            "baseline": (f"{plain_url}/v1/models/triage:predict", plain_body, json_headers),
            "medserve": (f"{runtime_url}/predict", clinical_body,
                         {**json_headers, "authorization": f"Bearer {API_KEY}"}),
        }
        for url, body, headers in targets.values():  # warm up both
            asyncio.run(_latencies(url, body, headers, 200))
            asyncio.run(_throughput(url, body, headers, 500, args.concurrency))
        latencies: dict[str, list[float]] = {name: [] for name in targets}
        rates: dict[str, list[float]] = {name: [] for name in targets}
        per_round = max(1, args.requests // args.rounds)
        for _ in range(args.rounds):
            for name, (url, body, headers) in targets.items():
                latencies[name] += asyncio.run(_latencies(url, body, headers, per_round))
                rate = asyncio.run(_throughput(url, body, headers, per_round * 2, args.concurrency))
                rates[name].append(rate)
    raw = raw_forward_ms(model_dir, row)
    p50, p99 = percentile(latencies["medserve"], 0.5), percentile(latencies["medserve"], 0.99)
    base_p50, base_p99 = percentile(latencies["baseline"], 0.5), percentile(latencies["baseline"], 0.99)
    rps, base_rps = statistics.median(rates["medserve"]), statistics.median(rates["baseline"])
    return {
        "p50_ms": round(p50, 3), "p99_ms": round(p99, 3),
        "baseline_p50_ms": round(base_p50, 3), "baseline_p99_ms": round(base_p99, 3),
        "p50_ratio": round(p50 / base_p50, 3),
        "throughput_rps": round(rps, 1), "baseline_throughput_rps": round(base_rps, 1),
        "throughput_ratio": round(rps / base_rps, 3),
        "raw_forward_ms": round(raw, 4),
        "requests_per_server": per_round * args.rounds, "concurrency": args.concurrency,
        "rounds": args.rounds,
        "model": {"hidden": args.hidden or [64, 32], "input_dim": spec.input_dim,
                  "classes": len(spec.labels)},
        "max_batch_size": args.max_batch_size, "max_latency_ms": args.max_latency_ms, "device": args.device,
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--requests", type=int, default=2000, help="requests per server (default 2000)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4, help="alternating measurement rounds")
    p.add_argument("--hidden", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="hidden layer widths of a wider network (default: the example model's 64,32)")
    p.add_argument("--model-dir", type=Path, default=None, help="serve this model directory instead")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-latency-ms", type=float, default=2.0)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--serve-plain", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_plain is not None:
        sys.argv = sys.argv[:1]  # kserve.model_server parses sys.argv on import
        serve_plain(args.serve_plain, args.port)
        return 0
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"raw forward (1 record, in process): {result['raw_forward_ms']:.3f} ms")
        print(f"latency p50/p99 at concurrency 1: medserve {result['p50_ms']:.2f}/{result['p99_ms']:.2f} ms, "
              f"plain KServe {result['baseline_p50_ms']:.2f}/{result['baseline_p99_ms']:.2f} ms "
              f"(ratio {result['p50_ratio']:.2f}, goal <= 1.3)")
        print(f"throughput at concurrency {args.concurrency}: medserve {result['throughput_rps']:.0f} rps, "
              f"plain KServe {result['baseline_throughput_rps']:.0f} rps "
              f"(ratio {result['throughput_ratio']:.2f}, goal >= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
