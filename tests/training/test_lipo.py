from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from training.adapters import load_trainable_policy
from training.dpo import DPOTrainConfig, create_initial_adapter
from training.lipo import LiPOTrainConfig, RankedAnswers, sequence_logps, train_lipo
from training.tiny_model import chat_corpus

torch.set_num_threads(1)


def _rankings() -> list[RankedAnswers]:
    """The corpus answer first, two other questions' answers after it (tied)."""
    corpus = chat_corpus()
    out = []
    for i in range(6):
        question, answer = corpus[i][0]["content"], corpus[i][1]["content"]
        wrong = [corpus[(i + 7) % len(corpus)][1]["content"], corpus[(i + 13) % len(corpus)][1]["content"]]
        out.append(
            RankedAnswers(
                prompt=[{"role": "user", "content": question}],
                completions=[wrong[0], answer, wrong[1]],
                ranks=[1, 0, 1],
            )
        )
    return out


def test_ranked_answers_validation():
    with pytest.raises(ValueError, match="2 to 9"):
        RankedAnswers(prompt=[{"role": "user", "content": "q"}], completions=["a"], ranks=[0])
    with pytest.raises(ValueError, match="tied"):
        RankedAnswers(prompt=[{"role": "user", "content": "q"}], completions=["a", "b"], ranks=[0, 0])
    with pytest.raises(ValueError, match="ranks"):
        RankedAnswers(prompt=[{"role": "user", "content": "q"}], completions=["a", "b"], ranks=[0])


def test_lipo_moves_the_policy_toward_the_human_order(tiny_policy_path, tmp_path):
    start = create_initial_adapter(tiny_policy_path, tmp_path / "v1", DPOTrainConfig())
    rankings = _rankings()
    seen = []
    metrics = train_lipo(
        base_model_path=tiny_policy_path,
        adapter_path=start,
        rankings=rankings,
        out_dir=tmp_path / "v2",
        config=LiPOTrainConfig(learning_rate=1e-3, epochs=4),
        progress=seen.append,
    )
    assert metrics["steps"] == 24 and [s["step"] for s in seen] == list(range(1, 25))
    assert metrics["final_epoch_loss"] < metrics["first_epoch_loss"]
    assert seen[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference at the first step: log 2
    before, after = load_file(start / "adapter_model.safetensors"), load_file(tmp_path / "v2/adapter_model.safetensors")
    assert any(not before[k].equal(after[k]) for k in before)

    def margin(adapter) -> float:
        model = load_trainable_policy(tiny_policy_path, adapter, bf16=False).eval()
        with torch.no_grad():
            total = 0.0
            for r in rankings:
                logps = sequence_logps(model, tokenizer, r.prompt, r.completions, 256)
                total += float(logps[1] - (logps[0] + logps[2]) / 2)
        return total / len(rankings)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_policy_path))
    assert margin(tmp_path / "v2") > margin(start) + 0.1


def test_weights_let_trusted_rankings_outvote_flipped_ones(tiny_policy_path, tmp_path):
    """The same rankings and their reverse from an untrusted annotator: equal weights pull both
    ways, while weighting the reversed ones down moves the policy towards the sound order."""
    from transformers import AutoTokenizer

    start = create_initial_adapter(tiny_policy_path, tmp_path / "v1", DPOTrainConfig())
    sound = _rankings()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_policy_path))

    def margin(adapter) -> float:
        model = load_trainable_policy(tiny_policy_path, adapter, bf16=False).eval()
        with torch.no_grad():
            gaps = [sequence_logps(model, tokenizer, r.prompt, r.completions, 256) for r in sound]
        return sum(float(g[1] - (g[0] + g[2]) / 2) for g in gaps) / len(gaps)

    margins = {}
    for name, weight in (("equal", 1.0), ("weighted", 0.1)):
        flipped = [
            RankedAnswers(prompt=r.prompt, completions=r.completions, ranks=[1 - k for k in r.ranks], weight=weight)
            for r in sound
        ]
        train_lipo(
            base_model_path=tiny_policy_path,
            adapter_path=start,
            rankings=[*sound, *flipped],
            out_dir=tmp_path / name,
            config=LiPOTrainConfig(learning_rate=1e-3, epochs=2),
        )
        margins[name] = margin(tmp_path / name)
    before = margin(start)
    assert margins["weighted"] > before + 0.1, (before, margins)
    assert margins["weighted"] > margins["equal"] + 0.1, (before, margins)
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        RankedAnswers(prompt=sound[0].prompt, completions=["a", "b"], ranks=[0, 1], weight=float("nan"))
