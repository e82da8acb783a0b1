from __future__ import annotations

from django.urls import path

from webapp.chat import views

app_name = "chat"
urlpatterns = [
    path("", views.index, name="index"),
    path("new/", views.new, name="new"),
    path("<int:conversation_id>/", views.conversation, name="conversation"),
    path("<int:conversation_id>/send/", views.send, name="send"),
    path("message/<int:message_id>/stream/", views.stream, name="stream"),
    path("<int:conversation_id>/settings/", views.conversation_settings, name="settings"),
    path("message/<int:message_id>/", views.message, name="message"),
    path("message/<int:message_id>/regenerate/", views.regenerate, name="regenerate"),
    path("message/<int:message_id>/edit/", views.edit, name="edit"),
    path("message/<int:message_id>/switch/", views.switch, name="switch"),
    path("message/<int:message_id>/rank/", views.rank, name="rank"),
    path("message/<int:message_id>/compare/", views.compare, name="compare"),
    path("task/<int:task_id>/label/", views.label, name="label"),
    path("message/<int:message_id>/thumbs/", views.thumbs, name="thumbs"),
]
