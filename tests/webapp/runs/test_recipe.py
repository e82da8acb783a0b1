"""The training recipe: validation, defaults and presets (pure code), and the gate's verdict."""

from __future__ import annotations

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


def test_the_gate_rejects_on_any_failed_check_and_names_it():
    figures = {"heldout_accuracy": {"value": 0.2, "n": 10}, "kl": {"value": 0.3, "n": 8}}
    gate = gate_judge(figures, Recipe(), against="v1", skipped={"win_rate": "no reward model"})
    assert gate["verdict"] == "rejected" and gate["against"] == "v1"
    assert gate["reason"] == "held-out preference accuracy 0.200 < 0.5"
    by_name = {c["name"]: c for c in gate["checks"]}
    assert by_name["kl"]["passed"] is True and by_name["win_rate"]["passed"] is None
    assert by_name["win_rate"]["skipped"] == "no reward model"


def test_the_gate_passes_with_the_checks_it_could_run_unless_one_is_required():
    figures = {"heldout_accuracy": {"value": 0.8, "n": 10}, "kl": {"value": 9.0, "n": 8}}
    recipe = Recipe(max_kl=10.0)
    assert gate_judge(figures, recipe, against="v1", skipped={"win_rate": "none"})["verdict"] == "passed"
    waiting = gate_judge(figures, Recipe(max_kl=10.0, required_checks=("win_rate",)), against="v1", skipped={})
    assert waiting["verdict"] == "waiting" and "reward-model win rate not checked" in waiting["reason"]
    too_far = gate_judge(figures, Recipe(max_kl=5.0), against="v1", skipped={})
    assert too_far["verdict"] == "rejected" and too_far["reason"] == "KL 9.000 > 5"
