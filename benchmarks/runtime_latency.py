"""Model runtime latency and throughput under `wrk`: medserve-runtime, plain KServe and a bare ASGI server.

Three servers run as real processes on loopback, serving the same TorchScript file, each pinned with
`taskset` to the server core while `wrk` (Debian's `wrk`, one thread) is pinned to the client core, so
the load generator never competes with the server it measures:
  (a) plain KServe: `kserve.ModelServer` with the minimal `kserve.Model` below (V1 predict, encoded
      features in, probabilities out: nothing but the model);
  (b) medserve-runtime with every safeguard on: API keys, a rate limit, the fsynced audit log, metrics
      and validation (POST /predict with a clinical_data body, the full clinical response);
  (c) the ceiling: a bare ASGI application on uvicorn (httptools, uvloop) that parses the same V1 body
      with orjson and runs the same forward on the event loop;
plus the raw in-process forward time of one record, the floor under all three.

Per server: rps and p50/p99 at concurrency 1 and at `--concurrency` (default 32), `--duration`
seconds each (wrk's own latency histogram, read in a Lua `done` hook). The servers are measured in
alternating rounds (a, b, c, a, b, c, ...), `--repeats` times (default 3), so a busy neighbour on a
shared machine slows all alike; figures are medians over the repeats with their spread, and the
ratios are medians of the per-round ratios (the same round's neighbours). The load average is printed
with each run: on a shared machine, trust the ratios, not the absolute figures.

`--batching` adds medserve with `--max_batch_size 1` to the rounds: micro-batching's gain is the
batched over the unbatched throughput at `--concurrency` (meaningful with a wide network, `--hidden
1024,1024`; random weights: only the arithmetic matters). `--profile` runs medserve alone under
py-spy (`--py-spy PATH`, from PyPI) while wrk loads it and prints the top frames grouped by component.

    python benchmarks/runtime_latency.py --json
    python benchmarks/runtime_latency.py --hidden 1024,1024 --batching
    python benchmarks/runtime_latency.py --profile --py-spy /path/to/py-spy
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import re
import shutil
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
RESULT_LINE = re.compile(r"^WRK_RESULT (\{.*\})$", re.MULTILINE)


# --- (a) plain KServe and (c) the bare ASGI ceiling ----------------------------------------------

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


def serve_bare(model_dir: Path, port: int) -> None:
    """The ceiling: raw ASGI on uvicorn, the V1 body parsed with orjson, the forward on the event loop."""
    import orjson
    import torch
    import uvicorn

    module = torch.jit.load(str(model_dir / "model.pt")).eval()  # type: ignore[no-untyped-call]
    json_headers = [(b"content-type", b"application/json")]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            await send({"type": "http.response.start", "status": 200, "headers": json_headers})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        with torch.no_grad():
            x = torch.tensor(orjson.loads(body)["instances"], dtype=torch.float32)
            probs = torch.softmax(module(x), 1).tolist()
        out = orjson.dumps({"predictions": probs})
        await send({"type": "http.response.start", "status": 200, "headers": json_headers})
        await send({"type": "http.response.body", "body": out})

    uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", loop="uvloop", access_log=False,
                log_level="warning")


# --- the model -----------------------------------------------------------------------------------

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


# --- processes and wrk ---------------------------------------------------------------------------

def free_port() -> int:
    from medserve_sandbox.procs import free_port as pick

    return pick()


def cores() -> tuple[str, str]:
    """(client core, server core): the first two CPUs this process may run on."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise SystemExit("runtime_latency: needs two CPUs (one for wrk, one for the server)")
    return str(allowed[0]), str(allowed[1])


