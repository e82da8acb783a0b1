"""A small demo project so that a new user of `make run` has one task of every kind to try."""

from __future__ import annotations

from webapp.feedback.models import Project
from webapp.feedback.services import tasks_bulk_create

DEMO_PROJECT = "Demo: every judgment kind"
DEMO_GUIDELINES = """Judge the answers as a careful reader would.

- Prefer answers that are correct, then short and clear.
- Use *tie* when two answers are equally good, and *both bad* when neither is acceptable.
- A critique says what is wrong; the rewrite fixes it."""

_ITEMS = [
    ("pairwise", "What is the capital of France?", ["The capital of France is Paris.", "France is a country."]),
    ("pairwise", "How many legs does a cat have?", ["A cat has three legs.", "A cat has four legs."]),
    (
        "ranking",
        "Give me a tip for sleeping well.",
        [
            "Drink coffee before bed.",
            "Go to bed at the same time every night and keep the room dark.",
            "Sleep is nice.",
            "Keep the room dark.",
        ],
    ),
    ("critique", "Tell me a fact about the sun.", ["The sun is a planet at the centre of our solar system."]),
    ("rating", "What is two plus two?", ["Two plus two is four."]),
]


def demo_project_ensure() -> tuple[Project, int]:
    """Create the demo project and its tasks once; return it and how many tasks were added."""
    project, _ = Project.objects.get_or_create(
        name=DEMO_PROJECT,
        defaults={
            "guidelines": DEMO_GUIDELINES,
            "feedback_types": ["pairwise", "ranking", "critique", "rating"],
            "overlap": 2,
        },
    )
    items = [
        {
            "kind": kind,
            "messages": [{"role": "user", "content": question}],
            "candidates": candidates,
            "external_id": f"demo-{i}",
        }
        for i, (kind, question, candidates) in enumerate(_ITEMS)
    ]
    return project, len(tasks_bulk_create(project=project, items=items, created_by=None).tasks)
