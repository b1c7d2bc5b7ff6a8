"""What every medserve training job shares: fit a small torch MLP, export it, register it in MLflow.

A training job (train.py, train_breast_cancer.py) builds its data set, its `FeatureSpec` and its
`ReferenceProfile`, then calls `run(args, ...)`, which trains, evaluates on a held-out split, writes
`model.pt` (TorchScript), `feature_spec.json` and `reference_profile.json`, and either leaves them in
`--output-dir` or logs them to MLflow as the run's `model/` artifacts and registers a new version.

The environment is the contract with the operator (a RetrainPolicy Job gets these variables):
  MLFLOW_TRACKING_URI       where MLflow is
  MEDSERVE_MODEL_NAME       the registered model to add a version to
  MEDSERVE_JOB_NAME         tagged on the version as medserve.io/job-name (how the operator finds it)
  MEDSERVE_TRIGGER_REASON   tagged as medserve.io/trigger-reason
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from medserve_contract.modelspec import (
    FEATURE_SPEC_FILE,
    MODEL_FILE,
    REFERENCE_PROFILE_FILE,
    FeatureSpec,
    ReferenceProfile,
    write_json,
)
from torch import nn

logger = logging.getLogger("medserve.training")

JOB_NAME_TAG = "medserve.io/job-name"
TRIGGER_REASON_TAG = "medserve.io/trigger-reason"
ARTIFACT_PATH = "model"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainResult:
    accuracy: float
    train_accuracy: float
    n_train: int
    n_test: int
    seconds: float


def parser(description: str, *, default_model_name: str) -> argparse.ArgumentParser:
    """The command line every training job accepts."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--output-dir", type=Path, default=None,
                   help="write model.pt, feature_spec.json and reference_profile.json here and do not "
                        "touch MLflow")
    p.add_argument("--model-name", default=os.environ.get("MEDSERVE_MODEL_NAME") or default_model_name,
                   help="registered model name (default: $MEDSERVE_MODEL_NAME or %(default)s)")
    p.add_argument("--experiment", default="medserve-training", help="MLflow experiment (default: %(default)s)")
    p.add_argument("--alias", default=None, help="point this alias (e.g. champion) at the new version")
    p.add_argument("--seed", type=int, default=0, help="random seed for data, split and weights")
    p.add_argument("--epochs", type=int, default=40, help="training epochs (default: %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object {name, version, run_id, accuracy, source}")
    return p