@contextlib.contextmanager
def server(cmd: list[str], port: int, log: Path, *, core: str,
           env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    from medserve_sandbox import procs

    proc = procs.spawn(["taskset", "-c", core, *cmd], log_path=log, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_until(lambda: procs.http_ok(f"{url}/v2/health/ready"), proc=proc, log_path=log,
                         what=" ".join(cmd[:4]), timeout=180)
        yield url, proc.pid
    finally:
        procs.stop(proc)


def lua_script(path: Path, body: bytes, headers: dict[str, str]) -> Path:
    """A wrk script: POST `body` with `headers`; `done` prints the figures as one JSON line."""
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body.decode()}]==]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    lines.append("""done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_RESULT {"requests": %d, "duration_us": %d, "socket_errors": %d, ' ..
    '"non2xx": %d, "p50_us": %d, "p99_us": %d}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(99)))
end""")
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk(url: str, script: Path, *, connections: int, seconds: float, core: str) -> dict[str, float]:
    cmd = ["taskset", "-c", core, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
           "-s", str(script), url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    found = RESULT_LINE.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-800:]} {done.stderr[-800:]}")
    r = json.loads(found.group(1))
    if r["non2xx"] or r["socket_errors"]:
        raise RuntimeError(f"{url}: {r['non2xx']} non-2xx answers and {r['socket_errors']} socket errors "
                           f"in {r['requests']} requests")
    return {"rps": r["requests"] / (r["duration_us"] / 1e6), "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000, "requests": r["requests"]}


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


# --- the measurement -----------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("runtime_latency: `wrk` is not installed (Debian: apt-get install wrk; "
                         "`make setup` installs it as root)")
    sys.path.insert(0, str(TRAINING))
    with tempfile.TemporaryDirectory(prefix="medserve-bench-") as tmp:
        return measure(args, Path(tmp))


def _targets(args: argparse.Namespace, model_dir: Path, work: Path) -> dict[str, dict[str, Any]]:
    """name -> the server's command, its path, body and headers."""
    import train  # type: ignore[import-not-found]  # examples/training, on sys.path
    from medserve_contract.modelspec import load_feature_spec

    spec = load_feature_spec(model_dir)
    record = train.generate(1, seed=3)[0][0]
    row = [float(v) for v in spec.encode(record)]
    v1_body = json.dumps({"instances": [row]}).encode()
    clinical_body = json.dumps({"patient_id": "MRN-20240611", "clinical_data": record}).encode()
    keys = work / "keys.json"
    keys.write_text(json.dumps([{"id": "bench", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
                                 "permissions": ["predict"]}]))
    me = [sys.executable, str(Path(__file__).resolve())]
    json_headers = {"Content-Type": "application/json"}

    def runtime(name: str, batch: int) -> dict[str, Any]:
        port = free_port()
        return {"port": port, "path": "/predict", "body": clinical_body,
                "headers": {**json_headers, "Authorization": f"Bearer {API_KEY}"},
                "cmd": [sys.executable, "-m", "medserve_runtime", "--model_name=triage", f"--model_dir={model_dir}",
                        f"--http_port={port}", f"--api_keys_file={keys}",
                        f"--audit_log={(args.audit_dir or work) / name}.jsonl",
                        f"--max_batch_size={batch}", f"--max_latency_ms={args.max_latency_ms}",
                        "--rate_limit_per_minute=100000000", f"--device={args.device}"],
                "env": {"MEDSERVE_PHI_HASH_KEY": "benchmark", "MEDSERVE_AUDIT_KEY": "benchmark"}}

    plain_port, bare_port = free_port(), free_port()
    targets: dict[str, dict[str, Any]] = {
        "plain_kserve": {"port": plain_port, "path": "/v1/models/triage:predict", "body": v1_body,
                         "headers": json_headers, "env": {},
                         "cmd": [*me, "--serve-plain", str(model_dir), "--port", str(plain_port)]},
        "medserve": runtime("medserve", args.max_batch_size),
        "bare_asgi": {"port": bare_port, "path": "/", "body": v1_body, "headers": json_headers, "env": {},
                      "cmd": [*me, "--serve-bare", str(model_dir), "--port", str(bare_port)]},
    }
    if args.batching:
        targets["medserve_unbatched"] = runtime("medserve-unbatched", 1)
    targets["_row"] = {"row": row, "input_dim": spec.input_dim, "classes": len(spec.labels)}
    return targets


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model_dir = args.model_dir or prepare_model(work / "model", args.hidden)
    targets = _targets(args, model_dir, work)
    meta = targets.pop("_row")
    client_core, server_core = cores()
    loads = [load_average()]
    levels = (1, args.concurrency)
    runs: dict[str, dict[int, list[dict[str, float]]]] = {name: {c: [] for c in levels} for name in targets}
    with contextlib.ExitStack() as stack:
        urls = {}
        for name, t in targets.items():
            url, _ = stack.enter_context(server(t["cmd"], t["port"], work / f"{name}.log", core=server_core,
                                                env=t["env"]))
            urls[name] = url + t["path"]
            t["script"] = lua_script(work / f"{name}.lua", t["body"], t["headers"])
        for name, t in targets.items():  # warm up: TorchScript's profiling runs, connection setup
            wrk(urls[name], t["script"], connections=args.concurrency, seconds=2, core=client_core)
        for _ in range(args.repeats):
            for name, t in targets.items():
                for c in levels:
                    runs[name][c].append(wrk(urls[name], t["script"], connections=c, seconds=args.duration,
                                             core=client_core))
            loads.append(load_average())
    return summarize(args, runs, loads, raw_forward_ms(model_dir, meta["row"]), meta)


