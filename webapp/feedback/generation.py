"""Generation as work of its own: the policy answers a project's prompts on a worker (the `generate`
queue), K answers per prompt, each stamped with the version that wrote it, and the answers become
items of the project's queue. Nothing generates inside a web request but the chat itself.

- `generation_job_create` queues a job: for the project's open prompts (imported, made through the
  API, or listed), or, after a promotion, to refresh unserved items with the new version's answers;
  `arena_job_create` has two versions answer the same prompts for blind comparisons
  (webapp.runs.arena);
- `generation_job_run` (the worker's task) does it batch by batch, recording counts as it goes;
- the one reaper (webapp.core.jobs.jobs_reap) sends again the jobs the broker never took and queues
  again jobs whose worker was lost: a job's work is idempotent, so a restart redoes nothing stored.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet

from webapp.accounts.models import User
from webapp.core.jobs import JobGuard, JobStatus, job_enqueue, job_finish, job_guarded, job_start
from webapp.feedback.models import (
    Assignment,
    Candidate,
    GenerationJob,
    Message,
    Project,
    Prompt,
    Task,
    TaskCandidate,
)
from webapp.feedback.selectors import slots_prefetch
from webapp.runs import policy
from webapp.runs.models import ModelVersion
from webapp.runs.selectors import version_serving

logger = logging.getLogger(__name__)

BATCH_PROMPTS = 8  # prompts sent to the policy server at once (it batches concurrent requests)
RESAMPLE_TEMPERATURES = (1.0, 1.3)
NO_VERSION = "no policy version is serving yet"

# contexts, each prompt's answers -> how much a label of each item would teach (webapp.feedback.models.Task.priority)
Scorer = Callable[[list[list[dict[str, str]]], list[list[str]]], list[float]]


def prompts_open(project: Project) -> QuerySet[Prompt]:
    """The project's prompts that have no item yet."""
    return Prompt.objects.filter(project=project).filter(~Exists(Task.objects.filter(prompt=OuterRef("pk"))))


def tasks_stale(project: Project, version: ModelVersion) -> QuerySet[Task]:
    """Items nobody was ever served whose answers all came from a version other than `version`:
    those a refresh replaces. Gold items, arena items, items with a human or imported answer and the
    chat's own comparisons (the person who asked judges them in the chat) are kept."""
    foreign = TaskCandidate.objects.filter(task=OuterRef("pk")).filter(
        ~Q(candidate__origin=Candidate.Origin.POLICY)
        | Q(candidate__policy_version__isnull=True)
        | Q(candidate__policy_version=version)
    )
    return Task.objects.filter(project=project, is_gold=False, arena=False, message__isnull=True, taken=0).filter(
        ~Exists(Assignment.objects.filter(task=OuterRef("pk"))),
        ~Exists(foreign),
        Exists(TaskCandidate.objects.filter(task=OuterRef("pk"))),
    )


def task_kind_for(project: Project) -> str:
    """Pairwise items for K = 2 (when the project asks for pairwise judgments), ranking otherwise."""
    if project.answers_per_prompt == 2 and Task.Kind.PAIRWISE in project.feedback_types:
        return Task.Kind.PAIRWISE
    return Task.Kind.RANKING


def generation_settings_error(project: Project) -> str | None:
    """Why the project's prompts cannot become items, or None."""
    kind = task_kind_for(project)
    if kind not in project.feedback_types:
        return (
            f"answers_per_prompt={project.answers_per_prompt} makes {kind} items, but the project asks for "
            f"{', '.join(project.feedback_types) or 'no'} judgments"
        )
    return None


def generation_job_create(
    *,
    project: Project,
    created_by: User | None = None,
    kind: str = GenerationJob.Kind.PROMPTS,
    prompt_ids: list[int] | None = None,
) -> GenerationJob:
    """Queue a job, sent to a worker once the transaction commits. A job for every open prompt of a
    project that is still queued covers a second request: it is returned instead of a new one."""
    if prompt_ids is None:
        waiting = GenerationJob.objects.filter(
            project=project, kind=kind, status=GenerationJob.Status.QUEUED, prompt_ids__isnull=True
        ).first()
        if waiting is not None:
            return waiting
    job = GenerationJob.objects.create(project=project, kind=kind, prompt_ids=prompt_ids, created_by=created_by)
    transaction.on_commit(lambda: _enqueue(job.pk))
    return job


