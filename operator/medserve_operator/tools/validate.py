"""`medserve validate FILE...`: check medserve manifests offline, with the same models and rules as the CRDs.

Reads multi-document YAML from files, directories (every *.yaml / *.yml below them) or `-` (stdin).
Documents of other kinds (Secrets, ConfigMaps, ...) are skipped. Each ModelDeployment, ABTest and
RetrainPolicy is parsed with `medserve_operator.api`: unknown fields, wrong types, out-of-range values, bad
durations and cron expressions, cross-field rules, the apiVersion, and names that are not DNS-1035 labels or
are too long for the objects derived from them. One line per problem:

    FILE: KIND/NAME: field.path: message

Exit status: 0 when every document is valid, 1 when any is invalid, 2 for usage errors, unreadable files
and YAML syntax errors (2 wins over 1). `validate_document` is the reusable core (the admission webhook
will call it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from medserve_operator import api

STDIN = "-"
STDIN_LABEL = "<stdin>"


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate mapping keys, as kubectl does, instead of keeping the last."""


def _construct_mapping_unique(loader: UniqueKeyLoader, node: yaml.MappingNode) -> dict[Hashable, Any]:
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
            )
        if isinstance(key, Hashable):
            seen.add(key)
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node))


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_unique)


def is_medserve_document(doc: Mapping[str, Any]) -> bool:
    """Whether `doc` claims to be one of ours: apiVersion in the medserve.io group, or one of our kinds
    with no apiVersion at all (a mistake worth reporting rather than skipping)."""
    api_version = doc.get("apiVersion")
    if isinstance(api_version, str):
        return api_version.split("/", 1)[0] == api.GROUP
    return api_version is None and doc.get("kind") in api.KINDS


def validate_document(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The problems of one document as (field path, message) pairs; [] when valid or not a medserve kind."""
    if not is_medserve_document(doc):
        return []
    problems: list[tuple[str, str]] = []
    kind = doc.get("kind")
    if kind not in api.KINDS:
        expected = ", ".join(api.KINDS)
        return [("kind", f"unknown {api.GROUP} kind {kind!r}; expected one of {expected}")]
    checked = dict(doc)
    api_version = doc.get("apiVersion")
    if isinstance(api_version, str) and api_version != api.API_VERSION:
        problems.append(("apiVersion", f"unsupported version {api_version!r}; expected {api.API_VERSION}"))
        # Check the rest as if the version were right, so that every problem shows at once.
        checked["apiVersion"] = api.API_VERSION
    try:
        api.parse_object(checked)
    except api.SpecError as exc:
        problems.extend(exc.problems)
    return problems


@dataclass
class FileReport:
    """What checking one file found."""

    label: str
    valid: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    fatal: str | None = None


def object_label(doc: Mapping[str, Any], index: int) -> str:
    kind = doc.get("kind") if isinstance(doc.get("kind"), str) else "<no kind>"
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        name = f"<document {index}>"
    return f"{kind}/{name}"


def list_items(doc: Any) -> Iterator[Any]:
    """A document, or the items of a `v1 List` (what `kubectl get -o yaml` writes)."""
    if isinstance(doc, Mapping) and doc.get("apiVersion") == "v1" and doc.get("kind") == "List":
        items = doc.get("items")
        yield from items if isinstance(items, list) else []
    else:
        yield doc


def check_text(text: str, label: str) -> FileReport:
    """Check the YAML text of one file (named `label` in the messages)."""
    report = FileReport(label)
    try:
        raw_docs = list(yaml.load_all(text, Loader=UniqueKeyLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{label}:{mark.line + 1}" if mark is not None else label
        report.fatal = f"{where}: YAML syntax error: {exc.problem or exc.context}"
        return report
    except yaml.YAMLError as exc:
        report.fatal = f"{label}: YAML syntax error: {exc}"
        return report
    # Documents are numbered by their position in the file; the items of a List share its number.
    for index, raw in enumerate(raw_docs, start=1):
        for doc in list_items(raw):
            if doc is None:
                continue
            if not isinstance(doc, Mapping):
                report.problems.append(
                    f"{label}: <document {index}>: (root): must be a mapping with apiVersion, kind and metadata"
                )
                continue
            if not is_medserve_document(doc):
                report.skipped += 1
                continue
            problems = validate_document(doc)
            if problems:
                prefix = f"{label}: {object_label(doc, index)}"
                report.problems.extend(f"{prefix}: {path}: {message}" for path, message in problems)
            else:
                report.valid += 1
    return report


def expand_paths(arguments: list[str]) -> Iterator[tuple[str, Path | None, str | None]]:
    """(label, path or None for stdin, error) for every file the arguments name."""
    for argument in arguments:
        if argument == STDIN:
            yield STDIN_LABEL, None, None
            continue
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in {".yaml", ".yml"})
            if not found:
                yield argument, None, f"{argument}: no *.yaml or *.yml files in this directory"
            for file in found:
                yield str(file), file, None
        elif path.exists():
            yield argument, path, None
        else:
            yield argument, None, f"{argument}: no such file or directory"


def check_paths(arguments: list[str], stdin: TextIO) -> list[FileReport]:
    """Check every file the arguments name (files, directories, `-`)."""
    reports: list[FileReport] = []
    for label, path, error in expand_paths(arguments):
        if error is not None:
            reports.append(FileReport(label, fatal=error))
            continue
        try:
            text = stdin.read() if path is None else path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            reports.append(FileReport(label, fatal=f"{label}: cannot read: {reason}"))
            continue
        reports.append(check_text(text, label))
    return reports


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="medserve validate",
        description="Check ModelDeployment, ABTest and RetrainPolicy manifests offline. Other kinds are skipped.",
        epilog="exit status: 0 all valid, 1 some invalid, 2 usage error, unreadable file or YAML syntax error",
    )
    parser.add_argument("paths", nargs="+", metavar="FILE", help="YAML file, directory (recursed) or - for stdin")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    reports = check_paths(args.paths, sys.stdin)
    status = 0
    for report in reports:
        if report.fatal is not None:
            sys.stderr.write(report.fatal + "\n")
            status = 2
            continue
        for line in report.problems:
            sys.stdout.write(line + "\n")
        if report.problems:
            status = max(status, 1)
        elif not args.quiet:
            skipped = f", {report.skipped} skipped (not medserve kinds)" if report.skipped else ""
            noun = "document" if report.valid == 1 else "documents"
            sys.stdout.write(f"{report.label}: {report.valid} {noun} valid{skipped}\n")
    return status
