"""OpenAPI post-processing: every operation documents the API's error answers, in its one format."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": True},
                "label": {"type": "object", "additionalProperties": True},
            },
        }
    },
}
ERRORS = {
    "400": "The request is malformed or a value is refused (`fields` names each one).",
    "401": "No valid token or session.",
    "403": "Signed in, but not allowed.",
    "404": "No such object, or not one you may see.",
    "405": "The method is not allowed here.",
    "409": "The request conflicts with the object's state (the message says which).",
    "413": "The body is larger than the limit (the message names it).",
    "415": "The body's content type is not accepted.",
    "429": "Too many requests, or too many failed logins: try again later.",
    "503": "A service it needs (the policy server, the database) is unavailable.",
}


def document_errors(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    reference = {"$ref": "#/components/schemas/Error"}
    for path in result.get("paths", {}).values():
        for operation in path.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for status, description in ERRORS.items():
                operation["responses"].setdefault(
                    status, {"description": description, "content": {"application/json": {"schema": reference}}}
                )
    return result
