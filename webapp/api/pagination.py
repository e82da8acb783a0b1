"""Page-number pagination that refuses a page that is not a positive whole number (REST framework
reads `?page=` as the first page)."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination

from webapp.core.parsing import parse_id


class StrictPageNumberPagination(PageNumberPagination):
    def get_page_number(self, request: Any, paginator: Any) -> Any:
        raw = request.query_params.get(self.page_query_param)
        if raw is not None and raw not in self.last_page_strings and not parse_id(raw):
            raise NotFound(f"Invalid page {raw!r}: pages are numbered from 1.")
        return super().get_page_number(request, paginator)
