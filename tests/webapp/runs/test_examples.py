"""One converter from labels to training examples (training.examples): an export and a training
run of the same project see the same examples, label kind by label kind."""

from __future__ import annotations

import json

import pytest

from tests.factories import make_project, make_task, make_user
from training.examples import label_examples
from webapp.feedback.assignments import label_create
from webapp.feedback.transfer import export_rows
from webapp.runs.data import training_data
from webapp.runs.recipe import Recipe

pytestmark = [pytest.mark.django_db, pytest.mark.both_databases]


def _key(prompt: list[dict[str, str]]) -> str:
    return json.dumps(prompt, sort_keys=True)


def _labelled_project():
    project = make_project(
        name="Every kind", allow_partial_ranking=True, feedback_types=["pairwise", "ranking", "critique", "thumbs"]
    )
    ann = make_user(username="ann")

    def label(kind: str, texts: tuple[str, ...], question: str, data: dict) -> None:
        task = make_task(project=project, kind=kind, texts=texts, question=question)
        ids = list(task.slots.order_by("position").values_list("candidate_id", flat=True))
        if "ranking" in data:
            data = {"ranking": [[ids[i] for i in group] for group in data["ranking"]]}
        label_create(task=task, annotator=ann, data=data, source="api")

    label("pairwise", ("Paris.", "Lyon."), "Capital of France?", {"choice": "a", "strength": 2})
    label("pairwise", ("Red.", "Blue."), "Colour of the sky?", {"choice": "b"})
    label("pairwise", ("Yes.", "Sure."), "Can you help?", {"choice": "tie"})
    label("pairwise", ("Bad.", "Worse."), "Say something kind.", {"choice": "both_bad"})
    label("pairwise", ("Same.", "Same. "), "Twins?", {"choice": "a"})  # equal texts teach nothing
    label("ranking", ("one", "two", "three", "four"), "Count.", {"ranking": [[1], [0, 3], [2]]})
    label("ranking", ("x", "y", "z", "w"), "Letters?", {"ranking": [[2], [0]]})  # top 2 of 4
    label("critique", ("The sun is cold.",), "Is the sun hot?", {"critique": "Wrong.", "rewrite": "The sun is hot."})
    label("critique", ("Fine answer.",), "Anything?", {"critique": "Too short."})
    label("thumbs", ("Rome.",), "Capital of Italy?", {"choice": "up"})
    label("thumbs", ("Bern is in Italy.",), "Where is Bern?", {"choice": "down"})
    return project


def test_an_export_and_a_run_see_the_same_examples_of_every_label_kind():
    project = _labelled_project()
    data = training_data(project=project, recipe=Recipe(held_out_share=0.0))

    exported = {(_key(r["prompt"]), r["chosen"][0]["content"], r["rejected"][0]["content"])
                for r in export_rows(kind="preference", project=project)}  # fmt: skip
    trained = {(_key(r["prompt"]), r["chosen"], r["rejected"]) for r in data.pairs}
    assert exported == trained and len(trained) == 1 + 1 + 5 + 5 + 1  # a, b, full ranking, top 2 of 4, rewrite

    exported_kto = {(_key(r["prompt"]), r["completion"][0]["content"], r["label"])
                    for r in export_rows(kind="kto", project=project)}  # fmt: skip
    trained_kto = {(_key(r["prompt"]), r["completion"], r["desirable"]) for r in data.kto}
    assert exported_kto == trained_kto
    liked = {text: desirable for _, text, desirable in trained_kto}
    assert liked["Bad."] is False and liked["Worse."] is False  # "both bad": two disliked answers
    assert "one" not in liked and "four" not in liked  # a ranking's middle is neither liked nor disliked
    assert liked["two"] is True and liked["three"] is False
    assert (liked["z"], liked["y"], liked["w"]) == (True, False, False) and "x" not in liked  # unranked: the worst
    assert liked["The sun is hot."] is True and liked["The sun is cold."] is False
    assert liked["Rome."] is True and liked["Bern is in Italy."] is False  # thumbs items: the answer as judged
    assert "Yes." not in liked and "Same." not in liked  # a tie, and twins, say nothing of quality

    exported_lists = {(_key(r["prompt"]), tuple(c[0]["content"] for c in r["completions"]), tuple(r["ranks"]))
                      for r in export_rows(kind="listwise", project=project)}  # fmt: skip
    trained_lists = {(_key(r["prompt"]), tuple(r["completions"]), tuple(r["ranks"])) for r in data.rankings}
    assert exported_lists == trained_lists
    assert (_key([{"role": "user", "content": "Letters?"}]), ("z", "x", "y", "w"), (0, 1, 2, 2)) in trained_lists

    assert {(r["chosen"], r["rejected"]) for r in data.ties} == {("Yes.", "Sure."), ("Bad.", "Worse.")}


def test_the_converter_on_its_own():
    found = label_examples(kind="pairwise", answers=["A", "B"], choice="b", strength=3)
    assert found.pairs == [("B", "A", 3)] and found.kto == [("B", True), ("A", False)] and not found.ties
    assert not label_examples(kind="pairwise", answers=["A", " A"], choice="a")
    ranked = label_examples(kind="ranking", answers=["a", "b", "c"], ranking=[[1]])
    assert ranked.pairs == [("b", "a", None), ("b", "c", None)] and ranked.ranking == (["b", "a", "c"], [0, 1, 1])
    assert not label_examples(kind="ranking", answers=["a", "b"], ranking=[[0, 1]]).pairs  # all tied
    assert not label_examples(kind="critique", answers=["x"], rewrite="x ")
    assert not label_examples(kind="rating", answers=["x"])
    assert label_examples(kind="thumbs", answers=["x"], choice="down").kto == [("x", False)]
    assert not label_examples(kind="thumbs", answers=["x"], choice="a")
