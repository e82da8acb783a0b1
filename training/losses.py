"""Preference-learning losses and reward utilities, as small pure functions of tensors.

Every loss returns ``(loss, diagnostics)``: ``loss`` is a scalar tensor (mean over the batch) that
carries gradients; ``diagnostics`` maps names such as ``"rewards/margins"`` to detached 0-d tensors
(batch means), ready for logging without a device sync until the caller asks for ``.item()``.

Contents and sources:

* :func:`bradley_terry_loss` - pairwise reward-model loss (Bradley & Terry 1952; the margin term as
  in Touvron et al. 2023, "Llama 2", eq. 2).
* :func:`plackett_luce_loss` - listwise reward-model loss (Plackett 1975; Luce 1959), with ties.
* :func:`preference_loss` - the loss of one batch of :mod:`training.reward`'s rows: Bradley-Terry pairs,
  ties (target ½) and Plackett-Luce lists mixed; :func:`heads_preference_loss` - its mean over score heads.
* :func:`dpo_loss` - DPO "sigmoid" (Rafailov et al. 2023, eq. 7), "robust" (Chowdhury et al. 2024,
  "Provably Robust DPO", eq. 8) and "ipo" (Azar et al. 2023, eq. 17), written to agree with TRL
  1.16's ``DPOTrainer`` for the same inputs.
* :func:`lipo_lambda_loss` - LiPO-lambda (Liu et al. 2024, "LiPO: Listwise Preference Optimization
  through Learning-to-Rank", Sec. 4), with LambdaRank weights (Burges 2010).
* :func:`ensemble_score` - conservative reward from an ensemble (Coste et al. 2023, "Reward Model
  Ensembles Help Mitigate Overoptimization", Sec. 3).
* :func:`grpo_advantages` - group-relative advantages (Shao et al. 2024, "DeepSeekMath", eq. 3/Sec. 4.1.2).
* :func:`kl_penalty` - per-token KL estimators k1/k2/k3 (Schulman 2020, "Approximating KL Divergence").

Ties in ranked lists (``ranks`` with equal values) are handled the same way by both listwise
losses: a tie says nothing about the relative order of the tied items, so tied items never
compete with each other; see :func:`plackett_luce_loss` and :func:`lipo_lambda_loss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

DPO_LOSS_TYPES = ("sigmoid", "robust", "ipo")
ENSEMBLE_MODES = ("mean", "min", "std", "uwo")
KL_KINDS = ("k1", "k2", "k3")


# --------------------------------------------------------------------------- argument checks


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_float(name: str, value: Tensor) -> None:
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")


def _check_same_shape(names: tuple[str, ...], tensors: tuple[Tensor, ...]) -> None:
    shapes = [tuple(t.shape) for t in tensors]
    if any(s != shapes[0] for s in shapes):
        detail = ", ".join(f"{n}={s}" for n, s in zip(names, shapes, strict=True))
        raise ValueError(f"shapes must match: {detail}")


def _check_list_args(scores_name: str, scores: Tensor, ranks: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Validate ``(batch, n)`` scores/ranks/mask and return ``(ranks, mask)`` with a full mask if None."""
    _check_tensor(scores_name, scores)
    _check_tensor("ranks", ranks)
    _check_float(scores_name, scores)
    if scores.dim() != 2:
        raise ValueError(f"{scores_name} must have shape (batch, n), got shape {tuple(scores.shape)}")
    if ranks.dtype.is_floating_point or ranks.dtype.is_complex or ranks.dtype == torch.bool:
        raise TypeError(f"ranks must be an integer tensor (0 = best), got dtype {ranks.dtype}")
    if mask is None:
        mask = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    _check_tensor("mask", mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = a real, ranked item), got dtype {mask.dtype}")
    _check_same_shape((scores_name, "ranks", "mask"), (scores, ranks, mask))
    if bool((mask & (ranks < 0)).any()):
        bad = ranks[mask & (ranks < 0)][:5].tolist()
        raise ValueError(f"ranks of unmasked items must be >= 0 (0 = best), got {bad}")
    return ranks, mask


def _check_label_smoothing(label_smoothing: float) -> None:
    if isinstance(label_smoothing, bool) or not (
        isinstance(label_smoothing, (int, float)) and 0.0 <= label_smoothing < 0.5
    ):
        raise ValueError(f"label_smoothing={label_smoothing!r} must be a number in [0, 0.5)")


