"""Load one model version: its TorchScript module, feature spec and reference profile, ready to run.

A source is either an MLflow registry URI (`models:/NAME/VERSION` or `models:/NAME@ALIAS`), resolved
with a real MLflow client (`MLFLOW_TRACKING_URI`) and downloaded from the version's `model/`
artifacts by a child process that is killed past its deadline (registry.py), or a local directory
holding the three files (`--model_dir`, and what `examples/training/train.py --output-dir` writes).
A directory's version label is `local-` plus the first 12 hex digits of model.pt's SHA-256, so that
two different directories never share metric labels or /models statistics.

`dynamic-int8` quantizes the Linear layers' weights to int8 with activations quantized on the fly
(`torch.ao.quantization.quantize_dynamic_jit`: the TorchScript form of `quantize_dynamic`, which
on a scripted module would silently change nothing because its submodules are not `nn.Linear`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from medserve_contract.modelspec import (
    FEATURE_SPEC_FILE,
    MODEL_FILE,
    REFERENCE_PROFILE_FILE,
    FeatureSpec,
    ReferenceProfile,
    load_feature_spec,
    load_reference_profile,
)

from medserve_runtime import registry
from medserve_runtime.registry import ModelLoadError as ModelLoadError  # raised here too

logger = logging.getLogger(__name__)

Optimization = Literal["none", "dynamic-int8"]
Device = Literal["cpu", "gpu"]
OPTIMIZATIONS: tuple[Optimization, ...] = ("none", "dynamic-int8")
DEVICES: tuple[Device, ...] = ("cpu", "gpu")

DEFAULT_FETCH_TIMEOUT_S = 60.0


def cpu_limit(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may use: its cgroup's quota (a pod's CPU limit, rounded up), else the CPUs
    it is allowed to run on (taskset, cpusets), at least 1."""
    allowed = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max":
            return max(1, min(allowed, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, allowed)


def set_torch_threads(cpus: int) -> None:
    """One intra-op thread per CPU of the limit and one inter-op thread: more threads than CPUs only
    take turns with the event loop (and, spinning, take its CPU)."""
    torch.set_num_threads(cpus)
    with contextlib.suppress(RuntimeError):  # once any parallel work ran it can no longer be changed
        torch.set_num_interop_threads(1)


def bound_registry_calls(timeout_s: float, *, retries: int = 1) -> None:
    """Every MLflow HTTP call: at most `timeout_s` (connect and read), at most `retries` retries, a
    short backoff. MLflow's defaults (120 s, 7 retries, backoff factor 2) hold a reload, and its
    lock, for minutes when the registry is down. MLflow reads these per call
    (mlflow/environment_variables.py, mlflow/utils/rest_utils.py), so this applies to every call after."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(timeout_s)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0.5"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelBundle:
    """One loaded model version: immutable, shared by every request it serves."""

    name: str
    """The registered model name (from the registry URI, else the feature spec's model_name)."""
    version: str
    source: str
    spec: FeatureSpec
    profile: ReferenceProfile
    module: torch.jit.ScriptModule
    device: torch.device
    optimization: Optimization

    def forward(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Class probabilities [N, C] for encoded inputs [N, D]; blocking, so call it off the event loop."""
        with torch.no_grad():
            logits = self.module(torch.from_numpy(x).to(self.device))
            probs: npt.NDArray[np.float32] = torch.softmax(logits, dim=1).cpu().numpy()
        return probs


def is_registry_uri(source: str) -> bool:
    return source.startswith("models:/")


def load(source: str, *, device: Device = "cpu", optimization: Optimization = "none",
         fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S) -> ModelBundle:
    """Load `source` (a registry URI or a directory) and check it runs on a probe batch (blocking)."""
    torch_device = _check(device, optimization)
    if is_registry_uri(source):
        target = Path(tempfile.mkdtemp(prefix="medserve-model-"))
        try:
            name, version, files = registry.fetch(source, target, timeout_s=fetch_timeout_s)
            return _load_files(files, name=name, version=version, source=source, device=torch_device,
                               optimization=optimization)
        finally:
            # Everything is in memory now; a pod's writable /tmp is small and shared.
            shutil.rmtree(target, ignore_errors=True)
    return _load_directory(source, torch_device, optimization)


async def aload(source: str, *, device: Device = "cpu", optimization: Optimization = "none",
                fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S) -> ModelBundle:
    """`load` for the event loop (a reload): the registry download is cancelled with the awaiting task
    or after `fetch_timeout_s` (registry.py), the files are read in a worker thread."""
    torch_device = _check(device, optimization)
    if not is_registry_uri(source):
        return await asyncio.to_thread(_load_directory, source, torch_device, optimization)
    target = Path(tempfile.mkdtemp(prefix="medserve-model-"))
    try:
        name, version, files = await registry.afetch(source, target, timeout_s=fetch_timeout_s)
        return await asyncio.to_thread(_load_files, files, name=name, version=version, source=source,
                                       device=torch_device, optimization=optimization)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def _check(device: str, optimization: str) -> torch.device:
    if optimization not in OPTIMIZATIONS:
        raise ModelLoadError(f"optimization must be one of {', '.join(OPTIMIZATIONS)}, not {optimization!r}")
    torch_device = _torch_device(device)
    if optimization == "dynamic-int8" and torch_device.type != "cpu":
        raise ModelLoadError("optimization dynamic-int8 runs on CPU only (quantized Linear kernels); "
                             "use device cpu or optimization none")
    return torch_device


def _load_directory(source: str, torch_device: torch.device, optimization: Optimization) -> ModelBundle:
    directory = Path(source.removeprefix("file://")).expanduser()
    if not directory.is_dir():
        raise ModelLoadError(f"model source {source!r} is neither a models:/NAME/VERSION URI nor a directory")
    digest = hashlib.sha256(_require(directory, MODEL_FILE).read_bytes()).hexdigest()[:12]
    return _load_files(directory, name="", version=f"local-{digest}", source=str(directory.resolve()),
                       device=torch_device, optimization=optimization)


def _torch_device(device: str) -> torch.device:
    if device == "cpu":
        return torch.device("cpu")
    if device == "gpu":
        if not torch.cuda.is_available():
            raise ModelLoadError("device gpu was asked for but CUDA is not available on this node")
        return torch.device("cuda")
    raise ModelLoadError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")


def _require(directory: Path, filename: str) -> Path:
    path = directory / filename
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: a model version needs {MODEL_FILE}, {FEATURE_SPEC_FILE} "
                             f"and {REFERENCE_PROFILE_FILE}")
    return path


def _load_files(directory: Path, *, name: str, version: str, source: str, device: torch.device,
                optimization: Optimization) -> ModelBundle:
    try:
        spec = load_feature_spec(_require(directory, FEATURE_SPEC_FILE))
        profile = load_reference_profile(_require(directory, REFERENCE_PROFILE_FILE))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ModelLoadError(f"{source}: invalid feature spec or reference profile: {exc}") from exc
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript and quantized tensors; both are still what runs here.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(_require(directory, MODEL_FILE)), map_location=device)
        except RuntimeError as exc:
            raise ModelLoadError(f"{source}: {MODEL_FILE} is not a loadable TorchScript module: {exc}") \
                from exc
        module.eval()
        if optimization == "dynamic-int8":
            from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic_jit

            module = quantize_dynamic_jit(  # type: ignore[no-untyped-call]
                module, {"": default_dynamic_qconfig})
    bundle = ModelBundle(name=name or spec.model_name, version=version, source=source, spec=spec,
                         profile=profile, module=module, device=device, optimization=optimization)
    try:
        probe = bundle.forward(np.zeros((2, spec.input_dim), dtype=np.float32))
    except RuntimeError as exc:
        raise ModelLoadError(f"{source}: the model does not accept the feature spec's {spec.input_dim} "
                             f"inputs: {exc}") from exc
    if probe.shape != (2, len(spec.labels)):
        raise ModelLoadError(f"{source}: the model returns shape {list(probe.shape)} for 2 records but the "
                             f"feature spec has {len(spec.labels)} labels")
    logger.info("loaded model %s version %s from %s (%s, %s, %d inputs, %d classes)", bundle.name,
                bundle.version, source, device, optimization, spec.input_dim, len(spec.labels))
    return bundle
