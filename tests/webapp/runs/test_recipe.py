"""The training recipe: validation, defaults and presets (pure code), and the gate's verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from webapp.runs.gate import gate_judge
from webapp.runs.recipe import PRESETS, Recipe, RecipeError


def test_defaults_are_valid_and_round_trip():
    recipe = Recipe()
    assert recipe.kind == "dpo"
    assert Recipe.from_dict(recipe.to_dict()) == recipe


@pytest.mark.parametrize(
    ("method", "kind"),
    [("dpo", "dpo"), ("robust_dpo", "dpo"), ("ipo", "dpo"), ("lipo", "lipo"), ("kto", "kto"), ("grpo", "grpo")],
)
def test_each_method_maps_to_the_run_kind_that_carries_it_out(method: str, kind: str):
    assert Recipe.from_dict({"method": method}).kind == kind


def test_every_bad_field_is_named_at_once():
    with pytest.raises(RecipeError) as caught:
        Recipe.from_dict(
            {"method": "ppo", "beta": -1, "held_out_share": 0.9, "epochs": "many", "required_checks": ["vibes"]}
        )
    errors = caught.value.errors
    assert set(errors) == {"method", "beta", "held_out_share", "epochs", "required_checks"}
    assert "dpo" in errors["method"] and "whole number" in errors["epochs"] and "vibes" in errors["required_checks"]


def test_unknown_fields_and_robust_dpo_without_epsilon_are_refused():
    with pytest.raises(RecipeError, match="typo_field: is not a recipe field"):
        Recipe.from_dict({"typo_field": 1})
    with pytest.raises(RecipeError, match="robust DPO needs"):
        Recipe.from_dict({"method": "robust_dpo", "robust_epsilon": 0})


def test_form_strings_are_read_as_numbers_and_defaults_fill_the_rest():
    recipe = Recipe.from_dict(
        {"beta": "0.2", "epochs": "2", "required_checks": "kl, win_rate"}, defaults={"auto_train_every": 5}
    )
    assert (recipe.beta, recipe.epochs, recipe.auto_train_every) == (0.2, 2, 5)
    assert recipe.required_checks == ("kl", "win_rate")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_recipe(name: str):
    assert Recipe.from_dict(PRESETS[name]).method == PRESETS[name]["method"]


def _accuracy(wins: int, losses: int, ties: int = 0) -> dict:
    n = wins + losses + ties
    return {"value": (wins + 0.5 * ties) / n, "n": n, "wins": wins, "losses": losses, "ties": ties}


def _win_rate(wins: int, losses: int, undecided: int = 0) -> dict:
    n = wins + losses + undecided
    return {"value": (wins + 0.5 * undecided) / n, "n": n, "wins": wins, "losses": losses, "undecided": undecided}


KL = {"value": 0.3, "n": 32, "sd": 0.2}


def test_the_point_rule_rejects_on_any_failed_check_and_names_it():
    figures = {"heldout_accuracy": {"value": 0.2, "n": 10}, "kl": {"value": 0.3, "n": 8}}
    gate = gate_judge(figures, Recipe(gate_rule="threshold"), against="v1", skipped={"win_rate": "no reward model"})
    assert gate["verdict"] == "rejected" and gate["against"] == "v1"
    assert gate["reason"] == "held-out preference accuracy 0.200 < 0.5"
    by_name = {c["name"]: c for c in gate["checks"]}
    assert by_name["kl"]["passed"] is True and by_name["win_rate"]["passed"] is None
    assert by_name["win_rate"]["skipped"] == "no reward model"


def test_the_point_rule_passes_with_the_checks_it_could_run_unless_one_is_required():
    figures = {"heldout_accuracy": {"value": 0.8, "n": 10}, "kl": {"value": 9.0, "n": 8}}
    recipe = Recipe(max_kl=10.0, gate_rule="threshold")
    assert gate_judge(figures, recipe, against="v1", skipped={"win_rate": "none"})["verdict"] == "passed"
    required = Recipe(max_kl=10.0, required_checks=("win_rate",), gate_rule="threshold")
    waiting = gate_judge(figures, required, against="v1", skipped={})
    assert waiting["verdict"] == "waiting" and "reward-model win rate not checked" in waiting["reason"]
    thin = {"win_rate": _win_rate(5, 4), "kl": KL}  # it ran, on too few prompts to decide
    held = gate_judge(thin, Recipe(required_checks=("win_rate",)), against="v1", skipped={})
    assert held["verdict"] == "waiting" and "too few to tell" in held["reason"]
    too_far = gate_judge(figures, Recipe(max_kl=5.0, gate_rule="threshold"), against="v1", skipped={})
    assert too_far["verdict"] == "rejected" and too_far["reason"] == "KL 9.000 > 5"


@pytest.mark.parametrize(
    ("wins", "losses", "verdict", "passed"),
    [
        pytest.param(50, 50, "passed", True, id="equal-on-100-pairs-is-not-worse"),
        pytest.param(9, 1, "passed", True, id="better-on-10-pairs"),
        pytest.param(1, 9, "rejected", False, id="worse-on-10-pairs"),
        pytest.param(34, 66, "rejected", False, id="worse-on-100-pairs"),
        pytest.param(4, 6, "unchecked", None, id="a-dip-on-10-pairs-is-not-evidence"),
    ],
)
def test_non_inferiority_rejects_on_evidence_of_worse_not_on_a_dip(wins, losses, verdict, passed):
    gate = gate_judge({"heldout_accuracy": _accuracy(wins, losses), "kl": KL}, Recipe(), against="v1", skipped={})
    check = next(c for c in gate["checks"] if c["name"] == "heldout_accuracy")
    assert (gate["verdict"], check["passed"]) == (verdict, passed), gate["reason"]
    low, high = check["interval"]
    assert low <= wins / (wins + losses) <= high and check["n"] == wins + losses
    assert "interval" in check["summary"] and f"on {wins + losses} pairs" in check["summary"]


def test_a_dip_under_half_that_the_point_rule_rejects_is_unchecked_under_non_inferiority():
    figures = {"heldout_accuracy": _accuracy(3, 7), "kl": KL}  # the case: 0.30 on ten noisy pairs
    assert gate_judge(figures, Recipe(gate_rule="threshold"), against="v1", skipped={})["verdict"] == "rejected"
    gate = gate_judge(figures, Recipe(), against="v1", skipped={})
    assert gate["verdict"] == "unchecked" and gate["unchecked"] == "serve"
    assert "too few to tell a candidate worse by 0.15" in gate["reason"]


def test_a_candidate_no_check_could_judge_is_unchecked_never_passed():
    skipped = {"heldout_accuracy": "3 held-out pairs, fewer than 10", "win_rate": "no reward model"}
    gate = gate_judge({"kl": KL}, Recipe(), against="v1", skipped=skipped)  # the KL check alone passed
    assert gate["verdict"] == "unchecked" and gate["reason"].startswith("no check could judge its quality")
    for rule in ("threshold", "non_inferiority"):
        nothing = gate_judge({}, Recipe(gate_rule=rule), against="v1", skipped=skipped)
        assert nothing["verdict"] == "unchecked"
    waits = gate_judge({"kl": KL}, Recipe(gate_unchecked="wait"), against="v1", skipped=skipped)
    assert waits["unchecked"] == "wait"


def test_ties_and_undecided_prompts_carry_no_evidence():
    equal = gate_judge({"heldout_accuracy": _accuracy(0, 0, ties=40)}, Recipe(), against="v1", skipped={})
    assert equal["verdict"] == "unchecked"  # an identical candidate: 40 ties are no evidence either way
    rm = {"win_rate": _win_rate(26, 4, undecided=30), "kl": KL}
    gate = gate_judge(rm, Recipe(), against="v1", skipped={})
    check = next(c for c in gate["checks"] if c["name"] == "win_rate")
    assert gate["verdict"] == "passed" and check["evidence"]["n_decided"] == 30 and check["evidence"]["ties"] == 30


def test_the_kl_check_fails_only_when_its_interval_lies_beyond_the_bound():
    near = gate_judge({"kl": {"value": 5.5, "n": 8, "sd": 3.0}}, Recipe(max_kl=5.0), against="v1", skipped={})
    assert near["verdict"] == "unchecked"  # 5.5 ± 1.7: not shown to be beyond 5
    far = gate_judge({"kl": {"value": 9.0, "n": 32, "sd": 1.0}}, Recipe(max_kl=5.0), against="v1", skipped={})
    assert far["verdict"] == "rejected" and "beyond 5" in far["reason"]


def test_gate_settings_are_checked():
    with pytest.raises(RecipeError) as caught:
        Recipe.from_dict({"gate_rule": "vibes", "gate_confidence": 1.5, "gate_margin": 0, "gate_unchecked": "x"})
    assert set(caught.value.errors) == {"gate_rule", "gate_confidence", "gate_margin", "gate_unchecked"}


def test_train_from_first_needs_every_label():
    assert Recipe.from_dict({"train_from": "first"}).train_from == "first"  # label_scope all is the default
    with pytest.raises(RecipeError, match="needs label_scope all"):
        Recipe.from_dict({"train_from": "first", "label_scope": "new"})
    with pytest.raises(RecipeError, match="train_from: must be one of serving, first"):
        Recipe.from_dict({"train_from": "scratch"})


def test_a_lora_rank_above_what_the_policy_server_loads_is_refused(settings):
    """One setting, MAX_LORA_RANK, bounds the recipe and starts vLLM (docker-compose.yml)."""
    assert Recipe.from_dict({"lora_rank": 64}).lora_rank == 64
    with pytest.raises(RecipeError, match=r"lora_rank: must be from 1 to 64 \(MAX_LORA_RANK"):
        Recipe.from_dict({"lora_rank": 128})
    settings.MAX_LORA_RANK = 256
    assert Recipe.from_dict({"lora_rank": 128}).lora_rank == 128
    compose = (Path(__file__).resolve().parents[3] / "docker-compose.yml").read_text()
    assert '"--max-lora-rank", "${MAX_LORA_RANK:-64}"' in compose


def test_only_runs_that_can_use_them_take_several_processes():
    assert Recipe.from_dict({"processes": 2}).processes == 2  # DPO, the default
    assert Recipe.from_dict({"method": "kto", "processes": 4}).processes == 4
    assert Recipe.from_dict({"method": "online_dpo", "processes": 2}).processes == 2  # it trains with DPO
    with pytest.raises(RecipeError, match=r"only DPO-family runs \(online DPO too\) and KTO runs"):
        Recipe.from_dict({"method": "lipo", "processes": 2})
    with pytest.raises(RecipeError, match="processes: must be from 0"):
        Recipe.from_dict({"processes": 65})