def _check_weight(weight: Tensor | None, rows: int, like: Tensor) -> Tensor:
    """Per-row loss weights ``(rows,)`` in ``like``'s dtype and device (all 1 when None)."""
    if weight is None:
        return like.new_ones(rows)
    _check_tensor("weight", weight)
    if tuple(weight.shape) != (rows,):
        raise ValueError(f"weight must have shape ({rows},), got {tuple(weight.shape)}")
    return weight.to(like.device, like.dtype)


def _check_beta(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")


def _strictly_better(ranks: Tensor, mask: Tensor) -> Tensor:
    """``better[b, i, j]``: item i is ranked strictly above item j and both are real items.

    Shape ``(batch, n, n)``. Equal ranks (ties) and padded items give ``False``.
    """
    both = mask.unsqueeze(2) & mask.unsqueeze(1)  # (batch, n, 1) & (batch, 1, n) -> (batch, n, n)
    return both & (ranks.unsqueeze(2) < ranks.unsqueeze(1))  # (batch, n, n)


# --------------------------------------------------------------------------- reward models


def bradley_terry_loss(
    chosen: Tensor,
    rejected: Tensor,
    margin: Tensor | None = None,
    *,
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
) -> tuple[Tensor, dict]:
    """Pairwise reward-model loss ``mean(-log sigmoid(r_c - r_r - m))``.

    Bradley & Terry (1952): ``P(c ≻ r) = sigmoid(r_c - r_r)``. The optional ``margin`` ``m`` (one value per
    pair, or a scalar) is the Llama 2 reward-model margin (Touvron et al. 2023, eq. 2), which asks
    the model to separate clearly preferred pairs by at least ``m``.

    ``label_smoothing`` ``ε`` in [0, 0.5) trains towards a target of ``1 - ε`` instead of 1:
    ``(1 - ε) · (-log sigmoid(d - m)) + ε · (-log sigmoid(-d - m))`` with ``d = r_c - r_r``, the
    second term being the loss had the label been the other way (with the same margin). Without a
    margin each pair's loss is least at ``d = log((1 - ε) / ε)``, so no pair pushes its two scores
    apart without bound: with crowd labels, where annotators often disagree with each other,
    ``sigmoid(d)`` stays a less overconfident probability. ``ε = 0`` is the plain loss exactly.

    Args:
        chosen: rewards of the preferred answers, shape ``(batch,)``.
        rejected: rewards of the other answers, shape ``(batch,)``.
        margin: ``(batch,)`` or a scalar; ``None`` means 0.
        label_smoothing: ``ε``, the share of the target given to the other answer.
        weight: ``(batch,)`` how much each pair counts: the loss is ``mean(w_i · loss_i)``; ``None``
            means 1 for every pair.
    """
    _check_tensor("chosen", chosen)
    _check_tensor("rejected", rejected)
    _check_float("chosen", chosen)
    _check_float("rejected", rejected)
    if chosen.dim() != 1:
        raise ValueError(f"chosen must have shape (batch,), got shape {tuple(chosen.shape)}")
    _check_same_shape(("chosen", "rejected"), (chosen, rejected))
    if chosen.numel() == 0:
        raise ValueError("chosen and rejected must not be empty (batch=0)")
    diff = chosen - rejected
    if margin is not None:
        _check_tensor("margin", margin)
        if margin.dim() != 0 and tuple(margin.shape) != tuple(chosen.shape):
            raise ValueError(
                f"margin must be a scalar or have the shape of chosen {tuple(chosen.shape)}, "
                f"got shape {tuple(margin.shape)}"
            )
    else:
        margin = diff.new_zeros(())
    _check_label_smoothing(label_smoothing)
    w = _check_weight(weight, chosen.shape[0], chosen)
    loss = (-F.logsigmoid(diff - margin) * w).mean()
    if label_smoothing:
        flipped = (-F.logsigmoid(-diff - margin) * w).mean()
        loss = (1.0 - label_smoothing) * loss + label_smoothing * flipped
    with torch.no_grad():
        margins = chosen - rejected
        diagnostics = {
            "rewards/chosen": chosen.detach().mean(),
            "rewards/rejected": rejected.detach().mean(),
            "rewards/margins": margins.detach().mean(),
            "rewards/accuracies": (margins > 0).float().mean(),
        }
    return loss, diagnostics


def plackett_luce_loss(
    scores: Tensor, ranks: Tensor, mask: Tensor | None = None, *, weight: Tensor | None = None
) -> tuple[Tensor, dict]:
    """Plackett-Luce negative log-likelihood of ranked lists, with ties (Plackett 1975; Luce 1959).

    Without ties, PL picks the items best-first, each from those not yet picked:
    ``-log P = Σ_k [logsumexp_{j: rank_j >= rank_k} s_j - s_k]``.

    Ties (equal ``ranks``) are read as "the order among these items is unknown": every item ``i``
    is a Luce choice of ``i`` from ``C(i)``: ``i`` itself together with every item ranked strictly
    below it (``rank_j > rank_i``); tied items never appear in each other's choice sets::

        -log L = Σ_i [ logsumexp_{j ∈ C(i)} s_j - s_i ]

    Consequences, all tested: with no ties this is exactly the Plackett-Luce NLL; for two items
    without a tie it is exactly :func:`bradley_terry_loss`; a list whose items are all tied (or
    with fewer than two real items) has loss 0 and zero gradient; permuting the scores of tied items
    leaves the loss unchanged. For a tie group ``G`` above the rest ``R`` this is a composite
    likelihood ``Π_{i∈G} P(i before all of R)``, which is at most the exact marginal likelihood
    ``P(all of G before all of R)`` of the PL model summed over the orders of ``G`` (the events are
    positively associated), so the loss upper-bounds that marginal NLL and equals it for groups of one.
    Breslow's approximation, by contrast, keeps tied items in each other's denominators and gives an
    all-tied list a positive loss.

    Args:
        scores: ``(batch, n)`` model scores (higher = better).
        ranks: ``(batch, n)`` integers, 0 = best; equal values are ties; gaps are allowed.
        mask: ``(batch, n)`` bool, ``True`` for real items; ``False`` items (padding, unranked) are
            ignored entirely (their scores and ranks may hold anything, including NaN scores).
        weight: ``(batch,)`` how much each list counts (``None``: 1 each).

    Returns:
        The mean over the batch of the (weighted) per-list NLL (summed over items, not normalised by length).
    """
    ranks, mask = _check_list_args("scores", scores, ranks, mask)
    n = scores.shape[1]
    safe = torch.where(mask, scores, torch.zeros_like(scores))  # (batch, n); padding -> 0, no NaN grads
    better = _strictly_better(ranks, mask)  # (batch, n, n)
    eye = torch.eye(n, dtype=torch.bool, device=scores.device).unsqueeze(0)  # (1, n, n)
    # Choice set of item i: itself (always, so no row is empty) and every real item strictly worse.
    choice = better | eye  # (batch, n, n)
    expanded = safe.unsqueeze(1).expand(-1, n, -1)  # (batch, 1, n) -> (batch, n, n): row i holds all s_j
    logits = expanded.masked_fill(~choice, float("-inf"))  # (batch, n, n)
    per_item = torch.logsumexp(logits, dim=2) - safe  # (batch, n); 0 for padding and worst items
    per_item = torch.where(mask, per_item, torch.zeros_like(per_item))
    per_list = per_item.sum(dim=1)  # (batch,)
    loss = (per_list * _check_weight(weight, scores.shape[0], scores)).mean()
    with torch.no_grad():
        s = safe.detach()
        pair_count = better.sum(dim=(1, 2))  # (batch,)
        correct = (better & (s.unsqueeze(2) > s.unsqueeze(1))).sum(dim=(1, 2))  # (batch, n, n) -> (batch,)
        total = pair_count.sum().clamp(min=1)
        diagnostics = {
            "ranking/pair_accuracy": correct.sum().float() / total,
            "ranking/ordered_pairs": pair_count.float().mean(),
            "ranking/items": mask.sum(dim=1).float().mean(),
        }
    return loss, diagnostics


def preference_loss(
    scores: Tensor,
    index: Tensor,
    ranks: Tensor,
    margin: Tensor,
    tie: Tensor,
    center_rewards_coefficient: float | None = None,
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The reward-model loss of one batch of rows (pairs, ties and ranked lists mixed).

    Args:
        scores: ``(answers,)`` the model's score of every answer in the batch.
        index: ``(batch, n_max)`` position in ``scores`` of each row's answers (-1 = no answer).
        ranks: ``(batch, n_max)`` 0 = best; a pair is ``[0, 1]`` (chosen first), a tie ``[0, 0]``.
        margin: ``(batch,)`` Bradley-Terry margins of the pairs.
        tie: ``(batch,)`` True for a tied pair.
        weight: ``(batch,)`` how much each row counts (``None``: 1 each).

    Rows of two answers are pairs: Bradley-Terry with margin (and ``label_smoothing``, see
    :func:`training.losses.bradley_terry_loss`), or for a tie the symmetric Bradley-Terry loss
    (target ½); longer rows are Plackett-Luce lists. The loss is the mean over
    rows of each row's loss times its weight, plus ``center_rewards_coefficient * mean(scores²)``.
    Returns ``(loss, diagnostics)`` with plain floats.
    """
    mask = index >= 0  # (batch, n_max)
    per_row = scores[index.clamp(min=0)]  # (batch, n_max); padded entries hold a copy of answer 0, masked below
    n_answers = mask.sum(dim=1)  # (batch,)
    pair = (n_answers == 2) & ~tie
    tied = (n_answers == 2) & tie
    listed = n_answers > 2
    w = _check_weight(weight, index.shape[0], scores)  # (batch,)
    total = scores.new_zeros(())
    diagnostics: dict[str, float] = {}
    if bool(pair.any()):
        chosen, rejected = per_row[pair, 0], per_row[pair, 1]
        loss, diag = bradley_terry_loss(chosen, rejected, margin[pair], label_smoothing=label_smoothing, weight=w[pair])
        total = total + loss * int(pair.sum())
        diagnostics["accuracy"] = float(diag["rewards/accuracies"])
        diagnostics["margin"] = float(diag["rewards/margins"])
    if bool(tied.any()):
        a, b = per_row[tied, 0], per_row[tied, 1]
        forward, _ = bradley_terry_loss(a, b, weight=w[tied])
        backward, _ = bradley_terry_loss(b, a, weight=w[tied])
        total = total + 0.5 * (forward + backward) * int(tied.sum())
        diagnostics["tie_abs_diff"] = float((a - b).detach().abs().mean())
    if bool(listed.any()):
        loss, diag = plackett_luce_loss(per_row[listed], ranks[listed], mask[listed], weight=w[listed])
        total = total + loss * int(listed.sum())
        diagnostics["ranking_pair_accuracy"] = float(diag["ranking/pair_accuracy"])
    loss = total / index.shape[0]
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * torch.mean(scores**2)
    diagnostics["mean_reward"] = float(scores.detach().mean())
    return loss, diagnostics


def heads_preference_loss(
    scores: Tensor,
    index: Tensor,
    ranks: Tensor,
    margin: Tensor,
    tie: Tensor,
    center_rewards_coefficient: float | None = None,
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The loss of a reward model with several score heads: the mean over heads of each head's
    :func:`preference_loss`.

    ``scores`` is ``(answers, heads)``, or ``(answers,)`` for one head (then this is exactly
    :func:`preference_loss`). Each head gets its own loss, so the heads stay separate reward models
    that share a backbone, not one model whose scores are averaged before the loss. The diagnostics
    are those of the heads' mean score, the score the ensemble is read by.
    """

    def loss_of(head_scores: Tensor) -> tuple[Tensor, dict[str, float]]:
        return preference_loss(
            head_scores, index, ranks, margin, tie, center_rewards_coefficient, label_smoothing, weight
        )

    if scores.dim() == 1:
        return loss_of(scores)
    losses = [loss_of(scores[:, k])[0] for k in range(scores.shape[1])]
    with torch.no_grad():
        _, diagnostics = loss_of(scores.mean(dim=1))
    return torch.stack(losses).mean(), diagnostics


def score_length_correlation(scores: Tensor, lengths: Tensor) -> Tensor:
    """Pearson correlation of ``scores`` ``(answers,)`` with ``lengths`` ``(answers,)``, differentiable in
    the scores; 0 where either is constant (a batch of equal lengths says nothing of length). ODIN
    (Chen et al. 2024) penalises its square to keep length out of the quality score."""
    s = scores - scores.mean()
    n = lengths - lengths.mean()
    denominator = torch.sqrt((s**2).sum() * (n**2).sum())
    if float(denominator.detach()) < 1e-12:
        return scores.sum() * 0.0  # keeps the graph, adds nothing
    return (s * n).sum() / denominator


# --------------------------------------------------------------------------- policy losses


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict]:
    """DPO-family loss from sequence log-probabilities, mean over the batch; matches TRL 1.16.

    With ``Δ = (log π(y_c) - log π_ref(y_c)) - (log π(y_r) - log π_ref(y_r))``:

    * ``"sigmoid"`` (Rafailov et al. 2023, eq. 7): ``-log sigmoid(βΔ)``.
    * ``"robust"`` (Chowdhury et al. 2024, eq. 8), label-flip rate ``ε = label_smoothing`` in [0, 0.5):
      ``[-(1-ε) log sigmoid(βΔ) + ε log sigmoid(-βΔ)] / (1 - 2ε)``; ``ε = 0`` is ``"sigmoid"``.
    * ``"ipo"`` (Azar et al. 2023, eq. 17, ``τ = beta``): ``(Δ - 1/(2β))²``. TRL 1.16 computes IPO on
      log-probabilities averaged over completion tokens; pass length-averaged log-probs to match it.

    ``label_smoothing`` is only used by ``"robust"``: TRL 1.16 ignores it for ``"sigmoid"`` and
    ``"ipo"``, so a non-zero value there is rejected rather than silently ignored.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(batch,)``.

    Diagnostics (as TRL names them): ``rewards/chosen`` ``β(log π - log π_ref)`` of the chosen answers,
    ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``.
    """
    names = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    tensors = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    for name, tensor in zip(names, tensors, strict=True):
        _check_tensor(name, tensor)
        _check_float(name, tensor)
    if policy_chosen_logps.dim() != 1 or policy_chosen_logps.numel() == 0:
        raise ValueError(
            f"policy_chosen_logps must have shape (batch,) with batch >= 1, got {tuple(policy_chosen_logps.shape)}"
        )
    _check_same_shape(names, tensors)
    _check_beta(beta)
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} must be one of {DPO_LOSS_TYPES}")
    _check_label_smoothing(label_smoothing)
    if label_smoothing and loss_type != "robust":
        raise ValueError(f"label_smoothing={label_smoothing!r} only applies to loss_type='robust', not {loss_type!r}")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    delta = chosen_logratios - rejected_logratios  # (batch,)
    if loss_type == "sigmoid":
        per_pair = -F.logsigmoid(beta * delta)
    elif loss_type == "robust":
        eps = float(label_smoothing)
        clean = -(1.0 - eps) * F.logsigmoid(beta * delta)
        flipped = -eps * F.logsigmoid(-beta * delta)
        per_pair = (clean - flipped) / (1.0 - 2.0 * eps)
    else:  # "ipo"
        per_pair = (delta - 1.0 / (2.0 * beta)) ** 2
    loss = per_pair.mean()

    with torch.no_grad():
        chosen_rewards = beta * chosen_logratios.detach()
        rejected_rewards = beta * rejected_logratios.detach()
        diagnostics = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "logps/chosen": policy_chosen_logps.detach().mean(),
            "logps/rejected": policy_rejected_logps.detach().mean(),
        }
    return loss, diagnostics


