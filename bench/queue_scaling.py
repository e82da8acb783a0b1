"""How the annotation queue's `next` scales with the database: the claim of a free item, timed in
process on PostgreSQL, at a small and a large project where most items are already done.

Both the shipped claim (the `Task.taken` count read through the partial "open queue" index) and
the query it replaced (counting each item's open assignments in a GROUP BY over the project) run
on the same data in the same run. Output: the median milliseconds of each at each size, and the
growth (large / small) of each; the last line is the ratio of the two growths.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/prefloop_bench python bench/queue_scaling.py

The database is emptied of feedback first: point it at a database of its own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")


def _setup(n_tasks: int, done_share: float, name: str):  # -> (project, annotators)
    from django.utils import timezone

    from webapp.accounts.services import user_ensure
    from webapp.feedback.models import Assignment, Candidate, Project, Prompt, Task

    project = Project.objects.create(name=name, feedback_types=["pairwise"], overlap=1)
    worker, _ = user_ensure(username=f"{name}-done", password="x" * 12, role="annotator")
    prompts = Prompt.objects.bulk_create(
        [
            Prompt(project=project, messages=[{"role": "user", "content": f"Q {i}?"}], source="import")
            for i in range(n_tasks)
        ]
    )
    Candidate.objects.bulk_create([Candidate(prompt=p, text=t) for p in prompts for t in ("a", "b")])
    n_done = int(n_tasks * done_share)
    tasks = Task.objects.bulk_create(
        [
            Task(project=project, prompt=p, required_labels=1, taken=1 if i < n_done else 0)
            for i, p in enumerate(prompts)
        ]
    )
    now = timezone.now()
    Assignment.objects.bulk_create(
        [
            Assignment(task=t, annotator=worker, status="submitted", expires_at=now, finished_at=now)
            for t in tasks[:n_done]
        ]
    )
    people = [user_ensure(username=f"{name}-ann{i}", password="x" * 12, role="annotator")[0] for i in range(60)]
    return project, people


def _old_claim_ids(project, annotator) -> list[int]:
    """The claim's candidate query before the `taken` count: a GROUP BY over the project."""
    from django.db.models import Count, F, Q

    from webapp.feedback.assignments import OPEN_STATUSES
    from webapp.feedback.models import Task

    tasks = (
        Task.objects.filter(project=project, is_gold=False)
        .exclude(assignments__annotator=annotator)
        .exclude(labels__annotator=annotator)
        .annotate(taken_now=Count("assignments", filter=Q(assignments__status__in=OPEN_STATUSES), distinct=True))
        .filter(taken_now__lt=F("required_labels"))
        .order_by("-required_labels", "created_at", "id")
    )
    return list(tasks.values_list("id", flat=True)[:50])


def _time(fn, repeats: int) -> float:
    samples = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--large", type=int, default=40_000)
    parser.add_argument("--done", type=float, default=0.9, help="Share of each project's items already done.")
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import connection

    from webapp.feedback.assignments import assignment_next
    from webapp.feedback.models import Assignment, Project

    if connection.vendor != "postgresql":
        raise SystemExit("run it on PostgreSQL: set DATABASE_URL")
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    Project.objects.filter(name__startswith="bench-queue").delete()
    results = {}
    for size in (args.small, args.large):
        project, people = _setup(size, args.done, f"bench-queue-{size}")
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE feedback_task; ANALYZE feedback_assignment")

        def claim(i: int, project=project, people=people) -> None:
            assignment_next(project=project, annotator=people[i % len(people)])

        def query(i: int, project=project, people=people) -> None:
            _old_claim_ids(project, people[i % len(people)])

        _time(query, 5)  # warm the caches for both, untimed
        new = _time(claim, args.repeats)
        Assignment.objects.filter(task__project=project, status="leased").delete()
        old = _time(query, args.repeats)
        results[size] = (new, old)
        print(f"{size:>7} items ({args.done:.0%} done): next {new:7.2f} ms (shipped)  {old:7.2f} ms (GROUP BY query)")
        project.delete()
    (new_s, old_s), (new_l, old_l) = results[args.small], results[args.large]
    growth_new, growth_old = new_l / new_s, old_l / old_s
    print(
        f"growth from {args.small} to {args.large} items: shipped x{growth_new:.2f}, GROUP BY query x{growth_old:.2f}"
    )
    print(f"the GROUP BY query grows {growth_old / growth_new:.1f}x as much as the shipped claim")


if __name__ == "__main__":
    main()
