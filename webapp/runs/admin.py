from __future__ import annotations

from django.contrib import admin

from webapp.runs.models import ModelVersion, TrainingRun


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "parent", "created_at", "promoted_at")
    readonly_fields = ("artifact_path", "metrics", "config", "data_hash")


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "status", "trigger", "progress", "n_pairs", "created_at", "finished_at")
    list_filter = ("status", "trigger")
    readonly_fields = ("metrics", "history", "error")