def _lambda_weights(scores: Tensor, ranks: Tensor, mask: Tensor, better: Tensor) -> Tensor:
    """LambdaRank weights ``Δ_ij = |G_i - G_j| · |1/D(τ_i) - 1/D(τ_j)|`` for ordered pairs (LiPO eq. 8).

    Burges (2010), "From RankNet to LambdaRank to LambdaMART", as used by LiPO-λ (Liu et al. 2024):
    gain ``G_i = 2^{ψ_i} - 1`` with label ``ψ_i`` = number of real items ranked strictly below ``i``
    (so the worst item and an all-tied list have ``ψ = 0``); discount ``D(τ) = log2(1 + τ)`` with
    ``τ_i`` the 1-based position of ``i`` when the real items are sorted by the current ``scores``
    (descending; score ties broken by index, stably). Weights are constants (no gradient). Shape
    ``(batch, n, n)``, zero outside ``better``. Gains are scaled by ``2^{-max ψ}`` per list, which the
    per-list normalisation in :func:`lipo_lambda_loss` cancels and which keeps long lists finite.
    """
    with torch.no_grad():
        work = torch.float64
        psi = (_strictly_better(ranks, mask)).sum(dim=2).to(work)  # (batch, n, n) -> (batch, n)
        psi_max = psi.max(dim=1, keepdim=True).values  # (batch, 1)
        gain = torch.exp2(psi - psi_max) - torch.exp2(-psi_max)  # (batch, n); 2^{ψ}-1 scaled by 2^{-ψmax}
        sortable = scores.detach().to(work).masked_fill(~mask, float("-inf"))  # (batch, n)
        order = torch.sort(sortable, dim=1, descending=True, stable=True).indices  # (batch, n)
        position = torch.empty_like(order)
        arange = torch.arange(1, order.shape[1] + 1, device=order.device).expand_as(order)  # (batch, n)
        position.scatter_(1, order, arange)  # (batch, n): 1-based position of each item
        inv_discount = 1.0 / torch.log2(1.0 + position.to(work))  # (batch, n)
        gain_gap = (gain.unsqueeze(2) - gain.unsqueeze(1)).abs()  # (batch, n, n)
        discount_gap = (inv_discount.unsqueeze(2) - inv_discount.unsqueeze(1)).abs()  # (batch, n, n)
        weights = torch.where(better, gain_gap * discount_gap, torch.zeros_like(gain_gap))
    return weights.to(scores.dtype)


