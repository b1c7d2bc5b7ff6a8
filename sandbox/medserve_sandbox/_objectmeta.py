"""ObjectMeta validation, as the apiserver applies it to every kind: names, labels, annotations,
finalizers and ownerReferences, with the apiserver's messages; undeclared metadata fields are pruned.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from medserve_sandbox._schemanode import Findings, go_value, is_type, join

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUALIFIED_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

DNS1123_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
DNS1123_LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
DNS1035_LABEL_MESSAGE = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
    "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
QUALIFIED_NAME_MESSAGE = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
LABEL_VALUE_MESSAGE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
    "regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)

_OBJECT_META_FIELDS = frozenset(
    {
        "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
        "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
        "ownerReferences", "finalizers", "managedFields",
    }
)  # fmt: skip
_TOTAL_ANNOTATION_BYTES = 256 * 1024


class ObjectMetaChecks(Findings):
    """The ObjectMeta part of a walk (see _structural.Walk)."""

    def visit_object_meta(
        self,
        meta: dict[str, Any],
        path: str,
        *,
        name_required: bool = True,
        name_pattern: str = "subdomain",
        max_name_length: int = 253,
    ) -> dict[str, Any]:
        """Validate ObjectMeta as the apiserver does for every kind; prune undeclared metadata fields."""
        result: dict[str, Any] = {}
        for key, item in meta.items():
            if key not in _OBJECT_META_FIELDS:
                self.unknown.append(join(path, key))
                continue
            if item is None:
                continue
            result[key] = copy.deepcopy(item)
        name = result.get("name")
        generate_name = result.get("generateName")
        if name is not None and not isinstance(name, str):
            self.type_error(join(path, "name"), name, "string")
        elif name:
            self._check_name(name, join(path, "name"), name_pattern, max_name_length)
        elif name_required and not generate_name:
            self.nameless = True
            self.add(
                join(path, "name"), "Required value: name or generateName is required", "FieldValueRequired"
            )
        if generate_name is not None and not isinstance(generate_name, str):
            self.type_error(join(path, "generateName"), generate_name, "string")
        namespace = result.get("namespace")
        if namespace is not None:
            if not isinstance(namespace, str):
                self.type_error(join(path, "namespace"), namespace, "string")
            elif namespace and (not _DNS1123_LABEL.match(namespace) or len(namespace) > 63):
                self.add(
                    join(path, "namespace"), f"Invalid value: {go_value(namespace)}: {DNS1123_LABEL_MESSAGE}"
                )
        for key in ("generation", "deletionGracePeriodSeconds"):
            if key in result and not is_type(result[key], "integer"):
                self.type_error(join(path, key), result[key], "integer")
        for key in ("uid", "resourceVersion", "selfLink", "creationTimestamp", "deletionTimestamp"):
            if key in result and not isinstance(result[key], str):
                self.type_error(join(path, key), result[key], "string")
        self._check_string_map(result, "labels", path, labels=True)
        self._check_string_map(result, "annotations", path, labels=False)
        self._check_finalizers(result, path)
        self._check_owner_references(result, path)
        return result

    def _check_name(self, name: str, path: str, name_pattern: str, max_length: int) -> None:
        regex, message = {
            "label": (_DNS1123_LABEL, DNS1123_LABEL_MESSAGE),
            "dns1035": (_DNS1035_LABEL, DNS1035_LABEL_MESSAGE),
        }.get(name_pattern, (DNS1123_SUBDOMAIN, DNS1123_SUBDOMAIN_MESSAGE))
        if not regex.match(name):
            self.add(path, f"Invalid value: {go_value(name)}: {message}")
        if len(name) > max_length:
            self.add(path, f"Invalid value: {go_value(name)}: must be no more than {max_length} characters")

    def _check_qualified_name(self, key: str, path: str) -> bool:
        prefix, _, name = key.rpartition("/")
        if "/" in key and (not prefix or len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
            self.add(path, f"Invalid value: {go_value(key)}: prefix part {DNS1123_SUBDOMAIN_MESSAGE}")
            return False
        if not name or len(name) > 63 or not QUALIFIED_NAME_PART.match(name):
            self.add(path, f"Invalid value: {go_value(key)}: {QUALIFIED_NAME_MESSAGE}")
            return False
        return True

    def _check_string_map(self, meta: dict[str, Any], key: str, path: str, *, labels: bool) -> None:
        if key not in meta:
            return
        mapping = meta[key]
        map_path = join(path, key)
        if not isinstance(mapping, dict):
            self.type_error(map_path, mapping, "object")
            return
        total = 0
        for map_key, map_value in mapping.items():
            self._check_qualified_name(map_key, map_path)
            if not isinstance(map_value, str):
                self.type_error(f"{map_path}.{map_key}", map_value, "string")
                continue
            total += len(map_key) + len(map_value)
            if labels and (len(map_value) > 63 or not LABEL_VALUE.match(map_value)):
                self.add(map_path, f"Invalid value: {go_value(map_value)}: {LABEL_VALUE_MESSAGE}")
        if not labels and total > _TOTAL_ANNOTATION_BYTES:
            self.add(
                map_path,
                f"Too long: may not be more than {_TOTAL_ANNOTATION_BYTES} bytes",
                "FieldValueTooLong",
            )

    def _check_finalizers(self, meta: dict[str, Any], path: str) -> None:
        if "finalizers" not in meta:
            return
        finalizers = meta["finalizers"]
        list_path = join(path, "finalizers")
        if not isinstance(finalizers, list):
            self.type_error(list_path, finalizers, "array")
            return
        for index, item in enumerate(finalizers):
            if not isinstance(item, str):
                self.type_error(f"{list_path}[{index}]", item, "string")
            else:
                self._check_qualified_name(item, f"{list_path}[{index}]")

    def _check_owner_references(self, meta: dict[str, Any], path: str) -> None:
        if "ownerReferences" not in meta:
            return
        refs = meta["ownerReferences"]
        list_path = join(path, "ownerReferences")
        if not isinstance(refs, list):
            self.type_error(list_path, refs, "array")
            return
        for index, ref in enumerate(refs):
            ref_path = f"{list_path}[{index}]"
            if not isinstance(ref, dict):
                self.type_error(ref_path, ref, "object")
                continue
            for key in ("apiVersion", "kind", "name", "uid"):
                if not ref.get(key):
                    self.add(join(ref_path, key), "Required value", "FieldValueRequired")
                elif not isinstance(ref[key], str):
                    self.type_error(join(ref_path, key), ref[key], "string")
            for key in ("controller", "blockOwnerDeletion"):
                if key in ref and not isinstance(ref[key], bool):
                    self.type_error(join(ref_path, key), ref[key], "boolean")
