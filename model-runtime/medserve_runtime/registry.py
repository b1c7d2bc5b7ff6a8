"""MLflow registry downloads in a child process, so that a download past its deadline is cancelled.

MLflow's client is blocking (requests, with its own timeouts and retries; loader.bound_registry_calls
bounds each call), and a thread cannot be cancelled: a reload whose registry stopped answering would
keep its thread, its socket and its temporary files after the request gave up, and a server stopping
would wait for it. So a registry URI is resolved and downloaded by `python -m medserve_runtime.registry
URI TARGET` (this module's `main`): the runtime waits for it at most its deadline and kills it (its
whole process group) on timeout, when the waiting request is cancelled (the request deadline, the
client gone) and on shutdown (`cancel_all`, from ClinicalModel.stop). The child prints one JSON line:
`{"name", "version", "files"}`, or `{"error"}` with every secret already redacted; its stderr, where
MLflow may print the tracking URI, is discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from medserve_runtime.phi import redact_secrets

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))/?$")
_children: set[int] = set()
"""Process ids of the downloads running now (their process groups), for cancel_all."""


class ModelLoadError(RuntimeError):
    """The source cannot be turned into a servable model; the message says which file or setting."""


def check_uri(uri: str) -> None:
    if _REGISTRY_URI.match(uri) is None:
        raise ModelLoadError(f"model URI {uri!r} must look like models:/NAME/VERSION or models:/NAME@ALIAS")


def download(uri: str, target: Path) -> tuple[str, str, Path]:
    """Resolve `uri` to (name, version) and download the version's artifacts into `target`, in this process."""
    match = _REGISTRY_URI.match(uri)
    if match is None:
        raise ModelLoadError(f"model URI {uri!r} must look like models:/NAME/VERSION or models:/NAME@ALIAS")
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    name = match["name"]
    client = MlflowClient()
    try:
        mv = (client.get_model_version(name, match["version"]) if match["version"]
              else client.get_model_version_by_alias(name, match["alias"]))
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(target)))
    except MlflowException as exc:
        # The message may carry the tracking URI, credentials and all: never print or return those.
        raise ModelLoadError(f"cannot load {uri} from the MLflow registry: {redact_secrets(exc.message)}") \
            from exc
    except OSError as exc:  # requests' ConnectionError/Timeout after the retries, a full disk
        raise ModelLoadError(f"cannot load {uri} from the MLflow registry: {type(exc).__name__}: "
                             f"{redact_secrets(str(exc))[:500]}") from exc
    # The version's source is normally the run's `model/` folder; a source one level up holds it.
    files = local if (local / MODEL_FILE).is_file() else local / "model"
    return name, str(mv.version), files


def _command(uri: str, target: Path) -> list[str]:
    return [sys.executable, "-m", "medserve_runtime.registry", uri, str(target)]


def _parse(uri: str, out: bytes, code: int | None) -> tuple[str, str, Path]:
    try:
        answer = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ModelLoadError(f"cannot load {uri} from the MLflow registry: the download process exited "
                             f"with {code} and no answer") from None
    if "error" in answer:
        raise ModelLoadError(str(answer["error"]))
    return str(answer["name"]), str(answer["version"]), Path(answer["files"])


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _late(uri: str, timeout_s: float) -> ModelLoadError:
    return ModelLoadError(f"cannot load {uri} from the MLflow registry: no answer within {timeout_s:g} s "
                          "(the download was cancelled)")


def fetch(uri: str, target: Path, *, timeout_s: float) -> tuple[str, str, Path]:
    """`download` in a child process, killed after `timeout_s` (blocking; start-up)."""
    check_uri(uri)
    proc = subprocess.Popen(_command(uri, target), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    _children.add(proc.pid)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise _late(uri, timeout_s) from None
    finally:
        _children.discard(proc.pid)
        if proc.returncode is None:
            _kill(proc.pid)
            proc.wait()
    return _parse(uri, out, proc.returncode)


async def afetch(uri: str, target: Path, *, timeout_s: float) -> tuple[str, str, Path]:
    """`download` in a child process, killed after `timeout_s` or when the awaiting task is cancelled."""
    check_uri(uri)
    proc = await asyncio.create_subprocess_exec(*_command(uri, target), stdout=subprocess.PIPE,
                                                stderr=subprocess.DEVNULL, start_new_session=True)
    _children.add(proc.pid)
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await proc.communicate()
    except TimeoutError:
        raise _late(uri, timeout_s) from None
    finally:
        _children.discard(proc.pid)
        if proc.returncode is None:  # cancelled (deadline, client gone, shutdown): nothing may outlive it
            _kill(proc.pid)
            await asyncio.shield(proc.wait())
    if proc.returncode == -signal.SIGKILL:
        raise ModelLoadError(f"cannot load {uri} from the MLflow registry: the download was cancelled "
                             "(the server is stopping)")
    return _parse(uri, out, proc.returncode)


def cancel_all() -> None:
    """Kill every download running now (shutdown): their reloads fail at once instead of holding the stop."""
    for pid in list(_children):
        _kill(pid)


def _answer(answer: dict[str, str]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    uri, target = argv
    try:
        name, version, files = download(uri, Path(target))
    except ModelLoadError as exc:
        _answer({"error": str(exc)})
        return 1
    except Exception as exc:  # anything else MLflow raises: named, never with its text (it may hold the URI)
        _answer({"error": f"cannot load {uri} from the MLflow registry: {type(exc).__name__}"})
        return 1
    _answer({"name": name, "version": version, "files": str(files)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
