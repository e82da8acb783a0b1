from __future__ import annotations

from django.urls import path

from webapp.dashboard import explore, hooks, people, projects, transfer, views

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
    path("projects/<int:project_id>/recipe/preview/", views.recipe_preview, name="recipe_preview"),
    path("projects/<int:project_id>/arena/", views.arena, name="arena"),
    path("quality/", views.quality, name="quality"),
    path("imports/", views.imports, name="imports"),
    path("jobs/", views.jobs, name="jobs"),
    path("jobs/<str:kind>/<int:job_id>/cancel/", views.job_cancel_view, name="job_cancel"),
    path("generation/", views.generation, name="generation"),
    path("generation/new/", views.generate, name="generate"),
    path("projects/", projects.project_list, name="projects"),
    path("projects/new/", projects.project_new, name="project_new"),
    path("projects/<int:project_id>/", projects.project_detail, name="project"),
    path("projects/<int:project_id>/archive/", projects.project_archive, name="project_archive"),
    path("projects/<int:project_id>/members/", projects.project_member, name="project_member"),
    path("projects/<int:project_id>/import/", transfer.project_import, name="project_import"),
    path("projects/<int:project_id>/export/", transfer.project_export, name="project_export"),
    path("imports/<int:job_id>/", transfer.import_detail, name="import"),
    path("imports/<int:job_id>/bad-lines.csv", transfer.import_bad_lines, name="import_bad_lines"),
    path("explore/", explore.explorer, name="explore"),
    path("items/<int:task_id>/", explore.item, name="item"),
    path("webhooks/", hooks.hooks, name="hooks"),
    path("webhooks/<int:hook_id>/", hooks.hook_detail, name="hook"),
    path("webhooks/<int:hook_id>/active/", hooks.hook_active, name="hook_active"),
    path("webhooks/deliveries/<int:delivery_id>/again/", hooks.delivery_resend, name="delivery_resend"),
    path("people/", people.people, name="people"),
    path("people/new/", people.person_new, name="person_new"),
    path("people/invitations/", people.invitation_new, name="invitation_new"),
    path("people/invitations/<int:invitation_id>/revoke/", people.invitation_revoke, name="invitation_revoke"),
    path("person/<str:username>/", people.person, name="person"),
    path("person/<str:username>/active/", people.person_active, name="person_active"),
]
