"""Figures computed over all of a project's labels (its quality report, what a run would train on),
kept in the cache under the state of the data they were computed from.

A page asks for a figure with `figure(...)`: while no label, adjudication, thumb or serving version
has changed since it was computed, the stored one is returned at once; after a change it is
computed again, once. The state is read from primary-key maxima (index lookups), so asking costs a
few milliseconds even with millions of labels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from django.core.cache import cache
from django.db.models import Max

from webapp.feedback.models import Adjudication, Label, Message, MessageFeedback, Project
from webapp.feedback.quality import project_quality

FIGURE_TTL_S = 7 * 24 * 3600
EPOCH_KEY = "prefloop:figures-epoch"


def figures_changed() -> None:
    """Say that data changed in a way the newest ids do not show (a gold answer set, a final
    answer changed): every stored figure is computed again when next asked for."""
    try:
        cache.incr(EPOCH_KEY)
    except ValueError:  # not there yet
        cache.set(EPOCH_KEY, 1, None)


def data_state(*extra: Any) -> str:
    """A short fingerprint of everything a project figure reads: the newest label, adjudication,
    thumb and chat message, the serving version, and `extra` (a recipe, say)."""
    from webapp.runs.selectors import version_serving

    newest = [
        model.objects.aggregate(m=Max("id"))["m"] or 0 for model in (Label, Adjudication, MessageFeedback, Message)
    ]
    serving = version_serving()
    epoch = cache.get(EPOCH_KEY, 0)
    raw = json.dumps([newest, serving.pk if serving else None, epoch, *extra], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def figure(name: str, project: Project, compute: Callable[[], Any], *extra: Any, state: str | None = None) -> Any:
    """`compute()`'s value for `project` in the current data state (`state`: one `data_state()` read
    already, for several figures in one request), from the cache when it has it."""
    key = f"prefloop:figure:{name}:{project.pk}"
    state = state if state is not None else data_state(*extra)
    stored = cache.get(key)
    if isinstance(stored, dict) and stored.get("state") == state:
        return stored["value"]
    value = compute()
    cache.set(key, {"state": state, "value": value}, FIGURE_TTL_S)
    return value


def project_quality_figure(project: Project, *, state: str | None = None) -> dict[str, Any]:
    return figure("quality", project, lambda: project_quality(project=project), state=state)  # type: ignore[no-any-return]
