"""The API errors the emulator answers, as the real API server's `Status` objects (404, 409, 422, ...)."""

from __future__ import annotations

from typing import Any

from medserve_sandbox._schemanode import Cause
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


def invalid_causes(kind: str, group: str, name: str, causes: list[Cause]) -> ApiError:
    """The 422 kube-apiserver answers a field.ErrorList with (apimachinery api/errors NewInvalid): the kind
    qualified by its group in the message, the errors listed (bracketed when more than one), one cause per
    error whose message leaves the field out (field.Error.ErrorBody); a root error's field is `<nil>`."""
    listed = [f"{field or '<nil>'}: {message}" for field, message, _ in causes]
    summary = listed[0] if len(listed) == 1 else f"[{', '.join(listed)}]"
    qualified = f"{kind}.{group}" if group else kind
    details: dict[str, Any] = {"name": name, "group": group, "kind": kind, "causes": [
        {"reason": reason, "message": message, "field": field or "<nil>"} for field, message, reason in causes]}
    if not group:
        del details["group"]
    return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details)


def invalid(rtype: ResourceType, name: str, field_path: str, message: str,
            reason: str = "FieldValueInvalid") -> ApiError:
    """`invalid_causes` for one error of `rtype`."""
    return invalid_causes(rtype.kind, rtype.group, name, [(field_path, message, reason)])


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)

