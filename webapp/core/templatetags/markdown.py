"""`{{ text|markdown }}`: Markdown rendered and sanitised (webapp.core.markdown)."""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString, mark_safe

from webapp.core.markdown import markdown_safe

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    return mark_safe(markdown_safe(text))
