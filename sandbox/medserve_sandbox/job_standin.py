"""A local stand-in for the Job controller and the kubelet: every `batch/v1` Job becomes a local process.

It watches the Jobs in the emulated API (polling, every half second) and, for each one that has not
finished, runs its first container's `command` + `args` as a process on this machine, with the
container's env (literal values, the downward API's `fieldRef`, and `secretKeyRef`/`configMapKeyRef`
read from the API), in the working directory given (the repository root, so that
`python examples/training/train.py` works). The `image` is ignored: the container runs in this
machine's environment, and a command of `python`/`python3` is this interpreter, so that the
repository's packages are importable.

It writes the Job's status as the Job controller does and as kube-apiserver accepts it: `startTime`,
`active`, `ready`, `succeeded`, `failed`, and once the Job ends `completionTime` (on success) and the
terminal conditions in the controller's order: `SuccessCriteriaMet` then `Complete` (reason
`CompletionsReached`), or `FailureTarget` then `Failed` (reasons `BackoffLimitExceeded`,
`DeadlineExceeded`), with no `active` (0, which the API omits) on a finished Job. The source:
kubernetes pkg/controller/job/job_controller.go, `syncJob` (the interim condition,
`jobCtx.finishedCondition = newCondition(batch.JobSuccessCriteriaMet | batch.JobFailureTarget, ...)`,
while pods terminate) and `enactJobFinished` (the final `Complete`/`Failed` added after it); and the
server's own check, pkg/apis/batch/validation/validation.go `validateJobStatus`: "cannot set
Complete=True condition without the SuccessCriteriaMet=true condition", "cannot set Failed=True
condition without the FailureTarget=true condition", "active>0 is invalid for finished job",
"startTime is required for finished job", "completionTime is required for Complete jobs". A failed
attempt is retried after the controller's back-off (10 s, doubled each time, at most 6 min) until
`backoffLimit` failures have been exceeded; `activeDeadlineSeconds` counts from `startTime` and ends the
running attempt. A Job that is deleted has its process stopped; `spec.suspend` is honoured.

What it does NOT do: run more than one pod per Job (`parallelism`/`completions` are taken as 1), pod
failure policies, success policies, `ttlSecondsAfterFinished` (finished Jobs stay), create Pod
objects, or run CronJobs on their schedule (no CronJob controller). The operator never knows it is
talking to a stand-in.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import logging
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from medserve_operator.clients.kube import KubeClient
from medserve_operator.kit.conditions import now_rfc3339

from medserve_sandbox import procs

logger = logging.getLogger("medserve.job-standin")

BATCH_API, JOBS = "batch/v1", "jobs"
BACKOFF_BASE_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 360.0
PYTHON_COMMANDS = frozenset({"python", "python3", f"python{sys.version_info.major}.{sys.version_info.minor}"})
_FIELD_PATH = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


class CannotRun(Exception):
    """The container cannot be started here (no command, a missing Secret key, ...): the Job fails."""


@dataclasses.dataclass
class Attempt:
    """One pod of a Job: a running process, or the time the next one may start after a failure."""

    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    not_before: float = 0.0
    failures: int = 0


class JobStandin:
    def __init__(self, kube: KubeClient, workdir: Path, cwd: Path, *, mlflow_uri: str | None,
                 backoff_base: float = BACKOFF_BASE_SECONDS) -> None:
        self.kube, self.workdir, self.cwd, self.mlflow_uri = kube, workdir, cwd, mlflow_uri
        self.backoff_base = backoff_base
        self.attempts: dict[str, Attempt] = {}  # by Job uid

    async def close(self) -> None:
        for attempt in self.attempts.values():
            if attempt.proc is not None:
                procs.stop(attempt.proc)

    async def sync(self) -> None:
        jobs = await self.kube.list(BATCH_API, JOBS, None)
        seen = set()
        for job in jobs:
            uid = job["metadata"]["uid"]
            seen.add(uid)
            if job["metadata"].get("deletionTimestamp"):
                continue
            await self.reconcile(job)
        for uid in [u for u in self.attempts if u not in seen]:
            attempt = self.attempts.pop(uid)
            if attempt.proc is not None and attempt.proc.poll() is None:
                logger.info("Job %s is gone: stopping its process", uid)
                procs.stop(attempt.proc)

    async def reconcile(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job.get("spec") or {}
        status: dict[str, Any] = dict(job.get("status") or {})
        if _finished(status):
            return
        uid, where = meta["uid"], f"{meta['namespace']}/{meta['name']}"
        attempt = self.attempts.setdefault(uid, Attempt(failures=int(status.get("failed") or 0)))
        now = time.monotonic()
        if attempt.proc is not None and attempt.proc.poll() is not None:
            code = attempt.proc.returncode
            attempt.proc = None
            if code == 0:
                logger.info("Job %s succeeded", where)
                status.update(active=0, ready=0, succeeded=1, completionTime=now_rfc3339())
                message = "Reached expected number of succeeded pods"
                status["conditions"] = [_condition("SuccessCriteriaMet", "CompletionsReached", message),
                                        _condition("Complete", "CompletionsReached", message)]
                await self.write_status(job, status)
                return
            attempt.failures += 1
            logger.info("Job %s: attempt %d exited with %s (log %s)", where, attempt.failures, code, attempt.log_path)
            status.update(active=0, ready=0, failed=attempt.failures)
            if attempt.failures > int(spec.get("backoffLimit", 6)):
                await self.fail(job, status, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
                return
            attempt.not_before = now + min(BACKOFF_MAX_SECONDS, self.backoff_base * 2 ** (attempt.failures - 1))
        deadline = spec.get("activeDeadlineSeconds")
        started_at = _parse_time(status.get("startTime"))
        if deadline is not None and started_at is not None and time.time() - started_at >= float(deadline):
            if attempt.proc is not None:
                procs.stop(attempt.proc)
                attempt.proc = None
            status.update(active=0, ready=0)
            await self.fail(job, status, "DeadlineExceeded", "Job was active longer than specified deadline")
            return
        if spec.get("suspend"):
            if attempt.proc is not None:
                procs.stop(attempt.proc)
                attempt.proc = None
            status.update(active=0, ready=0)
        elif attempt.proc is None and now >= attempt.not_before:
            try:
                await self.start(job, attempt)
            except CannotRun as exc:
                logger.warning("Job %s cannot run: %s", where, exc)
                status.update(active=0, ready=0, failed=attempt.failures + 1)
                status.setdefault("startTime", now_rfc3339())
                await self.fail(job, status, "StandinCannotRun", str(exc))
                return
            status.setdefault("startTime", now_rfc3339())
            status.update(active=1, ready=1)
        await self.write_status(job, status)

    async def start(self, job: dict[str, Any], attempt: Attempt) -> None:
        meta = job["metadata"]
        template = (job.get("spec") or {}).get("template") or {}
        containers = (template.get("spec") or {}).get("containers") or []
        if not containers:
            raise CannotRun("the pod template has no container")
        container = containers[0]
        argv = [*container.get("command", []), *container.get("args", [])]
        if not container.get("command"):
            raise CannotRun(f"container {container.get('name')!r} has no command, and the stand-in cannot run "
                            f"the entrypoint of image {container.get('image')!r}")
        if argv[0] in PYTHON_COMMANDS:
            argv[0] = sys.executable
        pod_name = f"{meta['name']}-{secrets.token_hex(3)[:5]}"
        pod_meta = {
            "name": pod_name, "namespace": meta["namespace"],
            "labels": {**((template.get("metadata") or {}).get("labels") or {}),
                       "batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"],
                       "batch.kubernetes.io/controller-uid": meta["uid"], "controller-uid": meta["uid"]},
            "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
        }
        env = {**os.environ}
        for entry in container.get("env", []):
            env[entry["name"]] = await self.env_value(entry, pod_meta)
        if self.mlflow_uri and "MLFLOW_TRACKING_URI" in env:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        log_path = self.workdir / "jobs" / meta["namespace"] / f"{pod_name}.log"
        logger.info("Job %s/%s: starting pod %s: %s", meta["namespace"], meta["name"], pod_name, " ".join(argv))
        try:
            attempt.proc = procs.spawn(argv, log_path=log_path, env=env, cwd=self.cwd)
        except OSError as exc:
            raise CannotRun(f"cannot start {argv[0]!r}: {exc}") from exc
        attempt.log_path = log_path

    async def env_value(self, entry: dict[str, Any], pod_meta: dict[str, Any]) -> str:
        """An env var's value as the kubelet resolves it."""
        if "valueFrom" not in entry:
            return str(entry.get("value", ""))
        source = entry["valueFrom"]
        if "fieldRef" in source:
            path = str(source["fieldRef"].get("fieldPath", ""))
            if path in ("metadata.name", "metadata.namespace"):
                return str(pod_meta[path.split(".")[1]])
            match = _FIELD_PATH.match(path)
            if match:
                return str(pod_meta[match.group(1)].get(match.group(2), ""))
            raise CannotRun(f"env {entry['name']}: fieldRef {path!r} is not supported by the stand-in")
        for key, plural in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
            if key in source:
                ref = source[key]
                obj = await self.kube.get("v1", plural, pod_meta["namespace"], ref.get("name", ""))
                data = (obj or {}).get("data") or {}
                if ref.get("key") not in data:
                    if ref.get("optional"):
                        return ""
                    raise CannotRun(f"env {entry['name']}: {key} {ref.get('name')}/{ref.get('key')} not found")
                value = data[ref["key"]]
                return base64.b64decode(value).decode() if plural == "secrets" else str(value)
        raise CannotRun(f"env {entry['name']}: valueFrom {sorted(source)} is not supported by the stand-in")

    async def fail(self, job: dict[str, Any], status: dict[str, Any], reason: str, message: str) -> None:
        logger.info("Job %s/%s failed: %s", job["metadata"]["namespace"], job["metadata"]["name"], reason)
        status.setdefault("startTime", now_rfc3339())
        status["conditions"] = [_condition("FailureTarget", reason, message), _condition("Failed", reason, message)]
        await self.write_status(job, status)

    async def write_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        # `active` is an int32 with omitempty: the real API never shows `active: 0`, and a finished
        # Job has none. A merge patch removes the key with null.
        current = job.get("status") or {}
        if not status.get("active"):
            status = {**status, "active": None}
            if "active" not in current and {k: v for k, v in status.items() if k != "active"} == current:
                return
        elif status == current:
            return
        await procs.patch_status(self.kube, BATCH_API, JOBS, job, status)


