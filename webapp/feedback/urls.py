from __future__ import annotations

from django.urls import path

from webapp.feedback import views

app_name = "feedback"
urlpatterns = [
    path("", views.index, name="index"),
    path("<int:project_id>/", views.project_page, name="project"),
    path("assignment/<int:assignment_id>/submit/", views.submit, name="submit"),
    path("assignment/<int:assignment_id>/skip/", views.skip, name="skip"),
]
