from __future__ import annotations

import json

from django.contrib import admin
from django.http import StreamingHttpResponse

from webapp.core.http import streaming_response
from webapp.feedback.models import (
    Assignment,
    Candidate,
    Conversation,
    Label,
    Message,
    MessageFeedback,
    Project,
    ProjectMember,
    Prompt,
    Task,
    TaskCandidate,
)
from webapp.feedback.transfer import export_rows


class MemberInline(admin.TabularInline):
    model = ProjectMember
    extra = 0


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "overlap", "gold_rate", "created_at")
    inlines = [MemberInline]
    actions = ["export_preference", "export_raw"]

    def _export(self, request, queryset, kind: str) -> StreamingHttpResponse:  # type: ignore[no-untyped-def]
        def rows():  # type: ignore[no-untyped-def]
            for project in queryset:
                for row in export_rows(kind=kind, project=project):
                    yield json.dumps(row, ensure_ascii=False) + "\n"

        response = streaming_response(request, rows(), content_type="application/x-ndjson")
        response["Content-Disposition"] = f'attachment; filename="prefloop-{kind}.jsonl"'
        return response

    @admin.action(description="Export preference pairs (TRL format, JSON lines)")
    def export_preference(self, request, queryset):  # type: ignore[no-untyped-def]
        return self._export(request, queryset, "preference")

    @admin.action(description="Export raw per-annotator labels (JSON lines)")
    def export_raw(self, request, queryset):  # type: ignore[no-untyped-def]
        return self._export(request, queryset, "raw")


class SlotInline(admin.TabularInline):
    model = TaskCandidate
    extra = 0
    raw_id_fields = ("candidate",)


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "kind", "required_labels", "is_gold", "created_at")
    list_filter = ("project", "kind", "is_gold")
    raw_id_fields = ("prompt", "message", "created_by")
    inlines = [SlotInline]


@admin.register(Label)
class LabelAdmin(admin.ModelAdmin):
    """Raw labels are evidence: readable here, never edited."""

    list_display = ("id", "task", "annotator", "kind", "choice", "strength", "rating", "source", "created_at")
    list_filter = ("kind", "source", "task__project")

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ("id", "task", "annotator", "status", "expires_at", "skip_reason")
    list_filter = ("status",)


admin.site.register([Conversation, Message, Prompt, Candidate, MessageFeedback])
