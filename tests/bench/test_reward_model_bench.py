"""Tests for bench/reward_model.py's fair TRL arm (d), the length rule (e) and the PandaLM path: the helpers
(pure, or with MiniLM's tokenizer), and one tiny real run on PandaLM's test split."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "reward_model.py"
DATA_DIR = ROOT.parent / "shared" / "data"
HH = DATA_DIR / "hh-rlhf-harmless-base-test.jsonl.gz"
PANDALM = DATA_DIR / "pandalm-testset-v1.json"
TINY_RUN = ["--train-pairs", "16", "--max-length", "64", "--members", "1", "--threads", "1", "--epochs", "1"]


bench = load_script("reward_model")


@pytest.fixture
def pandalm() -> Path:
    if not PANDALM.is_file():
        pytest.skip(f"real data not found: {PANDALM} (needs the shared data folder next to the project)")
    return PANDALM


def test_lr_grid_parses_rates_and_rejects_bad_ones() -> None:
    assert bench.parse_lr_grid("1e-4,5e-5, 3e-5") == [1e-4, 5e-5, 3e-5]
    for bad in ("", "x", "1e-4,1e-4", "0,1e-4", "-1e-4"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_lr_grid(bad)


def test_the_format_follows_the_file_name_unless_given() -> None:
    assert bench.data_format(PANDALM, None) == "pandalm"
    assert bench.data_format(HH, None) == "hh"
    assert bench.data_format(PANDALM, "hh") == "hh"


def test_a_chat_becomes_an_hh_transcript() -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Sum?"},
    ]
    assert bench.hh_transcript(messages, "4") == "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Sum?\n\nAssistant: 4"


def test_left_truncation_keeps_the_end_as_the_tokenizer_would() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bench.minilm_path())
    texts = [
        "\n\nHuman: " + "tell me more " * 40 + "\n\nAssistant: the reply at the end",
        "\n\nHuman: hi\n\nAssistant: ok",
    ]
    ids, n_cut = bench.left_truncated_ids(tokenizer, texts, 32)
    assert n_cut == 1 and len(ids[0]) == 32
    assert ids[1] == tokenizer(texts[1] + bench.EOS)["input_ids"]  # a short text: exactly what TRL would tokenize
    tokenizer.truncation_side = "left"
    assert ids == [tokenizer(t + bench.EOS, truncation=True, max_length=32)["input_ids"] for t in texts]
    assert tokenizer.decode(ids[0][-8:]).endswith("the reply at the end [SEP] [SEP]")


def test_pandalm_pairs_are_the_decisive_majorities(pandalm: Path) -> None:
    examples, rows, described = bench.load_pandalm(pandalm)
    assert len(examples) == len(rows) == 894 and "894 pairs with a 2-of-3 majority of 999" in described
    raw = json.loads(pandalm.read_text(encoding="utf-8"))
    first = next(r for r in raw if [r[f"annotator{k}"] for k in (1, 2, 3)].count(1) >= 2)  # response1 wins
    example, row = next((e, r) for e, r in zip(examples, rows, strict=True) if e.chosen == str(first["response1"]))
    prompt = first["instruction"] + (f"\n\n{first['input']}" if first["input"] else "")
    assert example.prompt == [{"role": "user", "content": prompt}] and example.rejected == str(first["response2"])
    assert row["chosen"] == f"\n\nHuman: {prompt}\n\nAssistant: {first['response1']}"
    # split by instruction: no instruction has pairs on both sides, and the test side holds 20% or just over
    groups = [json.dumps(e.prompt) for e in examples]
    train, test = bench.split_indices(len(examples), groups=groups)
    assert (len(train), len(test)) == (709, 185) and sorted(train + test) == list(range(894))
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    assert len({groups[i] for i in test}) == 33 and len(set(groups)) == 158
    # HH, split by pair as every earlier run was: the same 1,850 / 462
    assert [len(side) for side in bench.split_indices(2312)] == [1850, 462]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_a_tiny_pandalm_run_prints_and_writes_the_fair_arm_and_the_length_rule(pandalm: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    result = _run(*TINY_RUN, "--data", str(pandalm), "--trl-fair-lr", "5e-5", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(out.read_text())
    assert record["data"] == "pandalm" and record["eval_on"] == "test"
    for key in ("ours_single", "trl", "trl_fair", "length_heuristic"):
        assert record[key]["n"] == 185, key
    assert record["trl_fair"]["lr"] == 5e-5
    assert record["trl_fair_train_pairs_kept"] == 16  # cut from the left, nothing dropped
    for key in ("ours_single", "ours_ensemble"):
        fair = 100 * (record[key]["accuracy"] - record["trl_fair"]["accuracy"])
        assert record[f"delta_{key}_fair"] == pytest.approx(fair)
        assert record[f"time_ratio_{key}_fair"] == pytest.approx(record[key]["train_s"] / record["trl_fair"]["train_s"])
        assert f"delta_{key}" in record and f"time_ratio_{key}" in record
    stdout = result.stdout
    assert "PandaLM test set: 894 pairs" in stdout
    assert "score on all 185 test pairs (split seed 0, by instruction)" in stdout
    assert f"{'(d) fair TRL, lr 5e-05':<34} {100 * record['trl_fair']['accuracy']:>8.1f}" in stdout
    assert f"{'(e) the longer answer wins':<34} {100 * record['length_heuristic']['accuracy']:>8.1f}" in stdout
    assert f"(a) - (d): {record['delta_ours_single_fair']:+.1f} accuracy points" in stdout
    assert f"(a) - (c): {record['delta_ours_single']:+.1f} accuracy points" in stdout
    assert "fair TRL trained on 16 of 16 pairs" in stdout and "0 pairs dropped" in stdout


def test_the_lr_grid_runs_only_on_dev_pairs() -> None:
    result = _run(*TINY_RUN, "--trl-lr-grid", "1e-4,3e-5")
    assert result.returncode == 2 and "--trl-lr-grid needs --eval-on dev" in result.stderr