def summarize(args: argparse.Namespace, runs: dict[str, dict[int, list[dict[str, float]]]], loads: list[str],
              raw_ms: float, meta: dict[str, Any]) -> dict[str, Any]:
    c = args.concurrency

    def figures(name: str) -> dict[str, Any]:
        one, many = runs[name][1], runs[name][c]
        out: dict[str, Any] = {}
        for key, series, pick in (("p50_ms", one, "p50_ms"), ("p99_ms", many, "p99_ms"),
                                  ("throughput_rps", many, "rps"), ("p50_ms_at_c", many, "p50_ms"),
                                  ("p99_ms_at_1", one, "p99_ms"), ("rps_at_1", one, "rps")):
            values = [r[pick] for r in series]
            out[key] = round(statistics.median(values), 3)
            out[key + "_spread"] = [round(min(values), 3), round(max(values), 3)]
        return out

    def ratio(name: str, base: str, level: int, key: str) -> tuple[float, list[float]]:
        per_round = [a[key] / b[key] for a, b in zip(runs[name][level], runs[base][level], strict=True)]
        return round(statistics.median(per_round), 3), [round(min(per_round), 3), round(max(per_round), 3)]

    servers = {name: figures(name) for name in runs}
    med = servers["medserve"]
    result: dict[str, Any] = {
        "p50_ms": med["p50_ms"], "p99_ms": med["p99_ms"], "throughput_rps": med["throughput_rps"],
        "raw_forward_ms": round(raw_ms, 4),
    }
    for key, base, level, pick in (("throughput_ratio", "plain_kserve", c, "rps"),
                                   ("p50_ratio", "plain_kserve", 1, "p50_ms"),
                                   ("p99_ratio", "plain_kserve", c, "p99_ms"),
                                   ("ceiling_ratio", "bare_asgi", c, "rps")):
        result[key], result[key + "_spread"] = ratio("medserve", base, level, pick)
    if "medserve_unbatched" in runs:
        result["batching_gain"], result["batching_gain_spread"] = ratio("medserve", "medserve_unbatched", c,
                                                                        "rps")
    result["goals"] = {"throughput_ratio >= 2.0": result["throughput_ratio"] >= 2.0,
                       "p50_ratio <= 1.0": result["p50_ratio"] <= 1.0,
                       "p99_ratio <= 1.5": result["p99_ratio"] <= 1.5,
                       "ceiling_ratio >= 0.5": result["ceiling_ratio"] >= 0.5}
    if "batching_gain" in result:
        result["goals"]["batching_gain >= 1.5"] = result["batching_gain"] >= 1.5
    result.update({
        "servers": servers, "concurrency": c, "repeats": args.repeats, "duration_s": args.duration,
        "load_average": loads, "cpus": os.cpu_count(), "device": args.device,
        "model": {"hidden": args.hidden or [64, 32], "input_dim": meta["input_dim"], "classes": meta["classes"]},
        "max_batch_size": args.max_batch_size, "max_latency_ms": args.max_latency_ms,
        "audit_dir": str(args.audit_dir) if args.audit_dir else "temporary directory (disk)",
    })
    return result