class MLP(nn.Module):
    """A small fully connected classifier: input_dim -> hidden... -> n_classes logits."""

    def __init__(self, input_dim: int, n_classes: int, hidden: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def split(n: int, *, seed: int, test_fraction: float = 0.2) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Shuffled train and test indices."""
    order = np.random.default_rng(seed + 1).permutation(n)
    n_test = max(1, round(n * test_fraction))
    return order[n_test:], order[:n_test]


def fit(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], *, n_classes: int, seed: int, epochs: int,
        test_idx: npt.NDArray[np.int64], train_idx: npt.NDArray[np.int64]) -> tuple[MLP, TrainResult]:
    """Train an MLP with Adam on the train split and measure accuracy on both splits."""
    started = time.monotonic()
    torch.manual_seed(seed)
    # The matrices are tiny (128 x 64): a second intra-op thread costs more in hand-offs than it
    # computes, and on a busy node its spin-waiting slows training several-fold.
    torch.set_num_threads(1)
    model = MLP(x.shape[1], n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx])
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(order), 128):
            batch = order[start:start + 128]
            opt.zero_grad()
            loss_fn(model(xt[batch]), yt[batch]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return model, TrainResult(
        accuracy=float((pred[test_idx] == y[test_idx]).mean()),
        train_accuracy=float((pred[train_idx] == y[train_idx]).mean()),
        n_train=len(train_idx), n_test=len(test_idx), seconds=time.monotonic() - started,
    )


def export(model: nn.Module, spec: FeatureSpec, profile: ReferenceProfile, out: Path) -> None:
    """Write the three files of a model version into `out`; check the TorchScript file loads and agrees."""
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript in favour of torch.export, but TorchScript is still the one
        # format the runtime can load without this Python class and quantize dynamically.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model.eval())
        torch.jit.save(scripted, str(out / MODEL_FILE))
        loaded = torch.jit.load(str(out / MODEL_FILE))  # type: ignore[no-untyped-call]
    probe = torch.zeros(2, spec.input_dim)
    with torch.no_grad():
        if not torch.allclose(loaded(probe), model(probe), atol=1e-6):
            raise RuntimeError("the exported TorchScript model does not reproduce the trained model")
    write_json(spec, out / FEATURE_SPEC_FILE)
    write_json(profile, out / REFERENCE_PROFILE_FILE)


def register(files: Path, *, model_name: str, experiment: str, alias: str | None, params: Mapping[str, Any],
             result: TrainResult, description: str) -> dict[str, Any]:
    """Log `files` as the run's `model/` artifacts and register them as a new version of `model_name`."""
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise SystemExit("MLFLOW_TRACKING_URI is not set: point it at the MLflow server, or pass --output-dir DIR")
    # Imported here: --output-dir runs (and the runtime's tests) need no MLflow client at all.
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    # mlflow sets its own loggers to INFO on import ("Creating a new experiment", "Waiting up to 300s").
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    tags = {k: v for k, v in ((JOB_NAME_TAG, os.environ.get("MEDSERVE_JOB_NAME", "")),
                              (TRIGGER_REASON_TAG, os.environ.get("MEDSERVE_TRIGGER_REASON", ""))) if v}
    with mlflow.start_run(run_name=os.environ.get("MEDSERVE_JOB_NAME") or None, tags=tags) as run:
        mlflow.log_params(dict(params))
        mlflow.log_metrics({"accuracy": result.accuracy, "train_accuracy": result.train_accuracy,
                            "n_train": result.n_train, "n_test": result.n_test,
                            "train_seconds": result.seconds})
        mlflow.log_artifacts(str(files), artifact_path=ARTIFACT_PATH)
        source = mlflow.get_artifact_uri(ARTIFACT_PATH)
        run_id = run.info.run_id

    client = MlflowClient()
    try:
        client.create_registered_model(model_name, description=description)
    except MlflowException as exc:
        # Another job may have created it first; anything else is a real failure.
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(model_name, source, run_id=run_id, tags=tags,
                                          description=f"accuracy {result.accuracy:.4f} on {result.n_test} "
                                                      "held-out records")
    if alias:
        client.set_registered_model_alias(model_name, alias, version.version)
    return {"name": model_name, "version": str(version.version), "run_id": run_id,
            "accuracy": result.accuracy, "source": source}


def run(args: argparse.Namespace, *, spec: FeatureSpec, profile: ReferenceProfile, model: nn.Module,
        result: TrainResult, params: Mapping[str, Any], description: str) -> int:
    """Write or register the trained model as the command line asked, and report it."""
    if args.output_dir is not None:
        export(model, spec, profile, args.output_dir)
        report: dict[str, Any] = {"output_dir": str(args.output_dir.resolve()), "accuracy": result.accuracy}
        if args.json:
            print(json.dumps(report))
        else:
            print(f"accuracy {result.accuracy:.4f} on {result.n_test} held-out records; "
                  f"wrote {MODEL_FILE}, {FEATURE_SPEC_FILE}, {REFERENCE_PROFILE_FILE} to {args.output_dir}")
        return 0
    with tempfile.TemporaryDirectory(prefix="medserve-train-") as tmp:
        export(model, spec, profile, Path(tmp))
        report = register(Path(tmp), model_name=args.model_name, experiment=args.experiment, alias=args.alias,
                          params=params, result=result, description=description)
    if args.json:
        print(json.dumps(report))
    else:
        alias = f" (alias {args.alias})" if args.alias else ""
        print(f"registered {report['name']} version {report['version']}{alias}: accuracy "
              f"{result.accuracy:.4f} on {result.n_test} held-out records, run {report['run_id']}")
    return 0


def configure_logging() -> None:
    """Quiet the libraries' chatter so that stdout carries only the result (and --json stays parseable)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # MLflow writes "View run ... at URL" to stdout itself; our own report line says the same.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