def lipo_lambda_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    ranks: Tensor,
    *,
    beta: float = 0.1,
    mask: Tensor | None = None,
) -> tuple[Tensor, dict]:
    """LiPO-λ listwise preference loss (Liu et al. 2024, "LiPO", Sec. 4, eq. 7-8).

    Implicit rewards ``s_i = β (log π(y_i) - log π_ref(y_i))``; for every pair with ``i`` ranked
    strictly above ``j`` a logistic loss ``-log sigmoid(s_i - s_j)`` weighted by the LambdaRank weight
    ``Δ_ij`` (see :func:`_lambda_weights`)::

        L_list = Σ_{i≻j} Δ_ij · (-log sigmoid(s_i - s_j)) / Σ_{i≻j} Δ_ij

    Normalisation: the paper's sum is divided by the list's total weight ``Σ Δ_ij`` (a weighted
    mean over pairs). This makes a list of two untied items exactly DPO "sigmoid" (its single
    weight is then 1) and removes the dependence on the log base and gain scale. Tied pairs are
    not pairs (no ``i ≻ j``), so ties contribute nothing; a list with no strictly ordered pair has
    loss 0. The loss is the mean over the batch of ``L_list``.

    Args:
        policy_logps, ref_logps: ``(batch, n)`` sequence log-probabilities of the list's answers.
        ranks: ``(batch, n)`` integers, 0 = best; equal values are ties.
        mask: ``(batch, n)`` bool, ``True`` for real items; padded items are ignored.
    """
    _check_tensor("policy_logps", policy_logps)
    _check_tensor("ref_logps", ref_logps)
    _check_float("ref_logps", ref_logps)
    ranks, mask = _check_list_args("policy_logps", policy_logps, ranks, mask)
    _check_same_shape(("policy_logps", "ref_logps"), (policy_logps, ref_logps))
    _check_beta(beta)

    logratio = torch.where(mask, policy_logps - ref_logps, torch.zeros_like(policy_logps))  # (batch, n)
    rewards = beta * logratio  # (batch, n)
    better = _strictly_better(ranks, mask)  # (batch, n, n)
    weights = _lambda_weights(rewards, ranks, mask, better)  # (batch, n, n), no grad
    pair_margin = rewards.unsqueeze(2) - rewards.unsqueeze(1)  # (batch, n, 1) - (batch, 1, n) -> (batch, n, n)
    pair_loss = -F.logsigmoid(pair_margin)  # (batch, n, n)
    weighted = torch.where(better, weights * pair_loss, torch.zeros_like(pair_loss)).sum(dim=(1, 2))  # (batch,)
    total_weight = weights.sum(dim=(1, 2))  # (batch,)
    per_list = torch.where(total_weight > 0, weighted / total_weight.clamp(min=torch.finfo(weights.dtype).tiny), 0.0)
    loss = per_list.mean()

    with torch.no_grad():
        count = better.sum().clamp(min=1)
        margins = torch.where(better, pair_margin.detach(), torch.zeros_like(pair_margin))
        diagnostics = {
            "rewards/margins": margins.sum() / count,
            "rewards/accuracies": (better & (pair_margin.detach() > 0)).sum().float() / count,
            "rewards/mean": rewards.detach()[mask].mean() if bool(mask.any()) else rewards.new_zeros(()),
            "ranking/ordered_pairs": better.sum(dim=(1, 2)).float().mean(),
        }
    return loss, diagnostics


