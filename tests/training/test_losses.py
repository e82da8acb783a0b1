"""Tests for training.losses: closed-form values, reductions between losses, and agreement with TRL."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    bradley_terry_loss,
    dpo_loss,
    ensemble_score,
    grpo_advantages,
    kl_penalty,
    lipo_lambda_loss,
    plackett_luce_loss,
)

torch.set_num_threads(1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logps(batch: int, seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    g = _gen(seed)
    return tuple(-torch.rand(batch, generator=g, dtype=dtype) * 20 for _ in range(4))


# --------------------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_value_and_margin() -> None:
    chosen = torch.tensor([1.0, 0.0, -2.0])
    rejected = torch.tensor([0.0, 0.5, -3.0])
    loss, diag = bradley_terry_loss(chosen, rejected)
    expected = -F.logsigmoid(chosen - rejected).mean()
    torch.testing.assert_close(loss, expected)
    assert diag["rewards/accuracies"].item() == pytest.approx(2 / 3)
    assert not diag["rewards/margins"].requires_grad
    margin = torch.tensor([0.5, 0.0, 1.0])
    loss_m, _ = bradley_terry_loss(chosen, rejected, margin)
    torch.testing.assert_close(loss_m, -F.logsigmoid(chosen - rejected - margin).mean())
    assert loss_m > loss


def test_bradley_terry_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(3,\)"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="margin"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3), torch.zeros(2))


def test_bradley_terry_label_smoothing_is_cross_entropy_against_a_soft_target() -> None:
    chosen = torch.randn(6, generator=_gen(1), dtype=torch.float64)
    rejected = torch.randn(6, generator=_gen(2), dtype=torch.float64)
    plain, _ = bradley_terry_loss(chosen, rejected)
    zero, _ = bradley_terry_loss(chosen, rejected, label_smoothing=0.0)
    assert torch.equal(zero, plain)
    for eps in (0.05, 0.1, 0.3):
        smoothed, diag = bradley_terry_loss(chosen, rejected, label_smoothing=eps)
        target = torch.full_like(chosen, 1.0 - eps)  # P(chosen wins) the loss trains towards
        torch.testing.assert_close(smoothed, F.binary_cross_entropy_with_logits(chosen - rejected, target))
        assert diag["rewards/accuracies"].item() == pytest.approx(float((chosen > rejected).double().mean()))
    # with a margin, the other label keeps the same margin: -log sigmoid(r_r - r_c - m)
    margin = torch.tensor([0.0, 1.0, 0.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    smoothed, _ = bradley_terry_loss(chosen, rejected, margin, label_smoothing=0.2)
    expected = (-0.8 * F.logsigmoid(chosen - rejected - margin) - 0.2 * F.logsigmoid(rejected - chosen - margin)).mean()
    torch.testing.assert_close(smoothed, expected)


def test_bradley_terry_label_smoothing_bounds_the_pair_margin() -> None:
    # log 2 at a zero difference for any e; the loss is least at d = log((1 - e) / e), and falls
    # without bound in d for the plain loss only
    for eps in (0.1, 0.25):
        at_zero, _ = bradley_terry_loss(torch.zeros(1), torch.zeros(1), label_smoothing=eps)
        assert at_zero.item() == pytest.approx(math.log(2))
        d = torch.tensor([math.log((1 - eps) / eps)], dtype=torch.float64, requires_grad=True)
        loss, _ = bradley_terry_loss(d, torch.zeros(1, dtype=torch.float64), label_smoothing=eps)
        (grad,) = torch.autograd.grad(loss, d)
        assert abs(grad.item()) < 1e-12
        further, _ = bradley_terry_loss(d.detach() + 1.0, torch.zeros(1, dtype=torch.float64), label_smoothing=eps)
        assert further > loss
    plain_far, _ = bradley_terry_loss(torch.tensor([10.0]), torch.zeros(1))
    plain_near, _ = bradley_terry_loss(torch.tensor([3.0]), torch.zeros(1))
    assert plain_far < plain_near


@pytest.mark.parametrize("eps", [-0.1, 0.5, 1.0, True, "0.1"])
def test_bradley_terry_rejects_bad_label_smoothing(eps: object) -> None:
    with pytest.raises(ValueError, match=r"label_smoothing=.* must be a number in \[0, 0.5\)"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(2), label_smoothing=eps)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- DPO


def test_dpo_sigmoid_is_log2_when_policy_equals_reference() -> None:
    pc, pr, _, _ = _logps(5, seed=1)
    loss, diag = dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=0.3)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-12)
    assert diag["rewards/margins"].item() == pytest.approx(0.0, abs=1e-12)


def test_robust_dpo_with_zero_noise_equals_sigmoid() -> None:
    inputs = _logps(7, seed=2)
    sigmoid, _ = dpo_loss(*inputs, beta=0.2, loss_type="sigmoid")
    robust, _ = dpo_loss(*inputs, beta=0.2, loss_type="robust", label_smoothing=0.0)
    torch.testing.assert_close(robust, sigmoid)
    noisy, _ = dpo_loss(*inputs, beta=0.2, loss_type="robust", label_smoothing=0.2)
    assert not torch.isclose(noisy, sigmoid)


def test_ipo_at_reference_equals_inverse_two_beta_squared() -> None:
    pc, pr, _, _ = _logps(4, seed=3)
    beta = 0.25
    loss, _ = dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=beta, loss_type="ipo")
    assert loss.item() == pytest.approx((1 / (2 * beta)) ** 2)


def test_dpo_argument_validation() -> None:
    inputs = _logps(3, seed=4)
    with pytest.raises(ValueError, match="'hinge'"):
        dpo_loss(*inputs, loss_type="hinge")
    with pytest.raises(ValueError, match=r"-0\.1"):
        dpo_loss(*inputs, beta=-0.1)
    with pytest.raises(ValueError, match=r"\[0, 0\.5\)"):
        dpo_loss(*inputs, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="only applies"):
        dpo_loss(*inputs, loss_type="sigmoid", label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"\(2,\)"):
        dpo_loss(inputs[0], inputs[1], inputs[2], inputs[3][:2])


def _trl_dpo_loss(
    pc: torch.Tensor,
    pr: torch.Tensor,
    rc: torch.Tensor,
    rr: torch.Tensor,
    lengths: torch.Tensor,
    *,
    beta: float,
    loss_type: str,
    label_smoothing: float,
) -> tuple[torch.Tensor, dict]:
    """Run TRL 1.16's own ``DPOTrainer._compute_loss`` (the loss code path of ``compute_loss``).

    No trainer is built: the unbound method is called on a stub ``self`` holding only the attributes
    that path reads, with precomputed reference log-probs and a stub model whose per-token
    log-probs sum to the given sequence log-probs. Sequences are ``[prompt token, completion...]``
    with ``lengths`` completion tokens (TRL's IPO divides by them).
    """
    from trl.trainer.dpo_trainer import DPOTrainer

    batch, width = pc.shape[0], int(lengths.max()) + 1
    all_lengths = torch.cat([lengths, lengths])  # (2*batch,): the batch is [chosen, rejected]
    positions = torch.arange(width).unsqueeze(0)  # (1, width)
    completion_mask = ((positions >= 1) & (positions <= all_lengths.unsqueeze(1))).long()  # (2*batch, width)
    shift_mask = completion_mask[:, 1:].to(pc.dtype)  # (2*batch, width - 1)
    totals = torch.cat([pc, pr])  # (2*batch,)
    per_token = shift_mask * (totals / all_lengths.to(pc.dtype)).unsqueeze(1)  # (2*batch, width - 1)

    def model(**_: object) -> SimpleNamespace:
        zeros = torch.zeros_like(per_token)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t)
    stub = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=accelerator,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.ones(2 * batch, width, dtype=torch.long),
        "attention_mask": torch.ones(2 * batch, width, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": rc,
        "ref_rejected_logps": rr,
    }
    loss = DPOTrainer._compute_loss(stub, model, inputs, return_outputs=False)  # type: ignore[arg-type]
    return loss, {k: v[-1] for k, v in stub._metrics["train"].items()}


@pytest.mark.parametrize(
    ("loss_type", "label_smoothing"), [("sigmoid", 0.0), ("robust", 0.0), ("robust", 0.3), ("ipo", 0.0)]
)
def test_dpo_matches_trl_dpo_trainer(loss_type: str, label_smoothing: float) -> None:
    batch, beta = 6, 0.15
    pc, pr, rc, rr = _logps(batch, seed=5)
    lengths = torch.randint(1, 6, (batch,), generator=_gen(6))
    expected, trl_metrics = _trl_dpo_loss(
        pc, pr, rc, rr, lengths, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing
    )
    if loss_type == "ipo":
        # TRL's IPO uses log-probs averaged over completion tokens; so does the caller of dpo_loss.
        n = torch.cat([lengths, lengths]).to(pc.dtype)
        pc, pr, rc, rr = pc / n[:batch], pr / n[batch:], rc / n[:batch], rr / n[batch:]
    loss, diag = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    torch.testing.assert_close(loss, expected)
    if loss_type != "ipo":
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            assert diag[key].item() == pytest.approx(trl_metrics[key], rel=1e-9, abs=1e-12), key


# --------------------------------------------------------------------------- Plackett-Luce


def _pl_brute_force(scores: list[float], order: list[int]) -> float:
    """PL NLL of a strict order (best first), straight from the definition."""
    nll, remaining = 0.0, list(order)
    for item in order:
        nll += math.log(sum(math.exp(scores[j]) for j in remaining)) - scores[item]
        remaining.remove(item)
    return nll


def test_plackett_luce_on_two_items_equals_bradley_terry() -> None:
    g = _gen(7)
    chosen, rejected = torch.randn(8, generator=g), torch.randn(8, generator=g)
    flip = torch.rand(8, generator=g) < 0.5  # put chosen in column 1 for some rows
    scores = torch.where(flip.unsqueeze(1), torch.stack([rejected, chosen], 1), torch.stack([chosen, rejected], 1))
    ranks = torch.where(flip.unsqueeze(1), torch.tensor([1, 0]), torch.tensor([0, 1]))  # (8, 2)
    pl, _ = plackett_luce_loss(scores, ranks)
    bt, _ = bradley_terry_loss(chosen, rejected)
    torch.testing.assert_close(pl, bt, rtol=0, atol=1e-6)


def test_plackett_luce_matches_definition_without_ties() -> None:
    g = _gen(8)
    scores = torch.randn(1, 5, generator=g, dtype=torch.float64)
    perm = torch.randperm(5, generator=g)
    ranks = torch.empty_like(perm)
    ranks[perm] = torch.arange(5)  # item perm[k] has rank k
    loss, _ = plackett_luce_loss(scores, ranks.unsqueeze(0))
    assert loss.item() == pytest.approx(_pl_brute_force(scores[0].tolist(), perm.tolist()), rel=1e-12)


def test_plackett_luce_prefers_the_true_order() -> None:
    g = _gen(9)
    n = 6
    perm = torch.randperm(n, generator=g)
    true_ranks = torch.empty_like(perm)
    true_ranks[perm] = torch.arange(n)
    scores = (n - true_ranks).to(torch.float32) + 0.1 * torch.randn(n, generator=g)  # agree with the truth
    true_loss, _ = plackett_luce_loss(scores.unsqueeze(0), true_ranks.unsqueeze(0))
    reversed_loss, _ = plackett_luce_loss(scores.unsqueeze(0), (n - 1 - true_ranks).unsqueeze(0))
    assert true_loss < reversed_loss


def test_plackett_luce_gradcheck() -> None:
    g = _gen(10)
    scores = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ranks = torch.tensor([[0, 1, 2, 3, 4], [2, 0, 2, 1, 0], [4, 3, 1, 0, 9]])
    mask = torch.tensor([[True] * 5, [True] * 5, [True, True, True, False, False]])
    assert torch.autograd.gradcheck(lambda s: plackett_luce_loss(s, ranks, mask)[0], (scores,))


def test_plackett_luce_ties_as_documented() -> None:
    g = _gen(11)
    scores = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    # All tied: loss 0 and no gradient.
    loss, _ = plackett_luce_loss(scores, torch.zeros(2, 4, dtype=torch.long))
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, scores)
    assert torch.count_nonzero(grad) == 0
    # Tied items never compete: each item is a Luce choice from itself and the strictly worse items.
    s = scores.detach()[0].tolist()
    ranks = torch.tensor([[0, 0, 1, 1]])

    def lse(values: list[float]) -> float:
        return math.log(sum(math.exp(v) for v in values))

    expected = (lse([s[0], s[2], s[3]]) - s[0]) + (lse([s[1], s[2], s[3]]) - s[1])
    loss, _ = plackett_luce_loss(scores.detach()[:1], ranks)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # Swapping the scores of tied items does not change the loss.
    swapped = scores.detach()[:1, [1, 0, 3, 2]]
    torch.testing.assert_close(plackett_luce_loss(swapped, ranks)[0], loss)
    # It upper-bounds the exact marginal NLL (summing PL over the orders of each tie group).
    orders = [[a, b, c, d] for a, b in itertools.permutations([0, 1]) for c, d in itertools.permutations([2, 3])]
    marginal = -math.log(sum(math.exp(-_pl_brute_force(s, o)) for o in orders))
    assert loss.item() >= marginal - 1e-12
    # Gaps in ranks do not matter, only their order.
    torch.testing.assert_close(plackett_luce_loss(scores.detach()[:1], ranks * 7 + 3)[0], loss)


def test_plackett_luce_ignores_padding() -> None:
    g = _gen(12)
    scores = torch.randn(2, 3, generator=g)
    ranks = torch.tensor([[2, 0, 1], [0, 1, 1]])
    plain, _ = plackett_luce_loss(scores, ranks)
    padded_scores = torch.cat([scores, torch.tensor([[100.0, float("nan")], [-5.0, 3.0]])], dim=1)  # (2, 5)
    padded_ranks = torch.cat([ranks, torch.tensor([[0, 0], [7, -1]])], dim=1)  # (2, 5)
    mask = torch.tensor([[True, True, True, False, False]] * 2)
    padded_scores.requires_grad_(True)
    padded, _ = plackett_luce_loss(padded_scores, padded_ranks, mask)
    torch.testing.assert_close(padded, plain)
    (grad,) = torch.autograd.grad(padded, padded_scores)
    assert torch.isfinite(grad).all() and torch.count_nonzero(grad[:, 3:]) == 0


def test_plackett_luce_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="float32"):
        plackett_luce_loss(torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"\[-1\]"):
        plackett_luce_loss(torch.zeros(1, 2), torch.tensor([[0, -1]]))
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        plackett_luce_loss(torch.zeros(1, 2), torch.zeros(1, 3, dtype=torch.long))


# --------------------------------------------------------------------------- LiPO-lambda


def test_lipo_lambda_on_two_items_equals_dpo() -> None:
    pc, pr, rc, rr = _logps(5, seed=13)
    beta = 0.2
    flip = torch.tensor([False, True, False, True, True])  # chosen in column 1 for some rows
    policy = torch.where(flip.unsqueeze(1), torch.stack([pr, pc], 1), torch.stack([pc, pr], 1))  # (5, 2)
    ref = torch.where(flip.unsqueeze(1), torch.stack([rr, rc], 1), torch.stack([rc, rr], 1))  # (5, 2)
    ranks = torch.where(flip.unsqueeze(1), torch.tensor([1, 0]), torch.tensor([0, 1]))  # (5, 2)
    lipo, lipo_diag = lipo_lambda_loss(policy, ref, ranks, beta=beta)
    dpo, dpo_diag = dpo_loss(pc, pr, rc, rr, beta=beta)
    torch.testing.assert_close(lipo, dpo)
    torch.testing.assert_close(lipo_diag["rewards/margins"], dpo_diag["rewards/margins"])


def test_lipo_lambda_ties_padding_and_gradient() -> None:
    g = _gen(14)
    policy = -torch.rand(2, 4, generator=g, dtype=torch.float64) * 10
    ref = -torch.rand(2, 4, generator=g, dtype=torch.float64) * 10
    # All tied: no ordered pair, loss 0.
    loss, _ = lipo_lambda_loss(policy, ref, torch.zeros(2, 4, dtype=torch.long))
    assert loss.item() == 0.0
    # Padding is ignored.
    ranks = torch.tensor([[0, 1, 1, 2], [3, 0, 1, 2]])
    plain, _ = lipo_lambda_loss(policy, ref, ranks)
    padded_policy = torch.cat([policy, torch.full((2, 2), float("nan"), dtype=torch.float64)], 1)  # (2, 6)
    padded_ref = torch.cat([ref, torch.zeros(2, 2, dtype=torch.float64)], 1)  # (2, 6)
    padded_ranks = torch.cat([ranks, torch.tensor([[0, 0], [0, 9]])], 1)  # (2, 6)
    mask = torch.tensor([[True] * 4 + [False] * 2] * 2)
    torch.testing.assert_close(lipo_lambda_loss(padded_policy, padded_ref, padded_ranks, mask=mask)[0], plain)
    # Weights are constants, so the loss is smooth in the policy log-probs away from score ties.
    policy.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: lipo_lambda_loss(p, ref, ranks, beta=0.5)[0], (policy,))


def test_lipo_lambda_prefers_the_true_order() -> None:
    ref = torch.zeros(1, 4)
    ranks = torch.tensor([[0, 1, 2, 3]])
    agreeing = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    good, _ = lipo_lambda_loss(agreeing, ref, ranks, beta=1.0)
    bad, _ = lipo_lambda_loss(agreeing.flip(1), ref, ranks, beta=1.0)
    assert good < bad


# --------------------------------------------------------------------------- ensembles, GRPO, KL


def test_ensemble_uwo_and_min() -> None:
    agree = torch.tensor([[1.0, -2.0, 0.5]]).repeat(4, 1)  # (members, batch)
    torch.testing.assert_close(ensemble_score(agree, mode="uwo"), agree.mean(0))
    torch.testing.assert_close(ensemble_score(agree, mode="std", lam=2.0), agree.mean(0))
    spread = agree + torch.tensor([[-1.0], [1.0], [-0.5], [0.5]])  # same mean, members disagree
    uwo = ensemble_score(spread, mode="uwo", lam=0.5)
    mean = ensemble_score(spread, mode="mean")
    torch.testing.assert_close(mean, agree.mean(0))
    assert (uwo < mean).all()
    torch.testing.assert_close(uwo, mean - 0.5 * spread.var(0, correction=0))
    scores = torch.randn(5, 7, generator=_gen(15))
    assert (ensemble_score(scores, mode="min") <= ensemble_score(scores, mode="mean")).all()
    assert ensemble_score(scores, mode="std").shape == (7,)
    with pytest.raises(ValueError, match="'max'"):
        ensemble_score(scores, mode="max")
    with pytest.raises(ValueError, match="-1"):
        ensemble_score(scores, lam=-1.0)


def test_grpo_advantages() -> None:
    rewards = torch.randn(4, 8, generator=_gen(16), dtype=torch.float64)
    rewards[2] = 0.7  # a constant group
    for scale in (True, False):
        adv = grpo_advantages(rewards, scale=scale)
        assert adv.shape == rewards.shape
        torch.testing.assert_close(adv.sum(dim=1), torch.zeros(4, dtype=torch.float64))
        assert torch.count_nonzero(adv[2]) == 0
    adv = grpo_advantages(rewards)
    torch.testing.assert_close(adv[0], (rewards[0] - rewards[0].mean()) / (rewards[0].std() + 1e-4))
    with pytest.raises(ValueError, match="group_size >= 2"):
        grpo_advantages(torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"\(8,\)"):
        grpo_advantages(torch.zeros(8))


def test_kl_estimators() -> None:
    g = _gen(17)
    policy = -torch.rand(3, 10, generator=g) * 5
    ref = -torch.rand(3, 10, generator=g) * 5
    for kind in ("k1", "k2", "k3"):
        assert torch.count_nonzero(kl_penalty(policy, policy.clone(), kind=kind)) == 0
    assert (kl_penalty(policy, ref, kind="k2") >= 0).all()
    assert (kl_penalty(policy, ref, kind="k3") >= 0).all()
    assert (kl_penalty(policy, ref, kind="k1") < 0).any()  # k1 alone is not a pointwise bound
    log_r = ref - policy
    torch.testing.assert_close(kl_penalty(policy, ref), log_r.exp() - 1 - log_r)  # TRL's GRPO k3
    with pytest.raises(ValueError, match="'k4'"):
        kl_penalty(policy, ref, kind="k4")
