"""Tests for training.feedback_io: readers on small hand-made files and on the real shared data,
streaming with bounded memory, the row helpers, and the export writers (JSON lines and Parquet)."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from training.feedback_io import (
    EXPORT_KINDS,
    BadRecord,
    ImportedCandidate,
    ImportedItem,
    ImportedLabel,
    critique_row,
    kto_row,
    kto_rows_from_pairwise,
    kto_rows_from_ranking,
    listwise_row,
    margin_from_strength,
    pairs_from_ranking,
    preference_row,
    preference_rows_from_pairwise,
    preference_rows_from_ranking,
    preference_rows_from_rewrite,
    prompt_row,
    read_export,
    read_feedback,
    rows_from_item,
    rows_from_items,
    write_export,
)

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HH = DATA_DIR / "hh-rlhf-harmless-base-test.jsonl.gz"
OASST = DATA_DIR / "oasst-en-100-trees.jsonl"
PANDALM = DATA_DIR / "pandalm-testset-v1.json"
DEFACTO = DATA_DIR / "defacto-test.jsonl"
USER = [{"role": "user", "content": "Hi?"}]


def _shared(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"shared human data not found: {path} (see ../shared/data/README.md)")
    return path


def _split(records) -> tuple[list[ImportedItem], list[BadRecord]]:
    records = list(records)
    items = [r for r in records if isinstance(r, ImportedItem)]
    bad = [r for r in records if isinstance(r, BadRecord)]
    assert len(items) + len(bad) == len(records)
    return items, bad


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --- jsonl -------------------------------------------------------------------------------------


def test_jsonl_reads_prompts_and_candidates_and_reports_bad_lines(tmp_path: Path) -> None:
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    path = _write_lines(
        tmp_path / "p.jsonl",
        [
            json.dumps({"prompt": "  What is two plus two?  "}),  # 1
            json.dumps({"id": "q-7", "messages": chat, "topic": "colours"}),  # 2
            "{not json",  # 3
            "",  # 4: blank lines are skipped
            json.dumps({"text": "no prompt"}),  # 5
            json.dumps({"prompt": "Pick one.", "candidates": ["Red", "Blue"]}),  # 6
            json.dumps({"prompt": "Rank.", "candidates": ["a", "b", "c", "d"]}),  # 7
            json.dumps({"prompt": "One?", "candidates": ["only"]}),  # 8
            json.dumps({"prompt": "   "}),  # 9
            json.dumps(["a", "list"]),  # 10
            json.dumps({"messages": [*chat, {"role": "assistant", "content": "Red."}]}),  # 11
            json.dumps({"prompt": "Empty?", "candidates": ["x", " "]}),  # 12
            json.dumps({"messages": [{"role": "robot", "content": "beep"}]}),  # 13
            json.dumps({"id": 42, "prompt": "Last one."}),  # 14
        ],
    )
    items, bad = _split(read_feedback(path, "jsonl"))
    assert [i.line for i in items] == [1, 2, 6, 7, 14]
    assert [b.line for b in bad] == [3, 5, 8, 9, 10, 11, 12, 13]
    messages = {b.line: b.message for b in bad}
    assert "invalid JSON" in messages[3]
    assert "'prompt'" in messages[5] and "'messages'" in messages[5]
    assert "2 to 9" in messages[8]
    assert "empty" in messages[9]
    assert "JSON object" in messages[10] and "array" in messages[10]
    assert "user" in messages[11]
    assert "candidates[1]" in messages[12]
    assert "robot" in messages[13]

    first, second, pair, ranking, last = items
    assert first.kind == "prompt" and first.messages == [{"role": "user", "content": "What is two plus two?"}]
    assert first.external_id.startswith("jsonl:") and first.candidates == [] and first.labels == []
    assert second.external_id == "q-7" and second.messages == chat and second.meta == {"topic": "colours"}
    assert pair.kind == "pairwise" and [c.text for c in pair.candidates] == ["Red", "Blue"]
    assert ranking.kind == "ranking" and len(ranking.candidates) == 4
    assert last.external_id == "42"


def test_external_ids_are_stable_and_follow_content(tmp_path: Path) -> None:
    lines = [json.dumps({"prompt": "Same"}), json.dumps({"prompt": "Other"}), json.dumps({"prompt": "Same"})]
    path = _write_lines(tmp_path / "p.jsonl", lines)
    ids = [i.external_id for i in read_feedback(path, "jsonl")]
    assert ids == [i.external_id for i in read_feedback(path, "jsonl")]
    assert ids[0] == ids[2] != ids[1]  # a repeated prompt is the same item
    moved = _write_lines(tmp_path / "q.jsonl", ["", *reversed(lines)])
    assert sorted(i.external_id for i in read_feedback(moved, "jsonl")) == sorted(ids)


def test_unknown_format_and_missing_file_raise_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        read_feedback(tmp_path / "x", "xml")
    with pytest.raises(FileNotFoundError):
        read_feedback(tmp_path / "missing.jsonl", "jsonl")


def test_gzip_is_detected_and_invalid_utf8_is_a_bad_line(tmp_path: Path) -> None:
    body = b'{"prompt": "one"}\n{"prompt": "\xff\xfe"}\n{"prompt": "three"}\n'
    path = tmp_path / "p.jsonl.gz"
    path.write_bytes(gzip.compress(body))
    items, bad = _split(read_feedback(path, "jsonl"))
    assert [i.line for i in items] == [1, 3]
    assert [(b.line, b.message) for b in bad] == [(2, "the line is not valid UTF-8")]


# --- csv ---------------------------------------------------------------------------------------


def test_csv_reads_prompts_with_system_and_reports_bad_rows(tmp_path: Path) -> None:
    text = (
        "\ufeffID,Prompt,system,topic\n"  # 1 (BOM, mixed case)
        "a1,What is tea?,,drinks\n"  # 2
        'a2,"A prompt\nover two lines",Be kind.,misc\n'  # 3-4
        "a3,,,empty\n"  # 5
        "a4,too,many,fields,here\n"  # 6
        "\n"  # 7: blank
        ",No id here,,x\n"  # 8
    )
    path = tmp_path / "p.csv"
    path.write_text(text, encoding="utf-8")
    items, bad = _split(read_feedback(path, "csv"))
    assert [(i.line, i.external_id) for i in items] == [(2, "a1"), (3, "a2"), (8, items[2].external_id)]
    assert items[2].external_id.startswith("csv:")
    assert items[0].messages == [{"role": "user", "content": "What is tea?"}] and items[0].meta == {"topic": "drinks"}
    assert items[1].messages == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "A prompt\nover two lines"},
    ]
    assert [b.line for b in bad] == [5, 6]
    assert "'prompt' is empty" in bad[0].message and "expected 4 fields" in bad[1].message


def test_csv_without_prompt_column_is_one_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("id,question\n1,Why?\n", encoding="utf-8")
    assert list(read_feedback(path, "csv")) == [
        BadRecord(1, "the CSV header has no 'prompt' column: ['id', 'question']")
    ]


# --- HH-RLHF -----------------------------------------------------------------------------------


def _hh(turns: list[tuple[str, str]], chosen: str, rejected: str) -> str:
    context = "".join(f"\n\n{speaker}: {text}" for speaker, text in turns)
    return json.dumps(
        {"chosen": f"{context}\n\nAssistant: {chosen}", "rejected": f"{context}\n\nAssistant: {rejected}"}
    )


def test_hh_parses_the_conversation_and_the_choice(tmp_path: Path) -> None:
    turns = [("Human", "Hello"), ("Assistant", "Hi!"), ("Human", "Help me."), ("Human", "Please.")]
    lines = [
        _hh(turns, "Sure, here is how.", "No."),  # 1
        json.dumps({"chosen": "\n\nHuman: x\n\nAssistant: y"}),  # 2: no rejected
        _hh([("Human", "Same")], "same", "same"),  # 3: identical
        "nope",  # 4
        _hh([("Assistant", "I start")], "a", "b"),  # 5: context does not end with a human turn
        _hh([("Human", "Short?")], "", "A real answer."),  # 6: an empty reply was judged: kept
    ]
    path = tmp_path / "hh.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    items, bad = _split(read_feedback(path, "hh"))
    assert [b.line for b in bad] == [2, 3, 4, 5]
    assert "'rejected'" in bad[0].message and "same" in bad[1].message and "Human" in bad[3].message
    item, empty = items
    assert (item.line, item.kind) == (1, "pairwise")
    assert item.messages == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Help me.\n\nPlease."},  # one speaker's turns joined
    ]
    (label,) = item.labels
    assert (label.annotator, label.kind, label.strength) == ("hh-rlhf", "pairwise", None)
    texts = [c.text for c in item.candidates]
    assert texts[{"a": 0, "b": 1}[label.choice]] == "Sure, here is how."
    assert sorted(texts) == ["No.", "Sure, here is how."]
    assert "" in [c.text for c in empty.candidates]
    assert item.external_id == next(iter(read_feedback(path, "hh"))).external_id


def test_hh_puts_the_chosen_answer_first_about_half_the_time(tmp_path: Path) -> None:
    lines = [_hh([("Human", f"Question {i}?")], f"good {i}", f"bad {i}") for i in range(200)]
    path = _write_lines(tmp_path / "hh.jsonl", lines)
    choices = Counter(i.labels[0].choice for i in read_feedback(path, "hh"))
    assert 60 <= choices["a"] <= 140 and choices["a"] + choices["b"] == 200
    assert choices == Counter(i.labels[0].choice for i in read_feedback(path, "hh"))  # deterministic


# --- Open-Assistant ----------------------------------------------------------------------------


def _msg(mid: str, role: str, text: str, rank: int | None = None, replies: list | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"message_id": mid, "role": role, "text": text, "replies": replies or []}
    if rank is not None:
        node["rank"] = rank
    return node


def test_oasst_makes_one_ranking_item_per_ranked_group(tmp_path: Path) -> None:
    follow_up = _msg(
        "p2",
        "prompter",
        "And why?",
        replies=[_msg("a4", "assistant", "Because.", rank=1), _msg("a5", "assistant", "Light.", rank=0)],
    )
    first_answer = _msg("a1", "assistant", "Blue.", rank=0, replies=[follow_up, _msg("p3", "prompter", "Thanks")])
    root = _msg(
        "p1",
        "prompter",
        "What colour is the sky?",
        replies=[
            first_answer,
            _msg("a2", "assistant", "Green.", rank=2),
            _msg("a3", "assistant", "Sky blue.", rank=0),
            _msg("a6", "assistant", "Unranked."),
        ],
    )
    lonely = _msg("q1", "prompter", "Only one?", replies=[_msg("b1", "assistant", "Yes.", rank=0)])
    broken = _msg(
        "r1", "prompter", "Hm", replies=[_msg("c1", "robot", "x", rank=0), _msg("c2", "assistant", "y", rank=1)]
    )
    path = _write_lines(
        tmp_path / "trees.jsonl",
        [
            json.dumps({"message_tree_id": "t1", "prompt": root}),
            "{broken",
            json.dumps({"message_tree_id": "t2", "prompt": lonely}),
            json.dumps({"message_tree_id": "t3", "prompt": broken}),
            json.dumps({"message_tree_id": "t4"}),
        ],
    )
    items, bad = _split(read_feedback(path, "oasst"))
    assert [b.line for b in bad] == [2, 4, 5]
    assert "robot" in bad[1].message and "'prompt'" in bad[2].message
    top, deep = items
    assert (top.line, top.kind, top.external_id) == (1, "ranking", "oasst:p1")
    assert top.messages == [{"role": "user", "content": "What colour is the sky?"}]
    assert [(c.text, c.rank) for c in top.candidates] == [("Blue.", 0), ("Green.", 2), ("Sky blue.", 0)]
    assert top.labels == [ImportedLabel("oasst", "ranking", ranking=[[0, 2], [1]])]
    assert top.meta["unranked_replies"] == 1 and top.meta["candidate_message_ids"] == ["a1", "a2", "a3"]
    assert deep.messages == [
        {"role": "user", "content": "What colour is the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And why?"},
    ]
    assert deep.labels[0].ranking == [[1], [0]]


# --- PandaLM -----------------------------------------------------------------------------------


def _panda(idx: int, **changes: Any) -> dict[str, Any]:
    record = {
        "idx": idx,
        "instruction": "Fix the sentence.",
        "input": "he go home",
        "response1": "He goes home.",
        "response2": "He go home.",
        "annotator1": "1",
        "annotator2": 1,
        "annotator3": "0",
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


def test_pandalm_streams_a_json_array_with_line_numbers(tmp_path: Path) -> None:
    records = [
        _panda(0),
        _panda(1, response2=None),
        _panda(2, input="", response1=True, annotator3="2"),
        _panda(3, annotator2="3"),
        "not an object",
    ]
    text = json.dumps(records, indent=2)
    path = tmp_path / "panda.json"
    path.write_text(text, encoding="utf-8")
    starts = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith(("  {", '  "'))]
    items, bad = _split(read_feedback(path, "pandalm"))
    assert [i.line for i in items] == [starts[0], starts[2]]
    assert [b.line for b in bad] == [starts[1], starts[3], starts[4]]
    assert "'response2'" in bad[0].message and "annotator2" in bad[1].message and "object" in bad[2].message
    first, second = items
    assert first.external_id == "pandalm:0"
    assert first.messages == [{"role": "user", "content": "Fix the sentence.\n\nhe go home"}]
    assert [c.text for c in first.candidates] == ["He goes home.", "He go home."]
    assert [(lb.annotator, lb.choice) for lb in first.labels] == [
        ("pandalm-1", "a"),
        ("pandalm-2", "a"),
        ("pandalm-3", "tie"),
    ]
    assert second.messages[0]["content"] == "Fix the sentence." and second.candidates[0].text == "True"
    assert second.labels[2].choice == "b"


def test_pandalm_small_chunks_truncation_and_json_lines(tmp_path: Path) -> None:
    from training.feedback_io.readers import _iter_json_array

    text = json.dumps([_panda(i) for i in range(5)] + [12345, "tail"], indent=1)
    import io

    values = [v for _, v in _iter_json_array(io.StringIO(text), chunk_chars=7)]  # type: ignore[misc]
    assert values == [_panda(i) for i in range(5)] + [12345, "tail"]

    cut = tmp_path / "cut.json"
    cut.write_text(text[: text.index('"idx": 3')], encoding="utf-8")
    items, bad = _split(read_feedback(cut, "pandalm"))
    assert len(items) == 3 and len(bad) == 1 and "invalid JSON" in bad[0].message

    lines = _write_lines(tmp_path / "panda.jsonl", [json.dumps(_panda(i)) for i in range(3)])
    assert [i.line for i in read_feedback(lines, "pandalm")] == [1, 2, 3]


# --- DeFacto -----------------------------------------------------------------------------------


def _defacto(doc_id: int, has_error: bool, summary: str, **changes: Any) -> dict[str, Any]:
    record = {
        "article": "The club won 2-1 on Saturday.",
        "candidate": "The club lost on Sunday.",
        "abstract": "The club won.",
        "doc_id": doc_id,
        "has_error": has_error,
        "feedback": {
            "summary": summary,
            "evidence": "won 2-1 on Saturday",
            "explanation": "it gets the result and the day wrong" if has_error else "The summary is right.",
            "instruction": "Replace lost with won and Sunday with Saturday." if has_error else "",
        },
    }
    record.update(changes)
    return record


def test_defacto_makes_critique_items(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "d.jsonl",
        [
            json.dumps(_defacto(7, True, "The club won on Saturday.")),
            json.dumps(_defacto(8, False, "")),
            json.dumps(_defacto(9, True, "x", article="")),
            json.dumps(_defacto(10, True, "x", feedback=None)),
        ],
    )
    items, bad = _split(read_feedback(path, "defacto"))
    assert [b.line for b in bad] == [3, 4]
    assert "'article' is empty" in bad[0].message and "'feedback'" in bad[1].message
    wrong, right = items
    assert (wrong.kind, wrong.external_id) == ("critique", "defacto:7")
    assert wrong.messages[0]["content"].endswith("The club won 2-1 on Saturday.")
    assert [c.text for c in wrong.candidates] == ["The club lost on Sunday."]
    (label,) = wrong.labels
    assert (label.annotator, label.kind, label.rewrite) == ("defacto", "critique", "The club won on Saturday.")
    assert label.critique.startswith("it gets the result") and "Replace lost" in label.critique
    assert wrong.meta["has_error"] is True and wrong.meta["evidence"] == "won 2-1 on Saturday"
    assert right.labels[0].rewrite is None and right.labels[0].critique == "The summary is right."


# --- the real shared files ---------------------------------------------------------------------


def test_real_hh_rlhf() -> None:
    items, bad = _split(read_feedback(_shared(HH), "hh"))
    assert bad == [] and len(items) == 2312
    assert len({i.external_id for i in items}) == 2312
    assert all(i.kind == "pairwise" and len(i.labels) == 1 and i.labels[0].annotator == "hh-rlhf" for i in items)
    assert all(i.messages[-1]["role"] == "user" for i in items)
    roles_alternate = all(
        a["role"] != b["role"] for i in items for a, b in zip(i.messages, i.messages[1:], strict=False)
    )
    assert roles_alternate
    a_share = sum(i.labels[0].choice == "a" for i in items) / len(items)
    assert 0.45 < a_share < 0.55
    assert [i.line for i in items] == list(range(1, 2313))


def test_real_oasst_ranked_groups() -> None:
    items, bad = _split(read_feedback(_shared(OASST), "oasst"))
    assert bad == []
    sizes = Counter(len(i.candidates) for i in items)
    assert len(items) == 212
    assert sum(n for size, n in sizes.items() if size >= 3) == 155
    assert max(sizes) == 9
    assert len({i.line for i in items}) <= 100 and len({i.external_id for i in items}) == 212
    for item in items:
        assert item.messages[-1]["role"] == "user"
        (label,) = item.labels
        assert label.annotator == "oasst"
        assert [item.candidates[g[0]].rank for g in label.ranking] == sorted({c.rank for c in item.candidates})


def test_real_pandalm() -> None:
    items, bad = _split(read_feedback(_shared(PANDALM), "pandalm"))
    assert bad == [] and len(items) == 999
    assert sum(len(i.labels) for i in items) == 2997
    assert {lb.annotator for i in items for lb in i.labels} == {"pandalm-1", "pandalm-2", "pandalm-3"}
    assert {lb.choice for i in items for lb in i.labels} == {"a", "b", "tie"}
    assert len({i.external_id for i in items}) == 999


def test_real_defacto() -> None:
    items, bad = _split(read_feedback(_shared(DEFACTO), "defacto"))
    assert bad == [] and len(items) == 1075
    assert Counter(i.meta["has_error"] for i in items) == {True: 779, False: 296}
    assert all(i.labels[0].critique for i in items)
    assert sum(i.labels[0].rewrite is not None for i in items) > 700


# --- streaming ---------------------------------------------------------------------------------


def _peak_while_reading(path: Path, fmt: str) -> tuple[int, int]:
    """(items read, peak traced bytes) while streaming the file and dropping each record."""
    count = 0
    tracemalloc.start()
    try:
        for record in read_feedback(path, fmt):
            count += isinstance(record, ImportedItem)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return count, peak


def test_reading_100k_lines_streams_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(100_000):
            f.write(json.dumps({"id": f"p{i}", "prompt": f"Prompt number {i}: " + "words " * 12}) + "\n")
    size = path.stat().st_size
    count, peak = _peak_while_reading(path, "jsonl")
    assert count == 100_000
    assert peak < size / 50, f"peak {peak} bytes while reading a {size}-byte file"


def test_reading_a_big_json_array_streams_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    with open(path, "w", encoding="utf-8") as f:
        f.write("[\n")
        for i in range(10_000):
            f.write(("," if i else "") + json.dumps(_panda(i, response1="words " * 20)) + "\n")
        f.write("]\n")
    size = path.stat().st_size
    count, peak = _peak_while_reading(path, "pandalm")
    assert count == 10_000
    assert peak < size / 10, f"peak {peak} bytes while reading a {size}-byte file"


# --- row helpers -------------------------------------------------------------------------------


def test_pairs_from_ranking_pairs_different_groups_only() -> None:
    assert pairs_from_ranking([[2], [0, 1]]) == [(2, 0), (2, 1)]
    assert pairs_from_ranking([[0], [1], [2]]) == [(0, 1), (0, 2), (1, 2)]
    assert pairs_from_ranking([[0, 1]]) == []


def test_preference_and_kto_rows() -> None:
    assert [margin_from_strength(s) for s in (None, 1, 2, 3)] == [0.0, 1 / 3, 2 / 3, 1.0]
    with pytest.raises(ValueError):
        margin_from_strength(4)
    (row,) = preference_rows_from_pairwise(USER, ["A", "B"], "b", strength=3)
    assert row == {
        "prompt": USER,
        "chosen": [{"role": "assistant", "content": "B"}],
        "rejected": [{"role": "assistant", "content": "A"}],
        "margin": 1.0,
    }
    assert row["prompt"] is not USER  # copied
    assert preference_rows_from_pairwise(USER, ["A", "B"], "tie") == []
    assert preference_rows_from_pairwise(USER, ["A", "B"], "both_bad") == []
    ranked = preference_rows_from_ranking(USER, ["x", "y", "z"], [[1], [0, 2]])
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in ranked] == [("y", "x"), ("y", "z")]
    assert preference_rows_from_rewrite(USER, "old", "new") == [preference_row(USER, "new", "old")]
    assert preference_rows_from_rewrite(USER, "old", None) == []
    assert [(r["completion"][0]["content"], r["label"]) for r in kto_rows_from_pairwise(USER, ["A", "B"], "a")] == [
        ("A", True),
        ("B", False),
    ]
    assert [r["label"] for r in kto_rows_from_pairwise(USER, ["A", "B"], "both_bad")] == [False, False]
    assert kto_rows_from_pairwise(USER, ["A", "B"], "tie") == []
    assert [r["label"] for r in kto_rows_from_ranking(USER, ["x", "y", "z"], [[1], [0], [2]])] == [True, False]


def test_listwise_rows_are_best_first_with_shared_ranks_for_ties() -> None:
    row = listwise_row(USER, ["x", "y", "z"], [[2, 0], [1]])
    assert [c[0]["content"] for c in row["completions"]] == ["x", "z", "y"]
    assert row["ranks"] == [0, 0, 1]


def test_rows_from_items() -> None:
    item = ImportedItem(
        1,
        "i",
        "pairwise",
        USER,
        [ImportedCandidate("A"), ImportedCandidate("B")],
        [ImportedLabel("p-1", "pairwise", choice="a"), ImportedLabel("p-2", "pairwise", choice="tie")],
    )
    assert len(rows_from_item(item, "preference")) == 1
    assert len(rows_from_item(item, "kto")) == 2
    assert rows_from_item(item, "prompt") == [prompt_row(USER)]
    assert rows_from_item(item, "listwise") == [] and rows_from_item(item, "critique") == []
    assert rows_from_item(item, "raw")[0]["external_id"] == "i"
    with pytest.raises(ValueError, match="unknown export kind"):
        rows_from_item(item, "sft")
    assert len(list(rows_from_items([item, BadRecord(2, "x"), item], "preference"))) == 2


def test_records_validate_themselves() -> None:
    with pytest.raises(ValueError, match="2 candidates"):
        ImportedItem(1, "x", "pairwise", USER, [ImportedCandidate("A")], [])
    with pytest.raises(ValueError, match="exactly once"):
        ImportedItem(
            1,
            "x",
            "ranking",
            USER,
            [ImportedCandidate("A"), ImportedCandidate("B")],
            [ImportedLabel("o", "ranking", ranking=[[0], [0]])],
        )
    with pytest.raises(ValueError, match="choice"):
        ImportedLabel("o", "pairwise", choice="c")
    with pytest.raises(ValueError, match="strength"):
        ImportedLabel("o", "pairwise", choice="a", strength=5)


# --- writers -----------------------------------------------------------------------------------


def _rows(kind: str, n: int) -> list[dict[str, Any]]:
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say a number."}]
    make = {
        "preference": lambda i: preference_row(prompt, f"{i}", f"not {i}", strength=1 + i % 3),
        "kto": lambda i: {
            "prompt": prompt,
            "completion": [{"role": "assistant", "content": f"{i}"}],
            "label": i % 2 == 0,
        },
        "prompt": lambda i: prompt_row([{"role": "user", "content": f"Question {i} — ünïcode?"}]),
        "listwise": lambda i: listwise_row(prompt, [f"{i}", "b", "c"], [[0], [1, 2]]),
        "critique": lambda i: critique_row(prompt, f"{i}", "Too short.", None if i % 2 else f"{i}!"),
        "raw": lambda i: {"id": i, "tags": ["x", "y"], "score": i / 2, "nested": {"k": f"v{i}"}},
    }[kind]
    return [make(i) for i in range(n)]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("kind", EXPORT_KINDS)
def test_writers_round_trip(tmp_path: Path, kind: str, suffix: str) -> None:
    rows = _rows(kind, 10)
    path = tmp_path / f"export{suffix}"
    assert write_export(iter(rows), path, kind, batch_size=3) == 10
    assert list(read_export(path, batch_size=4)) == rows
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_parquet_export_has_the_kind_schema(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "pref.parquet"
    write_export(_rows("preference", 5), path, "preference", batch_size=2)
    parquet = pq.ParquetFile(str(path))
    assert parquet.schema_arrow.names == ["prompt", "chosen", "rejected", "margin"]
    assert str(parquet.schema_arrow.field("margin").type) == "double"
    assert parquet.metadata.num_rows == 5 and parquet.metadata.num_row_groups == 3


def test_writers_reject_bad_rows_and_leave_no_file(tmp_path: Path) -> None:
    rows = _rows("preference", 5)
    rows[3] = {**rows[3], "margin": "big"}
    for suffix in (".jsonl", ".parquet"):
        with pytest.raises(ValueError, match="row 3: 'margin'"):
            write_export(rows, tmp_path / f"x{suffix}", "preference", batch_size=2)
    bad_prompt = {**_rows("kto", 1)[0], "prompt": [{"role": "assistant", "content": "x"}]}
    with pytest.raises(ValueError, match=r"row 0: .*user"):
        write_export([bad_prompt], tmp_path / "k.jsonl", "kto")
    with pytest.raises(ValueError, match="keys"):
        write_export([{"prompt": USER, "extra": 1}], tmp_path / "p.jsonl", "prompt")
    with pytest.raises(ValueError, match="columns \\['late'\\]"):
        write_export([{"a": 1}, {"a": 2, "late": 3}], tmp_path / "r.parquet", "raw", batch_size=1)
    with pytest.raises(ValueError, match="must end with"):
        write_export([], tmp_path / "x.csv", "raw")
    with pytest.raises(ValueError, match="unknown export kind"):
        write_export([], tmp_path / "x.jsonl", "sft")
    assert list(tmp_path.iterdir()) == []


def test_empty_exports_are_valid_files(tmp_path: Path) -> None:
    for suffix in (".jsonl", ".parquet"):
        path = tmp_path / f"empty{suffix}"
        assert write_export([], path, "preference") == 0
        assert list(read_export(path)) == []


def test_real_exports_count_and_round_trip(tmp_path: Path) -> None:
    """PandaLM and OASST through the readers, the row helpers and both writers."""
    pandalm_rows = write_export(
        rows_from_items(read_feedback(_shared(PANDALM), "pandalm"), "preference"), tmp_path / "p.parquet", "preference"
    )
    assert pandalm_rows == 2671  # one per annotator label that is not a tie: 1,255 "a" + 1,416 "b"
    listwise = tmp_path / "o.jsonl"
    assert (
        write_export(rows_from_items(read_feedback(_shared(OASST), "oasst"), "listwise"), listwise, "listwise") == 212
    )
    assert sum(len(r["completions"]) >= 3 for r in read_export(listwise)) == 155


def test_trl_preference_files_plain_conversational_and_implicit(tmp_path: Path) -> None:
    lines = [
        json.dumps({"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "source_set": "math"}),
        json.dumps(
            {
                "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}],
                "chosen": [{"role": "assistant", "content": "Hello!"}],
                "rejected": [{"role": "assistant", "content": "Go away."}],
            }
        ),
        json.dumps(
            {
                "chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}],
                "rejected": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green."}],
            }
        ),
        json.dumps({"prompt": "x", "chosen": 3, "rejected": "y"}),
        json.dumps({"chosen": "a", "rejected": "b"}),
        json.dumps({"prompt": "x", "chosen": "y"}),
        json.dumps({"prompt": [{"role": "assistant", "content": "no user turn"}], "chosen": "a", "rejected": "b"}),
    ]
    items, bad = _split(read_feedback(_write_lines(tmp_path / "trl.jsonl", lines), "trl"))
    picked = []
    for item in items:
        (label,) = item.labels
        assert (item.kind, label.annotator, label.kind) == ("pairwise", "trl", "pairwise")
        texts = [c.text for c in item.candidates]
        winner = texts[0] if label.choice == "a" else texts[1]
        picked.append((item.messages, winner, texts[1] if label.choice == "a" else texts[0]))
    assert picked == [
        ([{"role": "user", "content": "What is 2+2?"}], "4", "5"),
        ([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}], "Hello!", "Go away."),
        ([{"role": "user", "content": "Sky?"}], "Blue.", "Green."),
    ]
    assert items[0].meta == {"source": "trl", "source_set": "math"}
    assert [b.line for b in bad] == [4, 5, 6, 7]
    assert "must be a string or a list of one assistant message" in bad[0].message
    assert "missing field 'prompt'" in bad[1].message and "missing field 'rejected'" in bad[2].message
    assert "user" in bad[3].message


def test_trl_reader_reads_back_what_the_preference_export_writes(tmp_path: Path) -> None:
    """Prefloop's own `preference` export, uploaded again as a TRL file, gives the same pairs."""
    rows = preference_rows_from_ranking(USER, ["x", "y", "z"], [[1], [0, 2]])
    rows += preference_rows_from_pairwise(USER, ["A", "B"], "b", strength=3)
    path = tmp_path / "export.jsonl"
    write_export(iter(rows), path, "preference")
    items, bad = _split(read_feedback(path, "trl"))
    assert bad == []
    got = []
    for item in items:
        texts = [c.text for c in item.candidates]
        chosen = 0 if item.labels[0].choice == "a" else 1
        got.append((texts[chosen], texts[1 - chosen]))
    assert got == [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows]
    assert len({i.external_id for i in items}) == len(items)  # stable ids: a second upload skips them


