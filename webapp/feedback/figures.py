"""Figures computed over all of a project's labels (its quality report, what a run would train on),
stored in the database with the state of the data they were computed from (`Figure`).

A page asks for a figure with `figure(name, project, *params)`:

- while no label, adjudication, thumb, chat message or serving version has changed since it was
  computed (and nothing called `figures_changed`), the stored one is returned at once;
- after a change, a figure that was quick to compute (under `INLINE_SECONDS`: a small project) is
  computed again in the request, so a page always shows what was just labelled;
- a slow one (a project of a million labels) is not: the page gets the stored figure at once and a
  worker computes the new one (`prefloop.figure_refresh`, queued once however many pages ask). The
  page says when its figure is from (`figure_age`);
- a project's first figure is computed in the request unless the project has `LARGE_PROJECT`
  items or more: then a worker computes it and the page says so (`figure` returns None).

The state is read from primary-key maxima (index lookups), so asking costs a few milliseconds with
millions of labels. A worker that dies while computing leaves the stored figure in place; the
next page that asks after `REFRESH_RETRY` queues it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import F, Max, Q
from django.utils import timezone
from django.utils.module_loading import import_string

from webapp.feedback.models import (
    Adjudication,
    DataEpoch,
    Figure,
    Label,
    Message,
    MessageFeedback,
    Project,
    Task,
)

logger = logging.getLogger(__name__)

# what computes each figure: a function of (project, *params), by dotted name (the worker finds it)
FIGURES = {
    "quality": "webapp.feedback.quality.quality_figure",
    "training-preview": "webapp.runs.data.preview_figure",
}
INLINE_SECONDS = 0.25  # a figure computed faster than this is computed again in the request
REFRESH_RETRY = timedelta(minutes=10)  # a refresh queued this long ago with no figure yet is queued again
LARGE_PROJECT = 10_000  # items from which a project's first figure is left to a worker


def figures_changed() -> None:
    """Say that data changed in a way the newest ids do not show (a gold answer set, a final
    answer changed): every stored figure is computed again when next asked for."""
    if not DataEpoch.objects.filter(pk=1).update(value=F("value") + 1):
        DataEpoch.objects.get_or_create(pk=1, defaults={"value": 1})


def data_state() -> str:
    """A short fingerprint of everything a project figure reads: the newest label, adjudication,
    thumb and chat message, the serving version, and the count of `figures_changed` calls."""
    from webapp.runs.selectors import version_serving

    newest = [
        model.objects.aggregate(m=Max("id"))["m"] or 0 for model in (Label, Adjudication, MessageFeedback, Message)
    ]
    serving = version_serving()
    epoch = DataEpoch.objects.filter(pk=1).values_list("value", flat=True).first() or 0
    raw = json.dumps([newest, serving.pk if serving else None, epoch])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _params_key(params: tuple[Any, ...] | list[Any]) -> str:
    raw = json.dumps(list(params), sort_keys=True, cls=DjangoJSONEncoder)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def figure(name: str, project: Project, *params: Any, state: str | None = None) -> Any:
    """Figure `name` of `project` (computed with `params`, a recipe say) in the current data state,
    or the stored one while a worker computes it again (see the module). `state`: one
    `data_state()` read already, for several figures in one request."""
    return figure_with_age(name, project, *params, state=state)[0]


def figure_with_age(
    name: str, project: Project, *params: Any, state: str | None = None
) -> tuple[Any, dict[str, Any] | None]:
    """`figure` and `figure_age` from one read of the stored figure: what a page shows with it."""
    state = state if state is not None else data_state()
    key = _params_key(params)
    stored = Figure.objects.filter(project=project, name=name, params_key=key).first()
    if stored is not None and stored.state == state:
        return stored.value, _age(stored, state)
    quick = stored.computed_at is not None and stored.seconds <= INLINE_SECONDS if stored else not _large(project)
    if quick:
        stored = figure_compute(project, name, list(params), state)
        return stored.value, _age(stored, state)
    if stored is None:  # a large project's first figure: a placeholder the worker fills
        stored, _ = Figure.objects.get_or_create(
            project=project, name=name, params_key=key, defaults={"params": list(params), "value": None}
        )
    _refresh_queue(stored)
    return stored.value, _age(stored, state)


def _large(project: Project) -> bool:
    """Whether the project has `LARGE_PROJECT` items or more (counting no further, over an index)."""
    return Task.objects.filter(project=project).values("id")[:LARGE_PROJECT].count() >= LARGE_PROJECT


def _age(stored: Figure, state: str) -> dict[str, Any]:
    return {
        "computed_at": stored.computed_at,
        "stale": stored.state != state,
        "pending": stored.computed_at is None,
        "seconds": stored.seconds,
    }


def figure_age(name: str, project: Project, *params: Any, state: str | None = None) -> dict[str, Any] | None:
    """When the stored figure was computed, whether it is behind the data, and whether it is still to
    be computed for the first time (`pending`); None when none is stored. Computes nothing."""
    state = state if state is not None else data_state()
    stored = Figure.objects.filter(project=project, name=name, params_key=_params_key(params)).first()
    return None if stored is None else _age(stored, state)


def figure_compute(project: Project, name: str, params: list[Any], state: str) -> Figure:
    """Compute a figure now and store it with `state` (read before computing, so a change made
    meanwhile shows as a newer state)."""
    compute = import_string(FIGURES[name])
    started = time.perf_counter()
    value = json.loads(json.dumps(compute(project, *params), cls=DjangoJSONEncoder))  # as it is stored
    stored, _ = Figure.objects.update_or_create(
        project=project,
        name=name,
        params_key=_params_key(params),
        defaults={
            "params": params,
            "state": state,
            "value": value,
            "seconds": round(time.perf_counter() - started, 4),
            "computed_at": timezone.now(),
            "refresh_queued_at": None,
        },
    )
    return stored


def _refresh_queue(stored: Figure) -> None:
    """Queue a worker's computation of a stale figure, once: a refresh already queued (and not
    lost, `REFRESH_RETRY`) is not queued again."""
    from webapp.core.queue import broker_send

    now = timezone.now()
    claimed = (
        Figure.objects.filter(pk=stored.pk)
        .filter(Q(refresh_queued_at__isnull=True) | Q(refresh_queued_at__lt=now - REFRESH_RETRY))
        .update(refresh_queued_at=now)
    )
    if claimed:
        transaction.on_commit(lambda: broker_send("prefloop.figure_refresh", args=[stored.pk], queue="cpu"))


def figure_refresh(*, figure_id: int) -> Figure | None:
    """A worker's half: compute a stored figure again if the data moved on (the row may be gone)."""
    stored = Figure.objects.select_related("project").filter(pk=figure_id).first()
    if stored is None:
        return None
    state = data_state()
    if stored.state == state:
        Figure.objects.filter(pk=figure_id).update(refresh_queued_at=None)
        return stored
    return figure_compute(stored.project, stored.name, stored.params, state)


def figures_warm(project: Project) -> None:
    """After a large change (an import, on its worker), compute the project's quality report, so
    the first page that asks finds it. A failure is logged: the page computes it then."""
    try:
        figure_compute(project, "quality", [], data_state())
    except Exception:  # a figure must never fail the job that warmed it
        logger.exception("the quality report of project %s could not be computed", project.pk)


def project_quality_figure(project: Project, *, state: str | None = None) -> dict[str, Any] | None:
    """The project's quality report (None: a worker computes it for the first time)."""
    return figure("quality", project, state=state)  # type: ignore[no-any-return]
