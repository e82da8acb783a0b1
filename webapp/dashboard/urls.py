from __future__ import annotations

from django.urls import path

from webapp.dashboard import views

app_name = "dashboard"
urlpatterns = [
    path("", views.index, name="index"),
    path("runs/", views.runs, name="runs"),
    path("runs/new/", views.run_new, name="run_new"),
    path("runs/<int:run_id>/", views.run_detail, name="run"),
    path("runs/<int:run_id>/cancel/", views.run_cancel, name="run_cancel"),
    path("versions/<int:version_id>/promote/", views.version_promote, name="version_promote"),
    path("reward-models/<int:reward_model_id>/promote/", views.reward_model_promote, name="reward_model_promote"),
    path("projects/<int:project_id>/recipe/", views.recipe, name="recipe"),
    path("projects/<int:project_id>/arena/", views.arena, name="arena"),
    path("quality/", views.quality, name="quality"),
    path("imports/", views.imports, name="imports"),
    path("jobs/", views.jobs, name="jobs"),
    path("jobs/<str:kind>/<int:job_id>/cancel/", views.job_cancel_view, name="job_cancel"),
    path("generation/", views.generation, name="generation"),
    path("generation/new/", views.generate, name="generate"),
]