def test_trl_unpaired_rows_become_thumbs_items_and_read_back_the_kto_export(tmp_path: Path) -> None:
    """TRL's unpaired `prompt/completion/label` (what KTO trains on), plain and conversational:
    one answer with one thumbs label; Prefloop's own `kto` export reads back the same rows."""
    rows = [kto_row(USER, "Hello!", True), kto_row(USER, "Go away.", False)]
    lines = [json.dumps(r) for r in rows] + [
        json.dumps({"prompt": "2+2?", "completion": "4", "label": True, "id": "q1"}),
        json.dumps({"prompt": "2+2?", "completion": "5", "label": "yes"}),
        json.dumps({"completion": "5", "label": False}),
    ]
    items, bad = _split(read_feedback(_write_lines(tmp_path / "kto.jsonl", lines), "trl"))
    assert [(i.kind, [c.text for c in i.candidates], i.labels[0].choice) for i in items] == [
        ("thumbs", ["Hello!"], "up"),
        ("thumbs", ["Go away."], "down"),
        ("thumbs", ["4"], "up"),
    ]
    assert {label.annotator for i in items for label in i.labels} == {"trl"}
    assert items[2].external_id == "q1" and items[2].messages == [{"role": "user", "content": "2+2?"}]
    assert [(b.line, "true or false" in b.message or "'prompt'" in b.message) for b in bad] == [(4, True), (5, True)]
    again = [row for item in items[:2] for row in rows_from_item(item, "kto")]
    assert again == rows  # the export of what was read is the file


