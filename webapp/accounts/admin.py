from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from webapp.accounts.models import User


@admin.register(User)
class PrefloopUserAdmin(UserAdmin):
    fieldsets = (*(UserAdmin.fieldsets or ()), ("Prefloop", {"fields": ("role",)}))
    list_display = ("username", "email", "role", "is_staff")
    list_filter = ("role", "is_staff")