# --------------------------------------------------------------------------- RL utilities


def ensemble_score(scores: Tensor, *, mode: str = "uwo", lam: float = 1.0) -> Tensor:
    """Combine a reward-model ensemble's scores into one conservative score per sample.

    Coste et al. (2023), "Reward Model Ensembles Help Mitigate Overoptimization", Sec. 3, with the
    members' population statistics (``correction=0``, so one member has variance 0):

    * ``"mean"``: ``mean_k R_k``.
    * ``"min"``: worst-case optimisation (WCO), ``min_k R_k``.
    * ``"uwo"``: uncertainty-weighted optimisation, ``mean_k R_k - λ · var_k R_k``.
    * ``"std"``: the same penalty with the standard deviation, ``mean_k R_k - λ · std_k R_k``
      (same units as the rewards, so ``λ`` reads as "number of standard deviations").

    Args:
        scores: ``(members, batch)``.
        mode: one of ``ENSEMBLE_MODES``.
        lam: penalty weight ``λ >= 0`` (used by ``"uwo"`` and ``"std"``).

    Returns:
        ``(batch,)``.
    """
    _check_tensor("scores", scores)
    _check_float("scores", scores)
    if scores.dim() != 2 or scores.shape[0] < 1:
        raise ValueError(f"scores must have shape (members, batch) with members >= 1, got {tuple(scores.shape)}")
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"mode={mode!r} must be one of {ENSEMBLE_MODES}")
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    mean = scores.mean(dim=0)  # (batch,)
    if mode == "mean":
        return mean
    if mode == "min":
        return scores.min(dim=0).values
    variance = scores.var(dim=0, correction=0)  # (batch,)
    if mode == "uwo":
        return mean - lam * variance
    return mean - lam * variance.sqrt()


