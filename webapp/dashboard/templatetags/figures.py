"""Figures as people read them: `{{ value|figure }}` rounds floats to four significant digits and
writes lists and dicts as short readable text instead of Python's repr."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()
MAX_ITEMS = 12


def figure_text(value: Any, depth: int = 0) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "–"}[value]
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        if depth >= 2:
            return f"{len(value)} entries"
        items = [f"{k}: {figure_text(v, depth + 1)}" for k, v in list(value.items())[:MAX_ITEMS]]
        more = f"; … {len(value) - MAX_ITEMS} more" if len(value) > MAX_ITEMS else ""
        return "; ".join(items) + more
    if isinstance(value, list | tuple):
        if depth >= 2:
            return f"{len(value)} items"
        items = [figure_text(v, depth + 1) for v in value[:MAX_ITEMS]]
        more = f", … {len(value) - MAX_ITEMS} more" if len(value) > MAX_ITEMS else ""
        return ", ".join(items) + more
    return str(value)


@register.filter
def figure(value: Any) -> str:
    return figure_text(value)
