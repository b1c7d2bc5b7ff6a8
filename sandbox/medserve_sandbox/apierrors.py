"""The API errors the emulator answers, as the real API server's `Status` objects (404, 409, 422, ...)."""

from __future__ import annotations

from typing import Any

from medserve_sandbox.objects import Obj
from medserve_sandbox.resources import ResourceType
from medserve_sandbox.schemas import failure_status


class ApiError(Exception):
    """An error answered as a `Status` object, as the real API server does."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status_body(self) -> Obj:
        return failure_status(self.code, self.reason, self.message, self.details)

    @classmethod
    def from_status(cls, status: Obj) -> ApiError:
        return cls(
            int(status.get("code", 500)),
            str(status.get("reason", "InternalError")),
            str(status.get("message", "")),
            status.get("details"),
        )


def error_details(rtype: ResourceType, name: str) -> dict[str, Any]:
    """A Status's details; `group` is omitted for the core group (StatusDetails' `json:"group,omitempty"`)."""
    details = {"name": name, "group": rtype.group, "kind": rtype.plural}
    if not rtype.group:
        del details["group"]
    return details


def not_found(rtype: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rtype.group_resource()} "{name}" not found', error_details(rtype, name))


def conflict(rtype: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(
        409, "Conflict", f'Operation cannot be fulfilled on {rtype.group_resource()} "{name}": {why}',
        error_details(rtype, name),
    )


def invalid(rtype: ResourceType, name: str, field_path: str, message: str,
            reason: str = "FieldValueInvalid") -> ApiError:
    details = error_details(rtype, name) | {"kind": rtype.kind, "causes": [
        {"reason": reason, "message": f"{field_path}: {message}", "field": field_path},
    ]}
    return ApiError(422, "Invalid", f'{rtype.kind} "{name}" is invalid: {field_path}: {message}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)

