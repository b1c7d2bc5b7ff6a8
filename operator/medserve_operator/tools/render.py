"""`medserve render FILE...`: print every object the operator would create for the given manifests.

The GitOps preview, like `helm template`: for each ModelDeployment the KServe InferenceService, for each
ABTest the InferenceGraph, for each RetrainPolicy its CronJob (when it has a schedule) and the Job its
triggers start, as multi-document YAML on stdout. The objects come from the operator's own renderers
(`controllers.*.render`) with the operator's configuration taken from flags (or the MEDSERVE_* environment
the operator reads), so a preview and the cluster agree. Files are read as `medserve validate` reads them
(files, directories, `-`); other kinds are skipped.

What cannot be known offline is stated, not guessed:
- A ModelDeployment that follows an alias: `--model-version [NAME=]VERSION` names the version (for one
  deployment, or for all), or `--mlflow-uri` resolves it in MLflow as the operator would; without either
  the alias is rendered as MLflow's alias URI `models:/MODEL@ALIAS` and a note goes to stderr (the
  version the operator pins will differ from run to run; the rest of the object does not).
- A rollout in progress (the canary) depends on what the cluster serves now: `--canary-from VERSION`
  renders the canary beside that version.
- Names: uid is a placeholder (`00000000-...`); the namespace is metadata.namespace or `--namespace`.

Exit status as `medserve validate`: 0 all rendered, 1 some document is invalid or cannot be rendered
(nothing is printed for it; its problems go to stderr as `FILE: KIND/NAME: field.path: message`, so that
stdout stays YAML to pipe into `kubectl apply -f -` or a diff), 2 usage errors, unreadable files, YAML
syntax errors and an unreachable MLflow.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from medserve_operator import api
from medserve_operator.api import retrainpolicy as rp
from medserve_operator.api.modeldeployment import DEPLOYMENT_MODES, DeploymentMode
from medserve_operator.api.retrainpolicy import RetrainPolicySpec
from medserve_operator.config import DEFAULT_RUNTIME_IMAGE, OperatorConfig
from medserve_operator.controllers.abtest import render as abtest_render
from medserve_operator.controllers.modeldeployment import render as md_render
from medserve_operator.controllers.retrainpolicy import render as rp_render
from medserve_operator.controllers.retrainpolicy.jobs import job_name
from medserve_operator.tools import validate

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
PREVIEW_TIME = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
"""The clock of a preview's Job names (a real Job is named after the moment it starts)."""


class Unreachable(RuntimeError):
    """MLflow could not be asked (exit status 2)."""


