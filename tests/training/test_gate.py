"""The gate's figures: the win rate's ensemble bounds (pure), and the implicit reward and KL on a
tiny policy whose candidate adapter was trained to prefer one answer."""

from __future__ import annotations

import pytest

from training.gate import GateConfig, PolicyPair, evaluate_candidate, heldout_accuracy, kl_from_serving, win_rate

PROMPT = [{"role": "user", "content": "Is the sky blue?"}]


def test_a_win_counts_only_where_the_ensembles_lower_bound_agrees():
    prompts = [PROMPT] * 3
    # members x answers: the candidate's answers, then the serving version's
    scores = {
        ("c0", "c1", "c2"): [[2.0, 1.0, 0.0], [2.0, -1.0, -1.0]],
        ("s0", "s1", "s2"): [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]],
    }
    result = win_rate(prompts, ["c0", "c1", "c2"], ["s0", "s1", "s2"], lambda p, a: scores[tuple(a)])
    # prompt 0: both members say +2 -> win; prompt 1: +1 and -1 -> undecided; prompt 2: -1 and -2 -> loss
    assert (result["wins"], result["undecided"], result["losses"]) == (1, 1, 1)
    assert result["value"] == pytest.approx(0.5)
    assert result["length_controlled"] == pytest.approx(0.5)  # all answers equally long: the plain rate


def test_the_win_rate_is_also_reported_at_equal_length():
    # the candidate wins exactly where its answer is the longer one: length, not quality
    answers = [("a much longer answer than that", "short"), ("tiny", "a far longer answer here")] * 4
    cand, serv = [a for a, _ in answers], [b for _, b in answers]

    def members(prompts, texts):
        return [[float(len(t)) for t in texts]]

    result = win_rate([PROMPT] * len(answers), cand, serv, members)
    assert result["value"] == 0.5 and result["length_controlled"] == pytest.approx(0.5, abs=0.05)
    longer_wins = win_rate([PROMPT] * 6, ["long answer one", "long answer two", "long answer 3", "x", "y", "z"],
                           ["s", "t", "u", "longer one", "longer two", "longer 3"], members)  # fmt: skip
    assert longer_wins["value"] == 0.5 and longer_wins["length_controlled"] < 0.6


def test_one_member_judges_by_the_plain_difference():
    result = win_rate([PROMPT] * 2, ["a", "b"], ["c", "d"], lambda p, a: [[1.0, 0.0] if a[0] == "a" else [0.0, 0.0]])
    assert (result["wins"], result["undecided"], result["value"]) == (1, 1, 0.75)


def test_win_rate_refuses_mismatched_answers():
    with pytest.raises(ValueError, match="one candidate and one serving answer per prompt"):
        win_rate([PROMPT], ["a", "b"], ["c"], lambda p, a: [[0.0] * len(a)])


@pytest.fixture(scope="module")
def adapters(tiny_policy_path, tmp_path_factory):
    """The serving adapter (fresh: the base model) and a candidate DPO-trained to say 'Yes.'."""
    from training.dpo import DPOTrainConfig, PreferencePair, create_initial_adapter, train_dpo

    root = tmp_path_factory.mktemp("gate")
    serving = create_initial_adapter(tiny_policy_path, root / "serving", DPOTrainConfig())
    pairs = [
        PreferencePair(prompt=[{"role": "user", "content": f"Question {i}?"}], chosen="Yes.", rejected="No.")
        for i in range(8)
    ]
    train_dpo(
        base_model_path=tiny_policy_path,
        adapter_path=serving,
        pairs=pairs,
        out_dir=root / "candidate",
        config=DPOTrainConfig(learning_rate=1e-3),
    )
    return serving, root / "candidate"


def test_the_candidates_implicit_reward_favours_what_it_learned(tiny_policy_path, adapters):
    serving, candidate = adapters
    pair = PolicyPair(tiny_policy_path, candidate, serving, GateConfig(max_tokens=8))
    held_out = [{"prompt": [{"role": "user", "content": "Another question?"}], "chosen": "Yes.", "rejected": "No."}]
    assert heldout_accuracy(pair, held_out)["value"] == 1.0
    flipped = [{**held_out[0], "chosen": "No.", "rejected": "Yes."}]
    assert heldout_accuracy(pair, flipped)["value"] == 0.0
    same = PolicyPair(tiny_policy_path, serving, serving, GateConfig(max_tokens=8))
    equal = heldout_accuracy(same, held_out)
    assert equal["mean_margin"] == pytest.approx(0.0, abs=1e-4)  # no reward, no win
    assert (equal["ties"], equal["value"]) == (1, 0.5)  # a tie: an equal candidate reads 0.5, not 0
    assert kl_from_serving(same, [PROMPT])["value"] == pytest.approx(0.0, abs=1e-4)
    assert kl_from_serving(pair, [PROMPT])["value"] > 0.01  # the candidate moved away from the serving one


def test_evaluate_candidate_measures_what_it_has_data_for(tiny_policy_path, adapters):
    serving, candidate = adapters
    figures = evaluate_candidate(
        base_model_path=tiny_policy_path,
        candidate_adapter=candidate,
        serving_adapter=serving,
        pairs=[],
        prompts=[PROMPT],
        score_members=lambda p, a: [[float(len(x)) for x in a], [float(len(x)) + 0.1 for x in a]],
        config=GateConfig(max_tokens=8),
    )
    assert set(figures) == {"kl", "win_rate"} and figures["win_rate"]["n"] == 1
