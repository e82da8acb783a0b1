"""The API's JSON parser: a body nested too deep or holding NUL characters is a 400, not a 500."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from webapp.core.parsing import json_depth_error


class SafeJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:  # Python's json gives up near 1,000 levels
            raise ParseError("JSON parse error - the body nests too deep") from None
        problem = json_depth_error(data)
        if problem is not None:
            raise ParseError(f"JSON parse error - {problem}")
        return data
