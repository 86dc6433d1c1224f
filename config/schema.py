"""The OpenAPI schema's house rules: descriptions only where a route states them (docstrings
are written for the code's readers, not the API's), and, added after generation, the error
shape every route can answer with, `Retry-After` on 429s and the attachment headers of the
routes that answer with a file."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.plumbing import get_override

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {"type": "object", "additionalProperties": True},
    },
    "required": ["detail", "code"],
}

ERROR_RESPONSES = {
    "400": "Invalid input: `errors` holds the field errors.",
    "401": "Not authenticated.",
    "403": "Authenticated, but the role is too low.",
    "404": "Not found, or not visible to the caller.",
    "405": "Method not allowed.",
    "409": "Conflict with the current state.",
    "413": "Body too large.",
    "415": "Unsupported media type: send the body type this route documents.",
    "429": "A limit was reached; retry after `Retry-After` seconds.",
    "503": "A backend is unavailable; retry later.",
}

RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer"},
    }
}
ATTACHMENT_HEADERS = {
    "Content-Disposition": {
        "description": '`attachment; filename="…"`: always a download, never shown inline.',
        "schema": {"type": "string"},
    },
    "X-Content-Type-Options": {"description": "`nosniff`.", "schema": {"type": "string"}},
}


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's, without docstrings as descriptions: an operation says what it does
    with `extend_schema(description=…)`, a field with its `help_text`."""

    def get_description(self) -> str:  # type: ignore[override]
        return ""

    def _map_basic_serializer(self, serializer: Any, direction: Any) -> dict[str, Any]:
        mapped: dict[str, Any] = super()._map_basic_serializer(serializer, direction)  # type: ignore[no-untyped-call]
        if get_override(serializer, "description", None) is None:
            mapped.pop("description", None)
        return mapped


def add_error_responses(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/Error"}
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for code, description in ERROR_RESPONSES.items():
                responses.setdefault(
                    code,
                    {"description": description, "content": {"application/json": {"schema": ref}}},
                )
            responses["429"].setdefault("headers", {}).update(RETRY_AFTER)
            for response in responses.values():
                if "application/octet-stream" in response.get("content", {}):
                    response.setdefault("headers", {}).update(ATTACHMENT_HEADERS)
    return result