def test_argilla_records_export_rankings_labels_and_thumbs(tmp_path: Path) -> None:
    """An Argilla `records.to_json` export: a ranking question on two or three answers, a label
    question naming an answer, good/bad on one answer; discarded responses and suggestions left out."""
    records = [
        {"id": "r1", "fields": {"prompt": "Say hello.", "response1": "Go away.", "response2": "Hello!"},
         "metadata": {"topic": "greeting"},
         "suggestions": {"preference": {"value": ["response1", "response2"], "score": 0.9, "agent": "judge"}},
         "responses": {"preference": [
             {"value": ["response2", "response1"], "user_id": "u1"},
             {"value": ["response1", "response2"], "user_id": "u2", "status": "discarded"},
             {"value": [{"rank": 1, "value": "response1"}, {"rank": 1, "value": "response2"}], "user_id": "u3"},
         ]}, "vectors": {}, "_server_id": None},
        {"id": "r2", "fields": {"instruction": "Count.", "response_1": "1 2 3", "response_2": "1 3", "response_3": "3"},
         "responses": {"best": [{"value": "response_1", "user_id": "u1"}],
                       "ranking": [{"value": ["response_1", "response_3", "response_2"], "user_id": "u2"}],
                       "topic": [{"value": "maths", "user_id": "u2"}]}},
        {"id": "r3", "fields": {"chat": [{"role": "user", "content": "Sky?"}], "response": "Blue."},
         "responses": {"good": [{"value": "Good", "user_id": "u1"}, {"value": False, "user_id": "u2"}]}},
        {"id": "r4", "fields": {"prompt": "No answers"}},
        {"id": "r5", "responses": {}},
    ]  # fmt: skip
    path = tmp_path / "argilla.json"
    path.write_text(json.dumps(records))
    items, bad = _split(read_feedback(path, "argilla"))
    assert [(i.external_id, i.kind) for i in items] == [("argilla:r1", "pairwise"), ("argilla:r2", "ranking"),
                                                          ("argilla:r3", "thumbs")]  # fmt: skip
    pair, ranking, thumbs = items
    assert [(label.annotator, label.choice) for label in pair.labels] == [("argilla-u1", "b"), ("argilla-u3", "tie")]
    assert pair.meta == {"source": "argilla", "topic": "greeting"}
    assert [c.text for c in ranking.candidates] == ["1 2 3", "1 3", "3"]
    assert [(label.annotator, label.ranking) for label in ranking.labels] == [
        ("argilla-u1", [[0], [1, 2]]),  # a label question naming the best answer
        ("argilla-u2", [[0], [2], [1]]),
    ]
    assert ranking.meta["questions_not_read"] == ["topic"]
    assert thumbs.messages == [{"role": "user", "content": "Sky?"}]
    assert [(label.kind, label.choice) for label in thumbs.labels] == [("thumbs", "up"), ("thumbs", "down")]
    assert ["answers" in bad[0].message, "'fields'" in bad[1].message] == [True, True]


