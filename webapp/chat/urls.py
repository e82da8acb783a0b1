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
    path("message/<int:message_id>/footer/", views.footer, name="footer"),
    path("message/<int:message_id>/compare/", views.compare, name="compare"),
    path("task/<int:task_id>/label/", views.label, name="label"),
    path("message/<int:message_id>/thumbs/", views.thumbs, name="thumbs"),
]
