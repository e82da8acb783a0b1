from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from webapp.core.views import healthz
from webapp.feedback.views import invitation_accept

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="chat:index", permanent=False)),
    path("healthz", healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("invitations/<str:token>/", invitation_accept, name="invitation_accept"),
    path("chat/", include("webapp.chat.urls")),
    path("annotate/", include("webapp.feedback.urls")),
    path("dashboard/", include("webapp.dashboard.urls")),
    path("api/", include("webapp.api.urls")),
    path("admin/", admin.site.urls),
]

handler400 = "webapp.core.views.bad_request"
handler404 = "webapp.core.views.not_found"
handler500 = "webapp.core.views.server_error"