def arena_job_create(
    *, project: Project, versions: tuple[ModelVersion, ModelVersion], prompts: int, created_by: User | None = None
) -> GenerationJob:
    """Queue blind comparisons of two versions on the project's `prompts` newest prompts: each
    version answers each prompt once, and the pair becomes a pairwise item with its sides shuffled.
    Raises ValueError when the project cannot hold them."""
    first, second = versions
    if first.pk == second.pk:
        raise ValueError("an arena compares two different versions")
    if Task.Kind.PAIRWISE not in project.feedback_types:
        raise ValueError("arena comparisons are pairwise judgments: add pairwise to the project's feedback_types")
    ids = list(Prompt.objects.filter(project=project).order_by("-id").values_list("id", flat=True)[:prompts])
    if not ids:
        raise ValueError(f"project {project.name!r} has no prompts to compare the versions on")
    job = GenerationJob.objects.create(
        project=project,
        kind=GenerationJob.Kind.ARENA,
        prompt_ids=sorted(ids),
        versions=[first.pk, second.pk],
        created_by=created_by,
    )
    transaction.on_commit(lambda: _enqueue(job.pk))
    return job


def _enqueue(job_id: int) -> None:
    """Send the job to a worker; with the broker down it waits, and the reaper sends it later."""
    job = GenerationJob.objects.filter(pk=job_id).first()
    if job is not None:
        job_enqueue(job)


def refresh_after_promotion(*, version: ModelVersion) -> list[GenerationJob]:
    """Queue a refresh for each project with unserved items that an older version answered."""
    jobs = []
    for project in Project.objects.filter(regenerate_share__gt=0, archived_at__isnull=True):
        if tasks_stale(project, version).exists():
            jobs.append(generation_job_create(project=project, kind=GenerationJob.Kind.REFRESH))
    return jobs


@dataclass
class _Work:
    prompt: Prompt
    replaces: int | None = None  # the stale item a refresh replaces


def _work_for(job: GenerationJob, version: ModelVersion) -> list[_Work]:
    project = job.project
    if job.kind == GenerationJob.Kind.ARENA:
        return [_Work(prompt) for prompt in Prompt.objects.filter(pk__in=job.prompt_ids or []).order_by("id")]
    if job.kind == GenerationJob.Kind.REFRESH:
        stale = list(tasks_stale(project, version).select_related("prompt").order_by("id"))
        keep = math.ceil(project.regenerate_share * len(stale))
        chosen = sorted(random.Random(job.pk).sample(stale, keep), key=lambda t: t.pk)
        return [_Work(task.prompt, replaces=task.pk) for task in chosen]
    prompts = prompts_open(project).order_by("id")
    if job.prompt_ids is not None:
        prompts = prompts.filter(pk__in=job.prompt_ids)
    return [_Work(prompt) for prompt in prompts]


def _sample(
    messages: list[dict[str, str]], *, project: Project, version: ModelVersion, n: int, temperature: float = 0.0
) -> list[str]:
    """`n` answers with the project's sampling settings, at least as hot as `temperature`."""
    return policy.generate(
        messages,
        n=n,
        version=version,
        temperature=max(temperature, project.temperature),
        top_p=project.top_p,
        max_tokens=project.max_tokens,
    )


def answers_for(
    messages: list[dict[str, str]], *, project: Project, version: ModelVersion, k: int | None = None
) -> list[str]:
    """K answers (the project's `answers_per_prompt` unless `k`) to `messages` with the project's
    sampling settings, different from each other when the policy can give them: twins teach
    nothing, so up to twice more are sampled, hotter, to replace them."""
    k = k or project.answers_per_prompt
    texts = _sample(messages, project=project, version=version, n=k)
    distinct = list(dict.fromkeys(t for t in texts if t.strip()))
    for temperature in RESAMPLE_TEMPERATURES:
        if len(distinct) >= k:
            break
        more = _sample(messages, project=project, version=version, n=k, temperature=temperature)
        distinct.extend(t for t in dict.fromkeys(more) if t.strip() and t not in distinct)
    if len(distinct) < k:  # the policy keeps saying the same: keep its answers as they are
        distinct += texts[: k - len(distinct)]
    return distinct[:k]


def generation_job_run(*, job_id: int, score: Scorer | None = None) -> GenerationJob | None:
    """Do a queued job under the job lifecycle (webapp.core.jobs): answers for each prompt, in
    batches, each batch stored in one transaction with the job's counts. A message delivered twice
    runs it once (only a queued job starts); a cancel stops it between batches, keeping the items
    made; a job whose worker was lost is queued again by the reaper and answers what is left."""
    if job_start(GenerationJob, job_id) is None:
        return None
    job_guarded(GenerationJob, job_id, lambda guard: _generate(job_id, score, guard),
                cancelled="cancelled while it ran; the items it made stay")  # fmt: skip
    return GenerationJob.objects.get(pk=job_id)


