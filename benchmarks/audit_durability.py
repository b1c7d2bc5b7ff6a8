"""Audit durability under faults, and what it costs: medserve-runtime auditing into PostgreSQL vs a file.

Real processes on loopback: a PostgreSQL server (sandbox/postgres_server.py) and medserve-runtime, driven
by `--concurrency` clients sending POST /predict. In one run:
  1. baseline: the runtime with the file audit log (`--audit_log`, fsynced group commit): rps for
     `--seconds`;
  2. the same runtime with `--audit_dsn` (PostgreSQL, with a spool): rps for `--seconds`;
  3. fault load on that runtime: PostgreSQL is stopped for `--outage` seconds and started again while
     the clients go on; then the runtime is SIGKILLed mid-load and started again on the same spool;
  4. every prediction id a client got in a 2xx answer is looked up in the audit table, and
     `medserve audit verify --dsn` checks every chain.

Prints requests_ok (2xx answers, in 2 and 3), records_found (those with their record in PostgreSQL),
lost (the difference: must be 0), verify_ok, rps (2) and baseline_rps (1), and the 503s the runtime gave
while it could not make a record durable (none expected: the spool takes over).

    python benchmarks/audit_durability.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TRAINING = REPO / "examples" / "training"
API_KEY = "msk_benchmark_key_3c1d"
AUDIT_KEY = "benchmark-audit-key"


class Load:
    """Clients that POST /predict until stopped, keeping the prediction id of every 2xx answer."""

    def __init__(self, body: bytes, concurrency: int) -> None:
        self.body = body
        self.concurrency = concurrency
        self.ok_ids: list[str] = []
        self.statuses: dict[int, int] = {}
        self.url = ""

    async def run(self, seconds: float, *, during: Any = None) -> float:
        """Send for `seconds` (or until `during`, an awaitable fault script, is done); the 2xx rate."""
        import aiohttp

        stop = asyncio.Event()
        before = len(self.ok_ids)

        async def client(session: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                try:
                    async with session.post(self.url + "/predict", data=self.body) as r:
                        payload = await r.read()
                        self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
                        if 200 <= r.status < 300:
                            self.ok_ids.append(json.loads(payload)["prediction_id"])
                except (TimeoutError, aiohttp.ClientError, OSError):
                    self.statuses[0] = self.statuses.get(0, 0) + 1  # connection refused/reset (the kill)
                    await asyncio.sleep(0.05)

        headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(headers=headers, connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=30)) as session:
            started = time.perf_counter()
            clients = [asyncio.create_task(client(session)) for _ in range(self.concurrency)]
            if during is not None:
                await during
            else:
                await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*clients)
            return (len(self.ok_ids) - before) / (time.perf_counter() - started)


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from medserve_sandbox import procs
    from medserve_sandbox.postgres_server import PostgresServer

    model_dir = work / "model"
    subprocess.run([sys.executable, str(TRAINING / "train.py"), "--output-dir", str(model_dir), "--seed", "0",
                    "--epochs", "20"], check=True, capture_output=True, timeout=600)
    sys.path.insert(0, str(TRAINING))
    import train  # type: ignore[import-not-found]  # examples/training, on sys.path

    record = train.generate(1, seed=3)[0][0]
    body = json.dumps({"patient_id": "MRN-20240611", "clinical_data": record}).encode()
    keys = work / "keys.json"
    keys.write_text(json.dumps([{"id": "bench", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
                                 "permissions": ["predict"]}]))
    key_file = work / "audit.key"
    key_file.write_text(AUDIT_KEY)
    pg = PostgresServer(work / "pg").start()
    port = procs.free_port()
    base = [sys.executable, "-m", "medserve_runtime", "--model_name=triage", f"--model_dir={model_dir}",
            f"--http_port={port}", f"--api_keys_file={keys}", f"--audit_key_file={key_file}",
            f"--max_batch_size={args.max_batch_size}", "--max_latency_ms=2"]
    env = {**os.environ, "MEDSERVE_PHI_HASH_KEY": "benchmark", "MEDSERVE_AUDIT_DSN": pg.dsn}
    url = f"http://127.0.0.1:{port}"

    def start(cmd: list[str], log: str) -> subprocess.Popen[bytes]:
        proc = procs.spawn(cmd, log_path=work / log, env=env)
        procs.wait_until(lambda: procs.http_ok(f"{url}/v2/health/ready"), proc=proc, log_path=work / log,
                         what="medserve-runtime", timeout=180)
        return proc

    try:
        file_load = Load(body, args.concurrency)
        file_load.url = url
        proc = start([*base, f"--audit_log={work / 'audit.jsonl'}"], "runtime-file.log")
        asyncio.run(file_load.run(2.0))  # warm-up
        baseline_rps = asyncio.run(file_load.run(args.seconds))
        procs.stop(proc)

        dsn_file = work / "audit.dsn"  # as a mounted Secret: the password is never on a command line
        dsn_file.write_text(pg.dsn)
        pg_cmd = [*base, f"--audit_dsn_file={dsn_file}", f"--audit_spool={work / 'spool.jsonl'}"]
        proc = start(pg_cmd, "runtime-pg.log")
        load = Load(body, args.concurrency)
        load.url = url
        asyncio.run(load.run(2.0))
        rps = asyncio.run(load.run(args.seconds))

        async def outage_then_kill() -> None:
            nonlocal proc
            await asyncio.sleep(1.0)
            await asyncio.to_thread(pg.stop)
            await asyncio.sleep(args.outage)
            await asyncio.to_thread(pg.start)
            await asyncio.sleep(2.0)
            os.killpg(proc.pid, signal.SIGKILL)  # mid-load, as a node loss would
            proc.wait()
            proc = await asyncio.to_thread(start, pg_cmd, "runtime-pg-2.log")
            await asyncio.sleep(2.0)

        asyncio.run(load.run(0, during=outage_then_kill()))
        procs.stop(proc)  # SIGTERM: drains what is left, writes the stop record

        answered = set(load.ok_ids)
        found = set(pg.sql("SELECT record::json->>'prediction_id' FROM audit_records "
                           "WHERE event = 'request'").split())
        records_found = len(answered & found)
        verify = subprocess.run([sys.executable, "-m", "medserve_operator.cli", "audit", "verify",
                                 f"--key-file={key_file}"], env=env, capture_output=True, text=True,
                                timeout=600, check=False)
        return {
            "requests_ok": len(answered), "records_found": records_found, "lost": len(answered) - records_found,
            "duplicate_ok_ids": len(load.ok_ids) - len(answered),
            "verify_ok": verify.returncode == 0, "verify_output": verify.stdout.strip().splitlines()[:6],
            "rps": round(rps, 1), "baseline_rps": round(baseline_rps, 1), "rps_ratio": round(rps / baseline_rps, 3),
            "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
            "outage_s": args.outage, "seconds": args.seconds, "concurrency": args.concurrency,
            "cpus": os.cpu_count(),
        }
    finally:
        pg.remove()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each rps measurement")
    p.add_argument("--outage", type=float, default=20.0, help="seconds PostgreSQL is down")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-batch-size", type=int, default=16)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="medserve-audit-bench-") as tmp:
        result = measure(args, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, value in result.items():
            print(f"{name:>18}: {value}")
    return 0 if result["lost"] == 0 and result["verify_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
