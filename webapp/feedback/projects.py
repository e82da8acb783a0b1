"""The default project: where the chat's comparisons and prompts without a project belong."""

from __future__ import annotations

from webapp.feedback.models import Project

DEFAULT_PROJECT_NAME = "Chat"
DEFAULT_GUIDELINES = (
    "Judge which answer is more helpful, honest and harmless for the conversation so far. "
    "Choose *tie* when both are equally good and *both bad* when neither is acceptable."
)


def project_default() -> Project:
    """The project that chat comparisons and prompts without a project belong to."""
    project, _ = Project.objects.get_or_create(
        name=DEFAULT_PROJECT_NAME,
        defaults={"feedback_types": ["pairwise", "thumbs"], "guidelines": DEFAULT_GUIDELINES},
    )
    return project