# --- the profile ---------------------------------------------------------------------------------

COMPONENTS: tuple[tuple[str, str], ...] = (
    ("torch", "forward (torch)"), ("medserve_runtime/batching", "micro-batcher"),
    ("medserve_runtime/gate", "gate (auth, limits)"), ("medserve_runtime/ratelimit", "rate limit"),
    ("medserve_runtime/security", "gate (auth, limits)"), ("medserve_runtime/groupcommit", "audit"),
    ("medserve_runtime/audit", "audit"), ("medserve_runtime/journal", "audit"),
    ("medserve_runtime/metrics", "metrics"), ("prometheus_client", "metrics"),
    ("medserve_runtime/accesslog", "access log"), ("logging/", "logging"),
    ("pydantic", "validation"), ("medserve_contract", "validation and encoding"),
    ("medserve_runtime/api", "clinical handlers"), ("medserve_runtime/insights", "clinical handlers"),
    ("medserve_runtime/model", "model (classify)"), ("medserve_runtime", "runtime, other"),
    ("orjson", "json"), ("json/", "json"), ("fastapi", "fastapi/starlette"), ("starlette", "fastapi/starlette"),
    ("uvicorn", "uvicorn (http)"), ("httptools", "uvicorn (http)"), ("asyncio", "event loop"),
    ("uvloop", "event loop"), ("threading", "threads"), ("concurrent", "threads"), ("numpy", "numpy"),
)


def component(frame: str) -> str:
    for marker, name in COMPONENTS:
        if marker in frame:
            return name
    return "other"