def _condition(type_: str, reason: str, message: str) -> dict[str, Any]:
    now = now_rfc3339()
    return {"type": type_, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": now, "lastTransitionTime": now}


def _finished(status: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in status.get("conditions") or [])


def _parse_time(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def main(argv: list[str]) -> int:
    parser = procs.controller_parser("medserve_sandbox.job_standin", __doc__)
    parser.add_argument("--workdir", required=True, type=Path, help="where each Job's log is kept (jobs/)")
    parser.add_argument("--cwd", type=Path, default=Path.cwd(),
                        help="working directory of the Jobs' processes (default: the current directory)")
    parser.add_argument("--mlflow-uri", default=None,
                        help="MLflow URL for the Jobs (overrides the pod's MLFLOW_TRACKING_URI)")
    parser.add_argument("--backoff-seconds", type=float, default=BACKOFF_BASE_SECONDS,
                        help="first retry delay after a failed attempt (default: %(default)s, as Kubernetes)")
    args = parser.parse_args(argv)

    procs.run_controller(args.kubeconfig, f"Job stand-in watching {args.kubeconfig}",
                         lambda kube: JobStandin(kube, args.workdir, args.cwd.resolve(), mlflow_uri=args.mlflow_uri,
                                                backoff_base=args.backoff_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
