"""The data explorer's server time with a large database: p50 and p95 of whole page requests
(`GET /dashboard/explore/...`, in process: view, queries and template), on PostgreSQL, for the
queries an admin makes, against the plain ways of asking the same in the same run:

- a page deep in the list by keyset (what the explorer does) against the same page by OFFSET;
- a search by full-text with its GIN indexes (what it does) against a substring match (ILIKE).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres python bench/explorer.py --items 500000

It makes a database of its own (dropped at the end): --items pairwise items in four
projects, two answers and two labels each (1,000,000 labels at the default), a fifth of them
disagreeing, written in SQL. The target (issue 27): every page's p95 under 500 ms with 1M labels.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.processes import scratch_database  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

WORDS = (
    "river mountain garden kitchen winter summer letter music doctor teacher bread coffee window "
    "bridge forest island market planet silver engine pocket ladder candle rabbit violin tomato "
    "harbor pillow castle desert ribbon marble lantern feather thunder velvet anchor compass"
).split()

FILL = """
INSERT INTO feedback_prompt (project_id, messages, source, external_id, created_at)
SELECT p.id, jsonb_build_array(jsonb_build_object('role', 'user', 'content',
       'Question ' || i || ' about the ' || (%(words)s::text[])[1 + i %% %(n_words)s] || ' and the '
       || (%(words)s::text[])[1 + (i * 7) %% %(n_words)s] || '?')), 'import', '', now()
FROM generate_series(1, %(items)s) i JOIN LATERAL (
    SELECT id FROM feedback_project WHERE name LIKE 'Explore %%' ORDER BY id OFFSET i %% 4 LIMIT 1) p ON true;
INSERT INTO feedback_task (project_id, kind, prompt_id, required_labels, is_gold, created_at, taken, priority,
                           arena, n_labels, disagreement)
SELECT project_id, 'pairwise', id, 2, false, now() - (id || ' seconds')::interval, 2, random(), false, 2,
       CASE WHEN id %% 5 = 0 THEN 0.5 ELSE 0 END
FROM feedback_prompt;
INSERT INTO feedback_candidate (prompt_id, text, origin, created_at)
SELECT p.id, 'Answer ' || g || ': the ' || (%(words)s::text[])[1 + (p.id * 3 + g) %% %(n_words)s] || ' is near the '
       || (%(words)s::text[])[1 + (p.id * 11 + g) %% %(n_words)s] || '.', 'policy', now()
FROM feedback_prompt p CROSS JOIN generate_series(0, 1) g;
INSERT INTO feedback_taskcandidate (task_id, candidate_id, position)
SELECT t.id, c.id, (row_number() OVER (PARTITION BY c.prompt_id ORDER BY c.id)) - 1
FROM feedback_candidate c JOIN feedback_task t ON t.prompt_id = c.prompt_id;
INSERT INTO feedback_label (task_id, annotator_id, kind, source, choice, critique, rewrite, rationale,
                            idempotency_key, created_at)
SELECT t.id, (%(annotators)s::int[])[1 + (t.id + k) %% %(n_annotators)s], 'pairwise', 'import',
       CASE WHEN t.disagreement > 0 AND k = 1 THEN 'b' ELSE 'a' END, '', '',
       CASE WHEN t.id %% 10 = 0 THEN 'the answer about the ' || (%(words)s::text[])[1 + t.id %% %(n_words)s]
            || ' reads better' ELSE '' END, '', now()
FROM feedback_task t CROSS JOIN generate_series(0, 1) k;
ANALYZE;
"""


def fill(dsn: str, items: int) -> None:
    import psycopg

    from webapp.accounts.models import User
    from webapp.feedback.models import Project

    for n in range(4):
        Project.objects.create(name=f"Explore {n}", feedback_types=["pairwise"], overlap=2)
    annotators = [User.objects.create(username=f"annotator{n}").pk for n in range(20)]
    with psycopg.connect(dsn.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        params = {"items": items, "words": WORDS, "n_words": len(WORDS), "annotators": annotators,
                  "n_annotators": len(annotators)}  # fmt: skip
        for statement in FILL.split(";"):
            if statement.strip():
                conn.execute(statement, params)


def timed(client, url: str, repeats: int) -> tuple[float, float]:
    """p50 and p95 of the request's milliseconds (one warm-up first)."""
    assert client.get(url).status_code == 200, url
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        answer = client.get(url)
        times.append((time.perf_counter() - start) * 1000)
        assert answer.status_code == 200, url
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]


