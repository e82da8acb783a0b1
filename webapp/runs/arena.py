"""The version arena: blind comparisons of two versions' answers, judged by people in a project's
queue, fitted into a Bradley-Terry leaderboard with bootstrap intervals (training.arena), and, for
a project whose recipe asks for it, a gate: a candidate serves once its interval is above the
serving version's and is rejected once it is below."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from training.arena import leaderboard
from webapp.feedback.models import Label, Project, Task
from webapp.feedback.selectors import slots_prefetch
from webapp.runs.models import ModelVersion

logger = logging.getLogger(__name__)

# Fewer judgments decide nothing: a handful of one-sided ones gives the bootstrap no spread to show.
ARENA_MIN_COMPARISONS = 10
OUTCOMES: dict[str, float] = {
    Label.Choice.A: 1.0,
    Label.Choice.B: 0.0,
    Label.Choice.TIE: 0.5,
    Label.Choice.BOTH_BAD: 0.5,
}


def arena_comparisons(*, project: Project, versions: set[int] | None = None) -> list[tuple[str, str, float]]:
    """Every judgment of the project's arena items as (version shown as A, version shown as B,
    1 / ½ / 0 for A); with `versions` (numbers), only comparisons between those."""
    tasks = (
        Task.objects.filter(project=project, arena=True, is_gold=False)
        .prefetch_related(slots_prefetch(), "labels")
        .order_by("id")
    )
    out = []
    for task in tasks:
        slots = sorted(task.slots.all(), key=lambda s: s.position)
        numbers = [s.candidate.policy_version.number for s in slots if s.candidate.policy_version]
        if len(numbers) != 2 or numbers[0] == numbers[1]:
            continue
        if versions is not None and not set(numbers) <= versions:
            continue
        for label in task.labels.all():
            if label.choice in OUTCOMES:
                out.append((f"v{numbers[0]}", f"v{numbers[1]}", OUTCOMES[label.choice]))
    return out


def arena_board(*, project: Project, rounds: int = 200) -> dict[str, Any]:
    """The project's leaderboard of versions, best first, each row beside the reward model's win
    rate (plain and length-controlled) from that version's gate."""
    comparisons = arena_comparisons(project=project)
    rows = leaderboard(comparisons, rounds=rounds)
    gates = {f"v{v.number}": v for v in ModelVersion.objects.filter(number__in=[int(r["name"][1:]) for r in rows])}
    for row in rows:
        version = gates[row["name"]]
        win_rate: dict[str, Any] = next((c for c in version.gate.get("checks", []) if c.get("name") == "win_rate"), {})
        row.update(
            version=version.number,
            status=version.status,
            reward_model_win_rate=win_rate.get("value"),
            reward_model_win_rate_length_controlled=(win_rate.get("detail") or {}).get("length_controlled"),
        )
    return {"comparisons": len(comparisons), "versions": rows}


def arena_verdict(*, project: Project, candidate: ModelVersion, serving: ModelVersion) -> tuple[str, str]:
    """`passed` when the candidate's interval lies above the serving version's, `rejected` when
    below, else `waiting` (fewer than ARENA_MIN_COMPARISONS comparisons, or intervals that
    overlap); with the figures."""
    comparisons = arena_comparisons(project=project, versions={candidate.number, serving.number})
    rows = {r["name"]: r for r in leaderboard(comparisons)}
    mine, theirs = rows.get(f"v{candidate.number}"), rows.get(f"v{serving.number}")
    if mine is None or theirs is None or len(comparisons) < ARENA_MIN_COMPARISONS:
        return "waiting", f"{len(comparisons)} of at least {ARENA_MIN_COMPARISONS} comparisons"

    def shown(version: ModelVersion, row: dict[str, Any]) -> str:
        return f"{version} {row['rating']:.0f} [{row['low']:.0f}, {row['high']:.0f}]"

    note = f"arena over {len(comparisons)} comparisons: {shown(candidate, mine)}, {shown(serving, theirs)}"
    if mine["low"] > theirs["high"]:
        return "passed", note
    if mine["high"] < theirs["low"]:
        return "rejected", note
    return "waiting", note


def arena_gate_open(
    *, version: ModelVersion, serving: ModelVersion, project: Project, prompts: int, gate: dict
) -> dict:
    """After the automatic checks passed: the candidate waits for people's blind comparisons with
    the serving version, queued on `prompts` of the project's prompts. Returns the gate to record."""
    from webapp.feedback.generation import arena_job_create

    with transaction.atomic():
        job = arena_job_create(project=project, versions=(version, serving), prompts=prompts)
    return {
        **gate,
        "verdict": "waiting",
        "reason": f"{gate['reason']}; waiting for the arena against {serving}",
        "arena": {"against": serving.number, "job": job.pk, "project": project.pk},
    }


def arena_gates_check() -> dict[str, list[int]]:
    """Decide every candidate waiting on the arena (called by beat): serve it, reject it, or let it
    wait. Returns the version numbers served and rejected."""
    from webapp.runs.selectors import version_serving
    from webapp.runs.services import ServingChanged, version_gate_record, version_serve

    decided: dict[str, list[int]] = {"served": [], "rejected": []}
    waiting = ModelVersion.objects.filter(status=ModelVersion.Status.CANDIDATE, gate__verdict="waiting")
    for version in waiting:
        arena = version.gate.get("arena") or {}
        serving = version_serving()
        project = Project.objects.filter(pk=int(arena.get("project") or 0)).first()
        if serving is None or project is None or serving.number != arena.get("against"):
            continue  # not an arena wait, or the serving version changed: an admin decides
        verdict, note = arena_verdict(project=project, candidate=version, serving=serving)
        if verdict == "waiting":
            continue
        gate = {**version.gate, "verdict": verdict, "reason": f"{version.gate['reason']}; {note}"}
        version_gate_record(version=version, gate=gate)
        if verdict == "rejected":
            decided["rejected"].append(version.number)
            continue
        try:
            version_serve(version=version, expected_serving=serving, reason=f"won the arena against {serving}: {note}")
            decided["served"].append(version.number)
        except ServingChanged as exc:
            logger.info("%s: %s", version, exc)
    return decided
