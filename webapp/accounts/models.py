from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """A person using Prefloop. The role decides what they may do; staff users are admins."""

    class Role(models.TextChoices):
        ANNOTATOR = "annotator", "Annotator"
        ADMIN = "admin", "Admin"

    role = models.CharField(max_length=16, choices=Role.choices, default=Role.ANNOTATOR)

    def __str__(self) -> str:
        return self.username

    @property
    def is_prefloop_admin(self) -> bool:
        return self.is_superuser or self.role == self.Role.ADMIN