def test_labelstudio_reads_pairwise_and_choices_annotations_and_ground_truth(tmp_path: Path) -> None:
    tasks = [
        {
            "id": 11,
            "data": {"prompt": "Say hello.", "answer1": "Hello there!", "answer2": "Go away."},
            "annotations": [
                {"completed_by": 3, "result": [{"type": "pairwise", "value": {"selected": "left"}}]},
                {"completed_by": {"id": 4, "email": "ann@example.org"}, "ground_truth": True,
                 "result": [{"type": "choices", "value": {"choices": ["Answer 1"]}}]},
                {"completed_by": 5, "was_cancelled": True, "result": []},
            ],
        },
        {"id": 12, "data": {"question": [{"role": "user", "content": "2+2?"}], "text1": "4", "text2": "5"},
         "annotations": [{"completed_by": 3, "result": [{"type": "choices", "value": {"choices": ["Right"]}}]}]},
        {"id": 13, "data": {"prompt": "No answers here"}},
        {"id": 14, "data": {"prompt": "Odd", "answer1": "x", "answer2": "y"},
         "annotations": [{"completed_by": 3, "result": [{"type": "choices", "value": {"choices": ["Maybe"]}}]}]},
    ]  # fmt: skip
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks, indent=2))
    records = list(read_feedback(path, "labelstudio"))
    items = [r for r in records if isinstance(r, ImportedItem)]
    bad = [r for r in records if isinstance(r, BadRecord)]
    assert [i.external_id for i in items] == ["labelstudio:11", "labelstudio:12"]
    first, second = items
    assert [c.text for c in first.candidates] == ["Hello there!", "Go away."]
    assert [(label.annotator, label.choice) for label in first.labels] == [
        ("labelstudio-3", "a"),
        ("labelstudio-ann@example.org", "a"),
    ]
    assert first.meta["gold"] == {"choice": "a"}  # the ground truth annotation
    assert second.messages == [{"role": "user", "content": "2+2?"}] and second.labels[0].choice == "b"
    assert "gold" not in second.meta
    assert [(b.line > 1, "no two answers" in b.message or "Maybe" in b.message) for b in bad] == [(True, True)] * 2
