"""People and projects: invitation links that let a person make their own account (and join a
project in a role), and deactivating a person, which also gives back the items they held."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from webapp.accounts.models import User
from webapp.accounts.services import account_check_new, user_ensure, user_set_active
from webapp.feedback.assignments import leases_expire
from webapp.feedback.models import Assignment, Invitation, Project, ProjectMember
from webapp.feedback.services import project_member_add


def person_set_active(*, user: User, active: bool, by: User) -> User:
    """Deactivate a person (no sign-in, no API token, the items they held given back to the queue;
    their labels stay) or let them back in (ValueError: yourself, or the last admin)."""
    with transaction.atomic():
        user_set_active(user=user, active=active, by=by)
        if not active:
            past = timezone.now() - timedelta(seconds=1)
            Assignment.objects.filter(annotator=user, status=Assignment.Status.LEASED).update(expires_at=past)
    if not active:
        leases_expire()
    return user


INVITATION_DAYS = 7


def invitation_create(
    *,
    by: User,
    role: str = User.Role.ANNOTATOR,
    project: Project | None = None,
    project_role: str = "annotator",
    days: float = INVITATION_DAYS,
    note: str = "",
) -> tuple[Invitation, str]:
    """A one-time invitation valid for `days`; return it and its token, which is shown once (only its
    digest is stored)."""
    if role not in User.Role.values:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(User.Role.values)}")
    if project_role not in ProjectMember.Role.values:
        raise ValueError(f"unknown project role {project_role!r}: one of {', '.join(ProjectMember.Role.values)}")
    if not 0 < days <= 90:
        raise ValueError("an invitation lasts more than 0 and at most 90 days")
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        digest=_digest(token),
        role=role,
        project=project,
        project_role=project_role,
        note=note[:200],
        created_by=by,
        expires_at=timezone.now() + timedelta(days=days),
    )
    return invitation, token


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class InvitationInvalid(Exception):
    """The link is unknown, used, revoked or expired (the message says which, in words)."""


def invitation_open(token: str) -> Invitation:
    """The open invitation a link's token names, or InvitationInvalid saying why not."""
    invitation = Invitation.objects.filter(digest=_digest(token)).select_related("project").first()
    if invitation is None:
        raise InvitationInvalid("This invitation link is not known: ask your admin for a new one.")
    state = invitation.state(timezone.now())
    if state != "open":
        raise InvitationInvalid(f"This invitation was {state}: ask your admin for a new one.")
    return invitation


@transaction.atomic
def invitation_accept(*, token: str, username: str, password: str, email: str = "") -> User:
    """Make the account an invitation offers, once: the row is locked, so two tabs submitting the
    same link make one account (the second gets InvitationInvalid)."""
    invitation = invitation_open(token)
    invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if invitation.state(timezone.now()) != "open":
        state = invitation.state(timezone.now())
        raise InvitationInvalid(f"This invitation was {state}: ask your admin for a new one.")
    account_check_new(username=username, password=password, email=email)
    user, _ = user_ensure(username=username, password=password, role=invitation.role, email=email)
    if invitation.project is not None:
        project_member_add(project=invitation.project, user=user, role=invitation.project_role)
    invitation.used_at, invitation.used_by = timezone.now(), user
    invitation.save(update_fields=["used_at", "used_by"])
    return user


def invitation_revoke(*, invitation: Invitation) -> Invitation:
    if invitation.used_at is None and invitation.revoked_at is None:
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
    return invitation
