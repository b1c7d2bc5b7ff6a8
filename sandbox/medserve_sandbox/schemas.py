"""Schema admission and table output of the Kubernetes API emulator (pure: no networking).

`SchemaRegistry.admit()` does to every written object what kube-apiserver does before storing it:
- custom resources (our CRDs, and KServe's InferenceService/InferenceGraph read from the upstream CRD
  files): structural-schema validation, defaulting and pruning, then the CEL `x-kubernetes-validations`
  rules (see `_structural` and `_cel` for exactly what is and is not covered);
- core kinds (Pod, Secret, ConfigMap, Service, Job, CronJob, Event, ...): the OpenAPI schemas of
  Kubernetes 1.32 shipped by `kubernetes-validate`, plus ObjectMeta rules and the per-kind name rules
  of the apiserver (Namespace: DNS-1123 label; Service: DNS-1035 label; Job: 63 characters; CronJob: 52).
  A value of the wrong JSON type does not decode into the kind's Go struct: the 400 `DecodeError`, worded
  as Go's decoder does. Kinds without a shipped schema are accepted as they are.
Unknown fields follow `fieldValidation`: Strict rejects the write (400, "strict decoding error"), Warn
prunes them and returns one warning each, Ignore prunes them silently.

Not emulated: defaulting of core kinds (e.g. a Pod's restartPolicy), the apiserver's semantic validation
of core kinds beyond their schema (e.g. container port ranges, immutable fields), validation ratcheting
of unchanged invalid values on update, and CEL cost budgets.

`render_table()` turns objects into the `meta.k8s.io/v1` Table that `kubectl get` asks for.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medserve_sandbox import _cel, _structural
from medserve_sandbox._table import render_table

__all__ = ["InvalidObject", "SchemaRegistry", "find_kserve_crds_dir", "render_table"]

logger = logging.getLogger(__name__)

KSERVE_CRDS_ENV = "MEDSERVE_KSERVE_CRDS"
KUBERNETES_VERSION = "1.32"
FIELD_VALIDATIONS = ("Strict", "Warn", "Ignore")

# The apiserver's per-kind rules for metadata.name of core kinds: (name pattern, maximum length).
_CORE_NAME_RULES: dict[str, tuple[str, int]] = {
    "Namespace": ("label", 63),
    "Service": ("dns1035", 63),
    "Job": ("subdomain", 63),
    "CronJob": ("subdomain", 52),
}


def failure_status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `Status` object for a failed request, as the real API server answers it."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": reason, "code": code}
    if details is not None:
        body["details"] = details
    return body


class InvalidObject(Exception):
    """A write the apiserver would refuse; `status_body()` is the Status it would answer with.

    `code` is 422 (reason Invalid) for validation errors and 400 (reason BadRequest) for unknown fields
    under fieldValidation=Strict, which the apiserver reports as a strict decoding error.
    """

    def __init__(
        self,
        kind: str,
        name: str,
        causes: list[tuple[str, str, str]],
        *,
        group: str = "",
        version: str = "",
        code: int = 422,
    ) -> None:
        self.kind = kind
        self.name = name
        self.causes = causes
        self.group = group
        self.version = version
        self.code = code
        self.reason = "Invalid" if code == 422 else "BadRequest"
        super().__init__(self.message)

    @property
    def message(self) -> str:
        if self.code == 400:
            unknown = ", ".join(message for _, message, _ in self.causes)
            return (
                f'{self.kind} in version "{self.version}" cannot be handled as a {self.kind}: '
                f"strict decoding error: {unknown}"
            )
        qualified = f"{self.kind}.{self.group}" if self.group else self.kind
        parts = [f"{field or '<nil>'}: {message}" for field, message, _ in self.causes]
        detail = parts[0] if len(parts) == 1 else f"[{', '.join(parts)}]"
        return f'{qualified} "{self.name}" is invalid: {detail}'

    def status_body(self) -> dict[str, Any]:
        causes = []
        for field, message, reason in self.causes:
            # A root-level error has a nil field path, which the apiserver prints as "<nil>".
            causes.append({"reason": reason, "message": message, "field": field or "<nil>"})
        details: dict[str, Any] = {"name": self.name, "kind": self.kind, "causes": causes}
        if self.group:
            details["group"] = self.group
        return failure_status(self.code, self.reason, self.message, details)


@dataclass
class _CrdVersion:
    crd_name: str
    group: str
    version: str
    kind: str
    schema: Mapping[str, Any] | None
    printer_columns: list[dict[str, Any]]
    _root: _structural.SchemaNode | None = None

    def root(self) -> _structural.SchemaNode | None:
        if self._root is None and self.schema is not None:
            self._root = _structural.SchemaNode(self.schema)
        return self._root


_AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


_precompiled: dict[int, Any] = {}


def _precompile_rules(schema: Any) -> None:
    """Compile every CEL rule of a schema now, so unsupported rules are logged when the CRD is added.

    A schema already walked (KServe's, shared by every registry) is not walked again; holding it in
    `_precompiled` keeps its id from being reused.
    """
    if id(schema) in _precompiled:
        return
    _precompiled[id(schema)] = schema
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            for rule in node.get("x-kubernetes-validations") or ():
                _cel.compile_rule(rule)
            stack.extend(value for key, value in node.items() if key != "x-kubernetes-validations")
        elif isinstance(node, list):
            stack.extend(node)


_crd_files: dict[tuple[str, int, int], list[dict[str, Any]]] = {}


def _load_crd_file(path: Path) -> list[dict[str, Any]]:
    """The CRDs of a YAML file, parsed once per process: KServe's 2 MB of YAML take a second or two to parse.

    The parsed documents are shared by every registry and never modified (defaults are copied out).
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    documents = _crd_files.get(key)
    if documents is None:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        with path.open(encoding="utf-8") as stream:
            documents = [
                document
                for document in yaml.load_all(stream, Loader=loader)
                if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition"
            ]
        _crd_files[key] = documents
    return documents


def _split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


class _CoreSchemas:
    """jsonschema validators for core kinds, built once per (apiVersion, kind) from kubernetes-validate."""

    def __init__(self) -> None:
        self._validators: dict[tuple[str, str], Any] = {}
        self._registry: Any = None
        self._directory: Any = None

    def _schema_directory(self) -> Any:
        if self._directory is None:
            root = importlib.resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
            names = sorted(
                (entry.name for entry in root.iterdir() if entry.name.endswith("-local-strict")),
                key=lambda name: tuple(int(part) for part in name[1:].split("-")[0].split(".")),
            )
            wanted = tuple(int(part) for part in KUBERNETES_VERSION.split("."))
            chosen = names[-1]
            for name in names:
                if tuple(int(part) for part in name[1:].split("-")[0].split("."))[:2] <= wanted:
                    chosen = name
            self._directory = root.joinpath(chosen)
            logger.debug("core kinds validated with kubernetes-validate schemas %s", chosen)
        return self._directory

    def validator(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        if key in self._validators:
            return self._validators[key]
        import jsonschema
        import referencing

        directory = self._schema_directory()
        group, version = _split_api_version(api_version)
        short_group = group.split(".")[0]
        filename = (
            f"{kind.lower()}-{short_group}-{version}.json" if group else f"{kind.lower()}-{version}.json"
        )
        schema_file = directory.joinpath(filename)
        validator: Any = None
        if schema_file.is_file():
            if self._registry is None:
                definitions = json.loads(directory.joinpath("_definitions.json").read_text())
                self._registry = referencing.Registry().with_resource(
                    definitions["$id"], referencing.Resource.from_contents(definitions)
                )
            schema = json.loads(schema_file.read_text())
            registry = self._registry.with_resource(schema["$id"], referencing.Resource.from_contents(schema))
            validator = jsonschema.Draft202012Validator(schema, registry=registry)
        self._validators[key] = validator
        return validator

    def decode_message(self, validator: Any, kind: str, parts: list[Any], value: Any) -> str:
        """UnmarshalTypeError's message for `value` at `parts` of `kind`, as Go's decoder words it.

        `Go struct field <Struct>.<fields>`: the innermost struct decoded into, and the JSON names of the
        struct fields on the way (map keys and list indexes are not in Go's field stack); `of type`: the Go
        type, from the OpenAPI definition's name (io.k8s.api.core.v1.Container -> v1.Container) or type.
        """
        definitions = self._registry.contents("https://kubernetes.io/api/_definitions.json")["$defs"]

        def resolve(node: Any) -> tuple[Any, str | None]:
            ref = node.get("$ref") if isinstance(node, dict) else None
            if ref is None:
                return node, None
            name = str(ref).rsplit("/", 1)[-1]
            return definitions[name], name

        def go_type(node: Any) -> str:
            node, name = resolve(node)
            if name is not None and node.get("properties") is not None:
                package, _, type_name = name.rpartition(".")
                return f"{package.rpartition('.')[2]}.{type_name}"
            types = node.get("type") or []
            types = [types] if isinstance(types, str) else [t for t in types if t != "null"]
            match types[0] if types else "object":
                case "string":
                    return "[]uint8" if node.get("format") == "byte" else "string"
                case "integer":
                    return {"int32": "int32", "int64": "int64"}.get(str(node.get("format")), "int")
                case "number":
                    return "float64"
                case "boolean":
                    return "bool"
                case "array":
                    return f"[]{go_type(node.get('items') or {})}"
                case _:
                    return f"map[string]{go_type(node.get('additionalProperties') or {})}"

        struct, fields, node = kind, [], validator.schema
        for part in parts:
            node, name = resolve(node)
            if isinstance(part, int):
                node = node.get("items") or {}
            elif part in (node.get("properties") or {}):
                if name is not None:
                    struct = name.rpartition(".")[2]
                fields.append(str(part))
                node = node["properties"][part]
            else:
                node = node.get("additionalProperties") or {}
        wanted = go_type(node)
        actual = _json_value_name(value)
        if actual == "number" and wanted.startswith("int"):
            actual = f"number {json.dumps(value)}"
        return f"json: cannot unmarshal {actual} into Go struct field {struct}.{'.'.join(fields)} of type {wanted}"


class DecodeError(Exception):
    """A core kind's body that does not decode into its Go type: kube-apiserver's 400 before any validation.

    k8s.io/apiserver endpoints/handlers/rest.go transformDecodeError words it; the cause is the
    UnmarshalTypeError of sigs.k8s.io/json (internal/golang/encoding/json/decode.go).
    """

    def __init__(self, kind: str, api_version: str, cause: str) -> None:
        version = _split_api_version(api_version)[1]
        super().__init__(f'{kind} in version "{version}" cannot be handled as a {kind}: {cause}')

    def status_body(self) -> dict[str, Any]:
        return failure_status(400, "BadRequest", str(self))


def _json_value_name(value: Any) -> str:
    """The JSON value's kind as UnmarshalTypeError.Value names it."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else "array" if isinstance(value, list) else "null"


def _path_string(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text = f"{text}[{part}]" if isinstance(part, int) else _structural.join(text, str(part))
    return text


def _delete_at(obj: Any, parts: list[Any], key: str) -> None:
    for part in parts:
        try:
            obj = obj[part]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(obj, dict):
        obj.pop(key, None)


class SchemaRegistry:
    """The schemas of every kind the emulator serves, with compiled validators cached per CRD version."""

    def __init__(self) -> None:
        self._crd_versions: dict[tuple[str, str], _CrdVersion] = {}
        self._crd_keys: dict[str, list[tuple[str, str]]] = {}
        self._core = _CoreSchemas()

    # ------------------------------------------------------------------ CRDs

    def add_crd(self, crd: Mapping[str, Any]) -> None:
        """Register (or replace) an apiextensions.k8s.io/v1 CustomResourceDefinition's served versions."""
        name = str(crd.get("metadata", {}).get("name", ""))
        spec = crd.get("spec") or {}
        group = str(spec.get("group", ""))
        kind = str((spec.get("names") or {}).get("kind", ""))
        if not name or not group or not kind:
            raise ValueError(
                f"CustomResourceDefinition {name!r} lacks metadata.name, spec.group or spec.names.kind"
            )
        self.remove_crd(name)
        keys: list[tuple[str, str]] = []
        for version in spec.get("versions") or ():
            if not version.get("served", True):
                continue
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            _precompile_rules(schema)
            api_version = f"{group}/{version['name']}"
            columns = [dict(column) for column in version.get("additionalPrinterColumns") or ()]
            self._crd_versions[(api_version, kind)] = _CrdVersion(
                crd_name=name, group=group, version=str(version["name"]), kind=kind,
                schema=schema, printer_columns=columns or [dict(_AGE_COLUMN)],
            )  # fmt: skip
            keys.append((api_version, kind))
        self._crd_keys[name] = keys

    def remove_crd(self, name: str) -> None:
        for key in self._crd_keys.pop(name, []):
            self._crd_versions.pop(key, None)

    def add_kserve_crds(self, directory: Path) -> list[str]:
        """Load KServe's `serving.kserve.io_*.yaml` CRDs from `directory`; return the kinds registered."""
        kinds: list[str] = []
        for path in sorted(Path(directory).glob("serving.kserve.io_*.yaml")):
            for document in _load_crd_file(path):
                self.add_crd(document)
                kinds.append(str(document["spec"]["names"]["kind"]))
        return kinds

    def has_schema(self, api_version: str, kind: str) -> bool:
        """True when writes of this kind are validated (a CRD kind, or a core kind with a shipped schema)."""
        if (api_version, kind) in self._crd_versions:
            return True
        return self._core.validator(api_version, kind) is not None

    def printer_columns(self, api_version: str, kind: str) -> list[dict[str, Any]] | None:
        """The CRD version's additionalPrinterColumns (Age when it declares none); None for other kinds."""
        entry = self._crd_versions.get((api_version, kind))
        return copy.deepcopy(entry.printer_columns) if entry is not None else None

    # ------------------------------------------------------------------ admission

    def admit(
        self, obj: Mapping[str, Any], *, old: Mapping[str, Any] | None, field_validation: str = "Strict"
    ) -> tuple[dict[str, Any], list[str]]:
        """Validate, default and prune `obj` as the apiserver does; return a new object and the warnings.

        Raises InvalidObject (see its `code`); ValueError for a fieldValidation other than
        Strict/Warn/Ignore.
        """
        if field_validation not in FIELD_VALIDATIONS:
            raise ValueError(
                f"fieldValidation must be one of {', '.join(FIELD_VALIDATIONS)}, not {field_validation!r}"
            )
        api_version = str(obj.get("apiVersion", ""))
        kind = str(obj.get("kind", ""))
        meta = obj.get("metadata")
        name = str(meta.get("name") or meta.get("generateName") or "") if isinstance(meta, Mapping) else ""
        group, version = _split_api_version(api_version)
        entry = self._crd_versions.get((api_version, kind))
        walk = _structural.Walk()
        if entry is not None:
            root = entry.root()
            if root is None:
                return copy.deepcopy(dict(obj)), []
            old_dict = dict(old) if old is not None else None
            result = _structural.visit_root(walk, root, dict(obj), old_dict)
        else:
            result = self._admit_core(walk, dict(obj), api_version, kind)
        warnings: list[str] = []
        if walk.unknown:
            unknown = [(path, f'unknown field "{path}"', "FieldValueInvalid") for path in walk.unknown]
            if field_validation == "Strict":
                raise InvalidObject(kind, name, unknown, group=group, version=version, code=400)
            if field_validation == "Warn":
                warnings = [message for _, message, _ in unknown]
        walk.run_cel()
        if walk.causes:
            raise InvalidObject(kind, name, walk.causes, group=group, version=version)
        return result, warnings

    def _admit_core(
        self, walk: _structural.Walk, obj: dict[str, Any], api_version: str, kind: str
    ) -> dict[str, Any]:
        result = copy.deepcopy(obj)
        meta = result.get("metadata")
        if isinstance(meta, dict):
            pattern, max_length = _CORE_NAME_RULES.get(kind, ("subdomain", 253))
            result["metadata"] = walk.visit_object_meta(
                meta, "metadata", name_pattern=pattern, max_name_length=max_length
            )
        elif meta is None:
            walk.add(
                "metadata.name", "Required value: name or generateName is required", "FieldValueRequired"
            )
        else:
            walk.type_error("metadata", meta, "object")
        validator = self._core.validator(api_version, kind) if api_version and kind else None
        if validator is None:
            if not api_version or not kind:
                walk.add("apiVersion" if not api_version else "kind", "Required value", "FieldValueRequired")
            return result
        for error in validator.iter_errors(obj):
            parts = list(error.absolute_path)
            if parts and parts[0] == "metadata":
                continue  # ObjectMeta is checked above, with the apiserver's own messages
            path = _path_string(parts)
            match error.validator:
                case "additionalProperties":
                    declared = error.schema.get("properties") or {}
                    for key in error.instance:
                        if key not in declared:
                            walk.unknown.append(_structural.join(path, key))
                            _delete_at(result, parts, key)
                case "required":
                    for key in error.validator_value:
                        if isinstance(error.instance, dict) and key not in error.instance:
                            walk.add(_structural.join(path, key), "Required value", "FieldValueRequired")
                case "type":
                    raise DecodeError(kind, api_version, self._core.decode_message(validator, kind, parts,
                                                                                   error.instance))
                case "enum":
                    supported = ", ".join(_structural.go_value(item) for item in error.validator_value)
                    walk.add(
                        path,
                        f"Unsupported value: {_structural.go_value(error.instance)}: "
                        f"supported values: {supported}",
                        "FieldValueNotSupported",
                    )
                case "oneOf" if isinstance(error.instance, bool | float | dict | list):
                    walk.type_error(path, error.instance, "integer,string")
                case _:
                    walk.add(path, f"Invalid value: {_structural.go_value(error.instance)}: {error.message}")
        if api_version == "v1" and kind in ("ConfigMap", "Secret"):
            _check_config_keys(walk, result, kind)
        return result


_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def _check_config_keys(walk: _structural.Walk, obj: Mapping[str, Any], kind: str) -> None:
    """The keys of a ConfigMap's data and binaryData, or a Secret's data, as kube-apiserver checks them.

    pkg/apis/core/validation/validation.go ValidateConfigMap and ValidateSecret, with
    apimachinery/pkg/util/validation IsConfigMapKey (a Secret's stringData is merged into data first).
    """
    bags = ("data", "binaryData") if kind == "ConfigMap" else ("data", "stringData")
    for bag in bags:
        for key in sorted(obj.get(bag) or {}):
            path = f"data[{key}]" if kind == "Secret" else f"{bag}[{key}]"
            messages = []
            if len(key) > 253:
                messages.append("must be no more than 253 characters")
            if not _CONFIG_KEY.fullmatch(key):
                messages.append("a valid config key must consist of alphanumeric characters, '-', '_' or '.' "
                                "(e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is "
                                "'[-._a-zA-Z0-9]+')")
            if key in (".", ".."):
                messages.append(f"must not be '{key}'")
            elif key.startswith(".."):
                messages.append("must not start with '..'")
            if kind == "ConfigMap" and bag == "data" and key in (obj.get("binaryData") or {}):
                messages.append("duplicate of key present in binaryData")
            for message in messages:
                walk.add(path, f"Invalid value: {_structural.go_value(key)}: {message}")


def find_kserve_crds_dir() -> Path | None:
    """Where KServe's CRD files are: $MEDSERVE_KSERVE_CRDS, else `shared/upstream/kserve` in an ancestor
    of the working directory or of this file; None when there are none (callers skip KServe validation)."""
    from_env = os.environ.get(KSERVE_CRDS_ENV)
    if from_env:
        path = Path(from_env)
        if any(path.glob("serving.kserve.io_*.yaml")):
            return path
        logger.warning("%s=%s holds no serving.kserve.io_*.yaml files", KSERVE_CRDS_ENV, from_env)
        return None
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for ancestor in (start, *start.parents):
            candidate = ancestor / "shared" / "upstream" / "kserve"
            if any(candidate.glob("serving.kserve.io_*.yaml")):
                return candidate
    return None
