"""Reading untrusted request values: ids, and JSON bodies, with a 4xx answer for anything odd."""

from __future__ import annotations

import re
from typing import Any

MAX_ID = 2**63 - 1  # the largest primary key the databases hold
MAX_JSON_DEPTH = 32  # no Prefloop body nests deeper than a few levels
_ID = re.compile(r"[0-9]{1,19}")


def parse_id(value: str | None) -> int | None:
    """A primary key from a query or form value: ASCII digits within the databases' range, else None.

    ``str.isdigit`` is not enough: it accepts ``"²"`` and ``"٣"``, which ``int`` then refuses or
    reads as another number.
    """
    if value is None:
        return None
    value = value.strip()
    if not _ID.fullmatch(value):
        return None
    number = int(value)
    return number if number <= MAX_ID else None


def json_depth_error(data: Any, limit: int = MAX_JSON_DEPTH) -> str | None:
    """Why `data` (parsed JSON) is refused, or None: nested deeper than `limit`, or holding a NUL
    character (PostgreSQL cannot store one in text). Walks without recursion."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > limit:
                break
            for key, item in value.items():
                if "\x00" in key:
                    return "a NUL character (\\u0000) is not allowed in text"
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            if depth > limit:
                break
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str) and "\x00" in value:
            return "a NUL character (\\u0000) is not allowed in text"
    else:
        return None
    return f"the JSON body nests deeper than {limit} levels"