def grpo_advantages(rewards: Tensor, *, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """Group-relative advantages ``A_i = (r_i - mean(r)) / (std(r) + eps)`` within each group.

    Shao et al. (2024), "DeepSeekMath", Sec. 4.1.2 (outcome supervision). As in TRL's GRPO the
    standard deviation is the sample one (Bessel-corrected) and ``eps`` is added to it, so a
    constant group gets advantages 0; ``scale=False`` only centres (Liu et al. 2025, "Dr. GRPO").

    Args:
        rewards: ``(groups, group_size)``; ``group_size >= 2`` when ``scale`` is true.

    Returns:
        ``(groups, group_size)``; each row sums to zero (up to rounding).
    """
    _check_tensor("rewards", rewards)
    _check_float("rewards", rewards)
    if rewards.dim() != 2 or rewards.shape[1] < 1:
        raise ValueError(f"rewards must have shape (groups, group_size), got {tuple(rewards.shape)}")
    if scale and rewards.shape[1] < 2:
        raise ValueError(f"scale=True needs group_size >= 2 for a standard deviation, got {rewards.shape[1]}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # (groups, group_size)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)  # (groups, 1) broadcast


def kl_penalty(policy_logps: Tensor, ref_logps: Tensor, *, kind: str = "k3") -> Tensor:
    """Per-token estimators of ``KL(π || π_ref)`` for tokens sampled from ``π`` (Schulman 2020).

    With ``log r = log π_ref - log π`` (Schulman's ``r = p(x)/q(x)``, ``x ~ q = π``):

    * ``"k1"``: ``-log r`` - unbiased, high variance, can be negative.
    * ``"k2"``: ``½ (log r)²`` - biased, low variance, ``>= 0``.
    * ``"k3"``: ``(r - 1) - log r`` - unbiased, low variance, ``>= 0`` (TRL's GRPO penalty).

    Args:
        policy_logps, ref_logps: per-token log-probs of the sampled tokens, any matching shape.

    Returns:
        Elementwise estimates, the shape of the inputs.
    """
    _check_tensor("policy_logps", policy_logps)
    _check_tensor("ref_logps", ref_logps)
    _check_float("policy_logps", policy_logps)
    _check_float("ref_logps", ref_logps)
    _check_same_shape(("policy_logps", "ref_logps"), (policy_logps, ref_logps))
    if kind not in KL_KINDS:
        raise ValueError(f"kind={kind!r} must be one of {KL_KINDS}")
    log_r = ref_logps - policy_logps
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    return torch.expm1(log_r) - log_r  # (r - 1) - log r, accurate near r = 1