def median_ms(fn, repeats: int) -> float:
    """The median milliseconds of `repeats` calls of `fn` (one warm-up first)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def deep_cursor(url: str, pages: int) -> str:
    """`url` at page `pages + 1` by disagreement: the cursor the explorer's own next-page link
    carries after `pages` pages (the last row's disagreement and id)."""
    from webapp.feedback import explore

    end = pages * explore.PAGE_SIZE
    last = explore.Task.objects.order_by(*explore.SORTS["disagreement"])[end - 1 : end].get()
    return f"{url}&after={last.disagreement!r}:{last.pk}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=500_000, help="items; each has two labels")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--depth", type=int, default=200, help="the deep page's number (50 items a page)")
    args = parser.parse_args()

    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    with scratch_database(server, "prefloop_explorer") as name:
        os.environ["DATABASE_URL"] = server.rsplit("/", 1)[0] + f"/{name}"
        import django

        django.setup()
        from django.core.management import call_command
        from django.test import Client
        from django.test.utils import setup_test_environment

        from webapp.accounts.models import User
        from webapp.feedback import explore
        from webapp.feedback.models import Label, Task

        setup_test_environment()
        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        fill(os.environ["DATABASE_URL"], args.items)
        print(f"filled {Task.objects.count():,} items and {Label.objects.count():,} labels in "
              f"{time.perf_counter() - started:.0f} s")  # fmt: skip
        admin = User.objects.create(username="boss", role="admin", is_superuser=True, is_staff=True)
        client = Client()
        client.force_login(admin)
        project = Task.objects.values_list("project_id", flat=True).first()
        base = "/dashboard/explore/"
        urls = {
            "newest, first page": f"{base}?sort=newest",
            "disagreements, by disagreement": f"{base}?disagreement=1&sort=disagreement",
            "one project's disagreements": f"{base}?project={project}&disagreement=1&sort=disagreement",
            "by uncertainty": f"{base}?sort=uncertainty",
            "one annotator": f"{base}?annotator=annotator7",
            "search one word": f"{base}?q=violin",
            "search a phrase in one project": f'{base}?q="reads better"&project={project}',
        }
        deep = deep_cursor(f"{base}?sort=disagreement", args.depth)
        urls[f"page {args.depth} by keyset"] = deep
        rows = [(what, *timed(client, url, args.repeats)) for what, url in urls.items()]

        # the baselines, asked in the same run of the same database
        offset = args.depth * explore.PAGE_SIZE

        def by_offset() -> None:
            ordered = Task.objects.order_by("-disagreement", "-id").select_related("project", "prompt")
            list(ordered[offset : offset + explore.PAGE_SIZE + 1])

        def by_keyset() -> None:
            cursor = {"sort": "disagreement", "after": deep.split("after=")[1]}
            explore.explore(user=admin, filters=explore.filters_from(cursor))

        def ilike() -> None:
            from django.db.models import Q, TextField
            from django.db.models.functions import Cast

            from webapp.feedback.models import Candidate, Prompt

            q = "violin"
            prompts = Prompt.objects.annotate(t=Cast("messages", TextField())).filter(t__icontains=q).values("pk")
            answers = Candidate.objects.filter(text__icontains=q).values("prompt_id")
            rationales = Label.objects.filter(rationale__icontains=q).values("task_id")
            found = Task.objects.filter(Q(prompt_id__in=prompts) | Q(prompt_id__in=answers) | Q(pk__in=rationales))
            list(found.order_by("-id")[: explore.PAGE_SIZE + 1])

        def fulltext() -> None:
            explore.explore(user=admin, filters=explore.Filters(q="violin"))

        def ms(fn) -> float:
            return median_ms(fn, max(5, args.repeats // 2))

        pairs = {"page by keyset vs OFFSET": (ms(by_keyset), ms(by_offset)),
                 "search by full text vs ILIKE": (ms(fulltext), ms(ilike))}  # fmt: skip
        n_labels = Label.objects.count()
        print(f"\nexplorer pages, {n_labels:,} labels, {args.repeats} requests each (ms, in process):")
        print(f"{'page':<40} {'p50':>8} {'p95':>8}  under 500 ms")
        for what, p50, p95 in rows:
            print(f"{what:<40} {p50:8.1f} {p95:8.1f}  {'yes' if p95 < 500 else 'NO'}")
        print("\nthe same question asked the plain way, median ms of the query alone:")
        for what, (ours, plain) in pairs.items():
            print(f"{what:<40} {ours:8.1f} against {plain:8.1f}: {plain / ours:.1f}x faster")
        worst = max(p95 for _, _, p95 in rows)
        print(f"\nworst p95 {worst:.1f} ms: target under 500 ms {'met' if worst < 500 else 'NOT met'}")


if __name__ == "__main__":
    main()
