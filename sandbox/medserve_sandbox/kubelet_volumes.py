"""The kubelet's part of starting a container, for the stand-ins: volumes as local directories, the env
resolved, `$(VAR)` expanded, and the container's paths mapped onto the local machine.

What it follows in the kubelet (kubernetes/kubernetes, v1.32):
- Secret volumes, `pkg/volume/secret/secret.go` (`SetUpAt`, `MakePayload`): every key of the Secret as a
  file, or only `items` (each key at its `path`), with `items[].mode` or `defaultMode` (0644 when unset);
  a missing Secret fails the mount (`secret "NAME" not found`), and so does an item whose key the Secret
  lacks (`couldn't find key KEY in Secret NAMESPACE/NAME`), unless the volume is `optional`.
- `emptyDir`, `pkg/volume/emptydir`: a fresh directory for the pod.
- `persistentVolumeClaim`: the claim's volume, the same one for every pod mounting it (what a
  ReadWriteMany volume is): here one directory per claim, `<shared_dir>/<namespace>/<claim>`, kept across
  pods; a claim that does not exist leaves the pod unscheduled (`persistentvolumeclaim "NAME" not found`).
- Environment, `pkg/kubelet/kubelet_pods.go` (`makeEnvironmentVariables`): `value` with `$(VAR)` expanded
  from the variables before it, `valueFrom.fieldRef` (metadata.name, metadata.namespace, metadata.uid),
  `valueFrom.secretKeyRef` (a missing Secret or key is CreateContainerConfigError with the messages above).
- `args`, `$(VAR)` expansion (`third_party/forked/golang/expansion/expand.go`, `Expand`): `$$` is a literal
  `$`, an unknown `$(VAR)` is left as written.

What the process is given in place of a mount path is the local directory (an argument such as
`--audit_dsn_file=/var/run/medserve/audit-db/dsn` becomes the file under the pod's directory), since a
local process cannot see a container's mount namespace. What it does not do: ConfigMap, projected or
downwardAPI volumes, subPath, envFrom, resource fieldRefs.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

DEFAULT_SECRET_MODE = 0o644
_REFERENCE = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


class ContainerConfigError(Exception):
    """The container cannot start as the kubelet would refuse it: the message is the kubelet's."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


class SecretReader(Protocol):
    async def get(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        ...


@dataclasses.dataclass(frozen=True)
class Materialised:
    """What the local process runs with: args and env resolved, and where each mount path is locally."""

    args: list[str]
    env: dict[str, str]
    mounts: dict[str, Path]


def expand(text: str, env: Mapping[str, str]) -> str:
    """`$(VAR)` from `env` (unknown ones left as written), `$$` as `$` — the kubelet's expansion."""
    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        return env.get(match[1], match[0])
    return _REFERENCE.sub(one, text)


def secret_data(secret: Mapping[str, Any]) -> dict[str, bytes]:
    """A Secret's keys and decoded values (`stringData` too, as the API server merges it into `data`)."""
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    data.update({k: str(v).encode() for k, v in (secret.get("stringData") or {}).items()})
    return data


async def _secret(kube: SecretReader, namespace: str, name: str, cache: dict[str, dict[str, bytes] | None],
                  ) -> dict[str, bytes] | None:
    if name not in cache:
        found = await kube.get("v1", "secrets", namespace, name)
        cache[name] = secret_data(found) if found is not None else None
    return cache[name]


async def mount_volume(kube: SecretReader, volume: Mapping[str, Any], *, namespace: str, pod_dir: Path,
                       shared_dir: Path, cache: dict[str, dict[str, bytes] | None] | None = None) -> Path:
    """Set up one pod volume locally and return its directory (ContainerConfigError as the kubelet fails)."""
    cache = {} if cache is None else cache
    name = str(volume["name"])
    if "secret" in volume:
        source = volume["secret"]
        secret_name = str(source.get("secretName", ""))
        optional = bool(source.get("optional"))
        data = await _secret(kube, namespace, secret_name, cache)
        if data is None and not optional:
            raise ContainerConfigError("FailedMount", f'MountVolume.SetUp failed for volume "{name}" : '
                                                      f'secret "{secret_name}" not found')
        data = data or {}
        items = source.get("items") or [{"key": k, "path": k} for k in sorted(data)]
        target = pod_dir / name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        default_mode = int(source.get("defaultMode", DEFAULT_SECRET_MODE))
        for item in items:
            key = str(item["key"])
            if key not in data:
                if optional:
                    continue
                raise ContainerConfigError("FailedMount", f'MountVolume.SetUp failed for volume "{name}" : couldn'
                                                          f"'t find key {key} in Secret {namespace}/{secret_name}")
            path = target / str(item.get("path", key))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[key])
            # The owner keeps read access: the local process runs as this user, not as the pod's fsGroup.
            path.chmod(int(item.get("mode", default_mode)) | 0o400)
        return target
    if "emptyDir" in volume:
        target = pod_dir / name
        target.mkdir(parents=True, exist_ok=True)
        return target
    if "persistentVolumeClaim" in volume:
        claim = str(volume["persistentVolumeClaim"].get("claimName", ""))
        if await kube.get("v1", "persistentvolumeclaims", namespace, claim) is None:
            raise ContainerConfigError("FailedScheduling", f'persistentvolumeclaim "{claim}" not found')
        target = shared_dir / namespace / claim
        target.mkdir(parents=True, exist_ok=True)
        return target
    raise ContainerConfigError("FailedMount", f'volume "{name}": only secret, emptyDir and persistentVolumeClaim '
                                              "volumes are set up by the sandbox")