def _generate(job_id: int, score: Scorer | None, guard: JobGuard) -> None:
    job = GenerationJob.objects.select_related("project").get(pk=job_id)
    writers, problem = _writers(job)
    if problem:
        job_finish(GenerationJob, job_id, JobStatus.FAILED, error=problem, attempt=guard.attempt)
        return
    work = _work_for(job, writers[0])
    # a job run again (its worker was lost) counts what is left; the items it made before stay counted
    GenerationJob.objects.filter(pk=job.pk).update(
        policy_version=writers[0] if len(writers) == 1 else None,
        prompts_total=len(work),
        prompts_done=0,
        failed=0,
    )
    job.refresh_from_db()
    errors: list[str] = []
    for start in range(0, len(work), BATCH_PROMPTS):
        guard.check()
        batch = work[start : start + BATCH_PROMPTS]
        with ThreadPoolExecutor(max_workers=len(batch)) as pool:
            results = list(pool.map(lambda w: _answer(w, job.project, writers), batch))
        done = [(w, texts) for w, texts in zip(batch, results, strict=True) if isinstance(texts, list)]
        errors += [r for r in results if isinstance(r, str)]
        priorities = _priorities(score, [w.prompt.messages for w, _ in done], [t for _, t in done])
        with transaction.atomic():
            created = sum(
                _store(w, texts, priority, job=job, writers=writers)
                for (w, texts), priority in zip(done, priorities, strict=True)
            )
            GenerationJob.objects.filter(pk=job.pk).update(
                prompts_done=job.prompts_done + len(batch),
                tasks_created=job.tasks_created + created,
                failed=job.failed + len(batch) - len(done),
            )
        job.refresh_from_db()
        logger.info("generation %s: %d of %d prompts answered", job.pk, job.prompts_done, len(work))
    failed = bool(work) and job.failed == len(work)
    status = JobStatus.FAILED if failed else JobStatus.SUCCEEDED
    job_finish(GenerationJob, job_id, status, error="; ".join(dict.fromkeys(errors))[:2000], attempt=guard.attempt)


def _writers(job: GenerationJob) -> tuple[list[ModelVersion], str]:
    """The versions that answer: the serving one, or an arena's two (loaded into the policy
    server, which may not have a candidate yet); and why the job cannot run, if it cannot."""
    if job.kind != GenerationJob.Kind.ARENA:
        version = version_serving()
        return ([version], generation_settings_error(job.project) or "") if version else ([], NO_VERSION)
    found = {v.pk: v for v in ModelVersion.objects.filter(pk__in=job.versions or [])}
    if len(found) != 2:
        return [], "an arena needs two versions, and one of them is gone"
    writers = [found[pk] for pk in job.versions or []]
    try:
        for version in writers:
            policy.adapter_load(version)
    except policy.PolicyServerError as exc:
        return [], str(exc)
    return writers, ""


def _answer(work: _Work, project: Project, writers: list[ModelVersion]) -> list[str] | str:
    """The item's answers: K from the one writer, or one from each of an arena's two."""
    from django.db import connection

    try:
        if len(writers) == 1:
            return answers_for(work.prompt.messages, project=project, version=writers[0])
        return _arena_pair(work.prompt.messages, project=project, writers=writers)
    except policy.PolicyServerError as exc:
        return str(exc)
    finally:
        connection.close()  # the thread's own connection, if anything opened one


def _arena_pair(messages: list[dict[str, str]], *, project: Project, writers: list[ModelVersion]) -> list[str]:
    """One answer from each of an arena's two versions, different texts: two equal answers ask people
    to compare nothing, so both are sampled again, hotter; [] when they keep writing the same."""
    texts = [_sample(messages, project=project, version=v, n=1)[0] for v in writers]
    for temperature in RESAMPLE_TEMPERATURES:
        if texts[0].strip() != texts[1].strip():
            return texts
        texts = [_sample(messages, project=project, version=v, n=1, temperature=temperature)[0] for v in writers]
    return texts if texts[0].strip() != texts[1].strip() else []


def _priorities(score: Scorer | None, contexts: list[list[dict[str, str]]], answers: list[list[str]]) -> list[float]:
    if score is None or not contexts:
        return [0.0] * len(contexts)
    try:
        return [float(p) for p in score(contexts, answers)]
    except Exception:  # a reward model that cannot score must not lose the answers
        logger.exception("scoring generated answers failed; they are queued without a priority")
        return [0.0] * len(contexts)