class Renderer:
    """Turns parsed medserve objects into the children the operator would create."""

    def __init__(self, *, config: OperatorConfig, mode: DeploymentMode | None, namespace: str,
                 versions: Mapping[str, str], canary_from: str | None, resolve_aliases: bool) -> None:
        self.config, self.mode, self.namespace = config, mode, namespace
        self.versions, self.canary_from, self.resolve_aliases = versions, canary_from, resolve_aliases
        self.model_names: dict[tuple[str, str], str] = {}
        self.notes: list[str] = []

    def remember(self, obj: api.ModelDeployment | api.ABTest | api.RetrainPolicy) -> None:
        """Note a ModelDeployment's model name, for the RetrainPolicies that name the deployment."""
        if isinstance(obj, api.ModelDeployment):
            self.model_names[(self._namespace(obj), str(obj.metadata.get("name")))] = obj.spec.model.name

    def _namespace(self, obj: api.ModelDeployment | api.ABTest | api.RetrainPolicy) -> str:
        return str(obj.metadata.get("namespace") or self.namespace)

    async def children(self, obj: api.ModelDeployment | api.ABTest | api.RetrainPolicy) -> list[dict[str, Any]]:
        name, namespace = str(obj.metadata.get("name")), self._namespace(obj)
        if isinstance(obj, api.ModelDeployment):
            return [await self.inference_service(obj, name, namespace)]
        if isinstance(obj, api.ABTest):
            spec = obj.spec
            return [abtest_render.render_inference_graph(
                name=name, namespace=namespace, uid=PLACEHOLDER_UID,
                control_service=spec.control.model_deployment, treatment_service=spec.treatment.model_deployment,
                treatment_percent=spec.traffic_split.treatment_percent)]
        return self.retraining(obj, name, namespace)

    async def inference_service(self, obj: api.ModelDeployment, name: str, namespace: str) -> dict[str, Any]:
        spec = obj.spec
        version = self.versions.get(name) or self.versions.get("") or spec.model.version
        if version is None and self.resolve_aliases:
            version = await self.resolve(spec.model.name, str(spec.model.alias))
        if version is None:
            version = f"@{spec.model.alias}"
            self.notes.append(f"ModelDeployment/{name}: alias {spec.model.alias!r} not resolved; rendered as "
                              f"models:/{spec.model.name}@{spec.model.alias} (pass --model-version or --mlflow-uri)")
        canary = md_render.ModelVersion(spec.model.name, self.canary_from) if self.canary_from else None
        return md_render.render_inference_service(
            name=name, namespace=namespace, uid=PLACEHOLDER_UID, spec=spec, model_name=spec.model.name,
            model_version=version, image=spec.runtime.image or self.config.runtime_image,
            mlflow_uri=self.config.runtime_mlflow_uri,
            mode=spec.runtime.deployment_mode or self.mode or self.config.deployment_mode, canary_from=canary,
            peer_url_template=self.config.runtime_peer_url_template.replace("{namespace}", namespace),
            audit=md_render.audit_plan(spec.security, self.config.audit))

    async def resolve(self, model: str, alias: str) -> str:
        from medserve_operator.clients.mlflow import MlflowRegistry, ModelNotFound, RegistryError

        registry = MlflowRegistry(self.config.mlflow_uri, timeout=self.config.registry_timeout)
        try:
            return (await registry.resolve(model, alias=alias)).version
        except ModelNotFound as exc:
            raise md_render.RenderError("spec.model.alias", str(exc)) from None
        except RegistryError as exc:
            raise Unreachable(f"MLflow at {self.config.mlflow_uri}: {exc}") from None
        finally:
            await registry.aclose()

    def retraining(self, obj: api.RetrainPolicy, name: str, namespace: str) -> list[dict[str, Any]]:
        spec = obj.spec
        model_name = self.model_names.get((namespace, spec.model_deployment))
        if model_name is None:
            raise md_render.RenderError("spec.modelDeployment", f"ModelDeployment {spec.model_deployment} is not "
                                        "among the files given: its model name goes into the Job")
        mlflow_uri = self.config.runtime_mlflow_uri
        objects = []
        if spec.schedule is not None:
            objects.append(rp_render.render_cronjob(name=name, namespace=namespace, uid=PLACEHOLDER_UID, spec=spec,
                                                    model_name=model_name, mlflow_uri=mlflow_uri))
        reason = first_trigger(spec)
        if reason is not None:
            objects.append(rp_render.render_job(
                name=job_name(name, reason, PREVIEW_TIME), policy=name, namespace=namespace, uid=PLACEHOLDER_UID,
                spec=spec, model_name=model_name, mlflow_uri=mlflow_uri, reason=reason))
        return objects


def first_trigger(spec: RetrainPolicySpec) -> str | None:
    """The reason of the first trigger the policy has (the Job it starts differs only in that reason)."""
    triggers = spec.triggers
    if triggers.drift.enabled:
        return rp.DRIFT
    if triggers.performance is not None:
        return rp.PERFORMANCE
    return rp.QUERY if triggers.query is not None else None


def _parsed(docs: Iterator[tuple[str, int, Any]],
            problems: list[str]) -> Iterator[tuple[str, int, api.ModelDeployment | api.ABTest | api.RetrainPolicy]]:
    for label, index, doc in docs:
        found = validate.validate_document(doc)
        if found:
            prefix = f"{label}: {validate.object_label(doc, index)}"
            problems.extend(f"{prefix}: {path}: {message}" for path, message in found)
            continue
        yield label, index, api.parse_object(doc)


def medserve_documents(arguments: list[str], stdin: Any, fatal: list[str]) -> Iterator[tuple[str, int, Any]]:
    """(file label, document number, medserve document) of every file the arguments name."""
    for label, path, error in validate.expand_paths(arguments):
        if error is not None:
            fatal.append(error)
            continue
        try:
            text = stdin.read() if path is None else path.read_text(encoding="utf-8")
            raw = list(yaml.load_all(text, Loader=validate.UniqueKeyLoader))
        except (OSError, UnicodeDecodeError) as exc:
            fatal.append(f"{label}: cannot read: {exc}")
            continue
        except yaml.YAMLError as exc:
            fatal.append(f"{label}: YAML syntax error: {exc}")
            continue
        for index, doc in enumerate(raw, start=1):
            for item in validate.list_items(doc):
                if isinstance(item, Mapping) and validate.is_medserve_document(item):
                    yield label, index, item