def profile(args: argparse.Namespace) -> int:
    """medserve alone under py-spy while wrk loads it at --concurrency: top frames per component."""
    spy = args.py_spy or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("runtime_latency --profile: py-spy not found (pip install py-spy into a venv of its "
                         "own and give --py-spy PATH)")
    if shutil.which("wrk") is None:
        raise SystemExit("runtime_latency: `wrk` is not installed (Debian: apt-get install wrk)")
    sys.path.insert(0, str(TRAINING))
    client_core, server_core = cores()
    with tempfile.TemporaryDirectory(prefix="medserve-profile-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or prepare_model(work / "model", args.hidden)
        t = _targets(args, model_dir, work)["medserve"]
        script = lua_script(work / "medserve.lua", t["body"], t["headers"])
        with server(t["cmd"], t["port"], work / "medserve.log", core=server_core, env=t["env"]) as (url, pid):
            url += t["path"]
            wrk(url, script, connections=args.concurrency, seconds=2, core=client_core)
            out = work / "profile.txt"
            spy_proc = subprocess.Popen(["taskset", "-c", client_core, spy, "record", "--pid", str(pid),
                                         "--format", "raw", "--rate", "250", "--gil", "--output",
                                         str(out), "--duration", str(int(args.duration))],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            figures = wrk(url, script, connections=args.concurrency, seconds=args.duration, core=client_core)
            spy_proc.wait(timeout=args.duration + 60)
        stacks = [line.rsplit(" ", 1) for line in out.read_text().splitlines() if line.strip()]
    by_component: collections.Counter[str] = collections.Counter()
    by_frame: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    callers: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total = 0
    for stack, count in stacks:
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        leaf = frames[-1]
        by_component[component(leaf)] += n
        by_frame[leaf] += n
        callers[leaf][next((f for f in reversed(frames[:-1]) if component(f) != component(leaf)), "-")] += n
        for name in {component(f) for f in frames}:
            inclusive[name] += n
    print(f"medserve at c={args.concurrency}: {figures['rps']:.0f} rps, p50 {figures['p50_ms']:.2f} ms, "
          f"p99 {figures['p99_ms']:.2f} ms (under py-spy); load {load_average()}; {total} samples")
    print("\nsamples holding the GIL (py-spy --gil): self time by component (leaf frame), and inclusive "
          "(anywhere on the stack):")
    for name, n in by_component.most_common():
        print(f"  {100 * n / total:5.1f}%  incl {100 * inclusive[name] / total:5.1f}%  {name}")
    print("\ntop frames (self time):")
    for frame, n in by_frame.most_common(args.top):
        via = callers[frame].most_common(1)[0][0]
        print(f"  {100 * n / total:5.1f}%  [{component(frame)}] {frame}  <- {via}")
    return 0


# --- the command line ----------------------------------------------------------------------------

def _widths(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--concurrency", type=int, default=32, help="connections of the loaded runs (default 32)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--hidden", type=_widths, default=None,
                   help="hidden layer widths of a wider network (default: the example model's 64,32)")
    p.add_argument("--batching", action="store_true",
                   help="also measure medserve with --max_batch_size 1: micro-batching's gain")
    p.add_argument("--model-dir", type=Path, default=None, help="serve this model directory instead")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-latency-ms", type=float, default=2.0)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--audit-dir", type=Path, default=None,
                   help="where medserve's fsynced audit log goes (default: the run's temporary directory; "
                        "/dev/shm takes the disk's fsync latency out, to see the software's own cost)")
    p.add_argument("--profile", action="store_true", help="profile medserve under load with py-spy instead")
    p.add_argument("--py-spy", default=None, help="the py-spy executable (default: on PATH)")
    p.add_argument("--top", type=int, default=25, help="frames the profile lists")
    p.add_argument("--serve-plain", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--serve-bare", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_plain is not None:
        sys.argv = sys.argv[:1]  # kserve.model_server parses sys.argv on import
        serve_plain(args.serve_plain, args.port)
        return 0
    if args.serve_bare is not None:
        serve_bare(args.serve_bare, args.port)
        return 0
    if args.profile:
        return profile(args)
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return 0
    c = args.concurrency
    print(f"load average before/after each round: {', '.join(result['load_average'])}")
    print(f"raw forward (1 record, in process): {result['raw_forward_ms']:.3f} ms")
    print(f"{'server':<20} {'rps c=' + str(c):>16} {'p50 c=1 ms':>16} {'p99 c=' + str(c) + ' ms':>18}")
    for name, s in result["servers"].items():
        print(f"{name:<20} {s['throughput_rps']:>8.0f} ({s['throughput_rps_spread'][0]:.0f}-"
              f"{s['throughput_rps_spread'][1]:.0f}) {s['p50_ms']:>6.3f} ({s['p50_ms_spread'][0]:.2f}-"
              f"{s['p50_ms_spread'][1]:.2f}) {s['p99_ms']:>7.2f} ({s['p99_ms_spread'][0]:.1f}-"
              f"{s['p99_ms_spread'][1]:.1f})")
    for key, goal in (("throughput_ratio", ">= 2.0"), ("p50_ratio", "<= 1.0"), ("p99_ratio", "<= 1.5"),
                      ("ceiling_ratio", ">= 0.5"), ("batching_gain", ">= 1.5")):
        if key in result:
            lo, hi = result[key + "_spread"]
            print(f"{key}: {result[key]:.2f} (rounds {lo:.2f}-{hi:.2f}; goal {goal})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