def _store(work: _Work, texts: list[str], priority: float, *, job: GenerationJob, writers: list[ModelVersion]) -> int:
    """Store one prompt's answers as an item; 0 when another job or a person got there first."""
    project = job.project
    arena = job.kind == GenerationJob.Kind.ARENA
    versions = list(writers) if arena else writers * len(texts)
    if work.replaces is not None:
        old = Task.objects.select_for_update(skip_locked=True).filter(pk=work.replaces, taken=0).first()
        if old is None or Assignment.objects.filter(task=old).exists():
            return 0  # served meanwhile: it stays as it is
        old.delete()
    elif arena:
        compared = Task.objects.filter(prompt=work.prompt, arena=True)
        for version in writers:
            compared = compared.filter(slots__candidate__policy_version=version)
        if compared.exists():
            return 0
        if random.Random(f"{job.pk}-{work.prompt.pk}").random() < 0.5:  # sides shuffled, the same on a re-run
            texts, versions = texts[::-1], versions[::-1]
    elif Task.objects.filter(prompt=work.prompt).exists():
        return 0
    if arena and not texts:  # the two versions kept writing the same answer: no comparison to make
        return 0
    kind = Task.Kind.PAIRWISE if arena else task_kind_for(project)
    item_create(work.prompt, texts, versions, kind=kind, priority=priority, arena=arena)
    return 1


def item_create(
    prompt: Prompt,
    texts: list[str],
    versions: list[ModelVersion],
    *,
    kind: str,
    priority: float = 0.0,
    arena: bool = False,
    message: Message | None = None,
) -> Task:
    """Call inside a transaction: an item of the prompt's project over `texts` (shown in this
    order), each written by its version; `message` is the chat turn a comparison was asked for."""
    task = Task.objects.create(
        project=prompt.project,
        kind=kind,
        prompt=prompt,
        message=message,
        created_by=prompt.created_by,  # the prompt's author sees its item in their list
        required_labels=prompt.project.overlap,
        priority=priority,
        arena=arena,
    )
    for position, (text, version) in enumerate(zip(texts, versions, strict=True)):
        candidate = Candidate.objects.create(prompt=prompt, text=text, policy_version=version)
        TaskCandidate.objects.create(task=task, candidate=candidate, position=position)
    return task


def items_for_people(*, pairs: list[tuple[Prompt, list[str], float]], version: ModelVersion) -> int:
    """Pairs the reward ensemble could not decide (online DPO), as pairwise items of their prompts'
    projects, each ranked by the ensemble's disagreement on it; returns how many."""
    with transaction.atomic():
        for prompt, texts, disagreement in pairs:
            item_create(prompt, texts, [version, version], kind=Task.Kind.PAIRWISE, priority=disagreement)
    return len(pairs)


def queue_rescore(*, project: Project, score: Scorer, batch: int = 64) -> int:
    """Write the priority of every open item of `project` again (after a new reward model); return how many."""
    open_tasks = Task.objects.filter(project=project, is_gold=False, taken__lt=F("required_labels"))
    done = 0
    last = 0
    while True:
        tasks = list(
            open_tasks.filter(pk__gt=last)
            .order_by("pk")
            .select_related("prompt")
            .prefetch_related(slots_prefetch())[:batch]
        )
        if not tasks:
            return done
        contexts = [t.prompt.messages for t in tasks]
        answers = [[s.candidate.text for s in t.slots.all()] for t in tasks]
        for task, priority in zip(tasks, _priorities(score, contexts, answers), strict=True):
            task.priority = priority
        Task.objects.bulk_update(tasks, ["priority"])
        done += len(tasks)
        last = tasks[-1].pk


def generation_job_run_scored(
    *, job_id: int, scorer_for: Callable[[Project | None], Scorer | None]
) -> GenerationJob | None:
    """Run the job, each item ranked by `scorer_for(project)` where the project's queue is ordered by
    uncertainty (the worker passes the serving reward model's disagreement)."""
    project = Project.objects.filter(generation_jobs=job_id).first()
    needs_score = project is not None and project.queue_order == Project.QueueOrder.UNCERTAINTY
    job = generation_job_run(job_id=job_id, score=scorer_for(project) if needs_score else None)
    if job is not None:
        logger.info("generation %s: %s, %d items from %d prompts", job_id, job.status, job.tasks_created,
                    job.prompts_total)  # fmt: skip
    return job


def queue_rescore_project(*, project_id: int, scorer_for: Callable[[Project | None], Scorer | None]) -> int:
    """Rank the project's open items again by `scorer_for(project)` (nothing without a scorer)."""
    project = Project.objects.filter(pk=project_id).first()
    score = scorer_for(project)
    if project is None or score is None:
        return 0
    done = queue_rescore(project=project, score=score)
    logger.info("queue of %s ranked again: %d items", project, done)
    return done