def _versions(values: list[str]) -> dict[str, str]:
    """--model-version VERSION (every deployment) or NAME=VERSION (one)."""
    versions: dict[str, str] = {}
    for value in values:
        name, _, version = value.rpartition("=")
        if not version.isdigit() or version.startswith("0"):
            raise ValueError(f"--model-version {value!r}: expected VERSION or NAME=VERSION, VERSION a positive "
                             "integer")
        versions[name] = version
    return versions


def parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="medserve render",
        description="Print, as multi-document YAML, the objects the operator would create for the manifests.",
        epilog="exit status: 0 all rendered, 1 some document invalid or not renderable, 2 usage error, "
               "unreadable file, YAML syntax error or MLflow unreachable",
    )
    p.add_argument("paths", nargs="+", metavar="FILE", help="YAML file, directory (recursed) or - for stdin")
    p.add_argument("--mode", choices=DEPLOYMENT_MODES, default=None,
                   help="deployment mode of ModelDeployments that name none (default: MEDSERVE_DEPLOYMENT_MODE, "
                        "else Serverless)")
    p.add_argument("--namespace", default="default", help="namespace of objects that name none")
    p.add_argument("--runtime-image", default=env.get("MEDSERVE_RUNTIME_IMAGE") or DEFAULT_RUNTIME_IMAGE,
                   help="the operator's default model-runtime image (MEDSERVE_RUNTIME_IMAGE)")
    p.add_argument("--runtime-mlflow-uri", default=None,
                   help="where runtime pods reach MLflow (MEDSERVE_RUNTIME_MLFLOW_URI; default: --mlflow-uri, "
                        "else http://mlflow:5000)")
    p.add_argument("--mlflow-uri", default=None,
                   help="resolve aliases in this MLflow, as the operator does (default: aliases stay unresolved)")
    p.add_argument("--model-version", action="append", default=[], metavar="[NAME=]VERSION",
                   help="the version to render for ModelDeployment NAME (or all); repeatable")
    p.add_argument("--canary-from", default=None, metavar="VERSION",
                   help="render the rollout of a new version as a canary beside VERSION")
    return p


def main(argv: list[str]) -> int:
    try:
        args = parser().parse_args(argv)
        versions = _versions(args.model_version)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    except ValueError as exc:
        sys.stderr.write(f"medserve render: {exc}\n")
        return 2
    env = {k: v for k, v in os.environ.items() if k.startswith("MEDSERVE_")}
    if args.mlflow_uri:
        env["MEDSERVE_MLFLOW_URI"] = args.mlflow_uri
    if args.runtime_mlflow_uri:
        env["MEDSERVE_RUNTIME_MLFLOW_URI"] = args.runtime_mlflow_uri
    env["MEDSERVE_RUNTIME_IMAGE"] = args.runtime_image
    try:
        config = OperatorConfig.from_env(env)
    except ValueError as exc:
        sys.stderr.write(f"medserve render: {exc}\n")
        return 2
    renderer = Renderer(config=config, mode=args.mode, namespace=args.namespace, versions=versions,
                        canary_from=args.canary_from, resolve_aliases=bool(args.mlflow_uri))
    return asyncio.run(_run(renderer, args.paths))


async def _run(renderer: Renderer, paths: list[str]) -> int:
    fatal: list[str] = []
    problems: list[str] = []
    parsed = list(_parsed(medserve_documents(paths, sys.stdin, fatal), problems))
    for _, _, obj in parsed:
        renderer.remember(obj)
    rendered: list[dict[str, Any]] = []
    for label, index, obj in parsed:
        try:
            rendered.extend(await renderer.children(obj))
        except md_render.RenderError as exc:
            problems.append(f"{label}: {obj.kind}/{obj.metadata.get('name') or f'<document {index}>'}: "
                            f"{exc.field}: {exc.message}")
        except Unreachable as exc:
            fatal.append(str(exc))
    if rendered:
        sys.stdout.write(yaml.safe_dump_all(rendered, sort_keys=False, default_flow_style=False))
    for line in problems:
        sys.stderr.write(f"{line}\n")
    for line in renderer.notes:
        sys.stderr.write(f"medserve render: note: {line}\n")
    for line in fatal:
        sys.stderr.write(f"{line}\n")
    if fatal:
        return 2
    return 1 if problems else 0