async def container_env(kube: SecretReader, container: Mapping[str, Any], *, namespace: str, pod_name: str,
                        pod_uid: str = "", cache: dict[str, dict[str, bytes] | None] | None = None,
                        ) -> dict[str, str]:
    """The container's environment as the kubelet resolves it (ContainerConfigError as it refuses it)."""
    cache = {} if cache is None else cache
    fields = {"metadata.name": pod_name, "metadata.namespace": namespace, "metadata.uid": pod_uid}
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        name = str(var["name"])
        source = var.get("valueFrom")
        if source is None:
            env[name] = expand(str(var.get("value", "")), env)
        elif "fieldRef" in source:
            path = str(source["fieldRef"].get("fieldPath", ""))
            if path not in fields:
                raise ContainerConfigError("CreateContainerConfigError", f"unsupported fieldPath {path!r}")
            env[name] = fields[path]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret_name, key, optional = str(ref.get("name", "")), str(ref.get("key", "")), bool(ref.get("optional"))
            data = await _secret(kube, namespace, secret_name, cache)
            if data is None or key not in data:
                if optional:
                    continue
                raise ContainerConfigError("CreateContainerConfigError", f'secret "{secret_name}" not found'
                                           if data is None else f"couldn't find key {key} in Secret "
                                                                f"{namespace}/{secret_name}")
            env[name] = data[key].decode()
        else:
            raise ContainerConfigError("CreateContainerConfigError", f"env {name}: unsupported valueFrom")
    return env


def local_path(value: str, mounts: Mapping[str, Path]) -> str:
    """`value` with a leading mount path (the longest that matches) replaced by its local directory."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(mounts[mount_path]) + value[len(mount_path.rstrip("/")):]
    return value


async def materialise(kube: SecretReader, *, namespace: str, pod_name: str, volumes: list[dict[str, Any]],
                      container: Mapping[str, Any], pod_dir: Path, shared_dir: Path, pod_uid: str = "",
                      ) -> Materialised:
    """Volumes, env and args of `container` for a local process (see the module docstring)."""
    cache: dict[str, dict[str, bytes] | None] = {}
    by_name = {str(v["name"]): v for v in volumes}
    env = await container_env(kube, container, namespace=namespace, pod_name=pod_name, pod_uid=pod_uid, cache=cache)
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        volume = by_name.get(str(mount["name"]))
        if volume is None:
            raise ContainerConfigError("CreateContainerConfigError",
                                       f'volumeMount "{mount["name"]}" names no volume of the pod')
        mounts[str(mount["mountPath"])] = await mount_volume(kube, volume, namespace=namespace, pod_dir=pod_dir,
                                                             shared_dir=shared_dir, cache=cache)
    args = []
    for arg in container.get("args") or []:
        expanded = expand(str(arg), env)
        flag, sep, value = expanded.partition("=")
        args.append(f"{flag}={local_path(value, mounts)}" if sep else local_path(expanded, mounts))
    return Materialised(args=args, env=env, mounts=mounts)
