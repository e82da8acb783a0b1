"""How the score head starts: fitted as a linear probe on the frozen backbone's features
(:func:`fit_head_by_probe`, ``head_init="probe"``), or, for several heads on one backbone, drawn around
the first one (:func:`spread_heads`).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from training.device import device_of
from training.reward.inputs import _ListCollator, _row_targets, answer_lengths

if TYPE_CHECKING:
    from torch import Tensor


def _score_head(model):  # -> torch.nn.Linear
    """The linear layer that turns the backbone's features into the scores: the last one with
    ``config.num_labels`` outputs (one per score head)."""
    import torch

    n_out = int(getattr(model.config, "num_labels", 1))
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == n_out]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no linear score head with {n_out} output(s)")
    return heads[-1]


def _head_features(model, rows: list[dict[str, Any]], pad_token_id: int, batch_size: int) -> list[Tensor]:
    """The score head's input for every answer of ``rows``: one ``(answers of the row, hidden)`` tensor per row.

    Taken with a forward hook in eval mode (no dropout), batches sorted by length, on the model's
    device; the features come back to the CPU, where the probe (a small linear fit) runs. A causal LM's
    head sees every position; the position read is the one transformers reads for the score (the
    last token that is not padding), and the features are checked to give the model's own scores.
    """
    import torch

    head = _score_head(model)
    device = device_of(model)
    collate = _ListCollator(pad_token_id=pad_token_id)
    captured: list[Tensor] = []
    hook = head.register_forward_hook(lambda module, args, output: captured.append(args[0].detach()))
    order = sorted(range(len(rows)), key=lambda i: rows[i]["length"])
    per_row: list[Tensor | None] = [None] * len(rows)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = {k: v.to(device) for k, v in collate([rows[i] for i in chunk]).items()}
                captured.clear()
                logits = model(**_ListCollator.model_inputs(batch)).logits.float()  # (answers, heads)
                features = captured[-1]
                if features.dim() == 3:  # (answers, length, hidden): a causal LM scores its last real token
                    non_pad = (batch["input_ids"] != model.config.pad_token_id).long()
                    positions = torch.arange(non_pad.shape[1], device=device) * non_pad
                    features = features[torch.arange(features.shape[0], device=device), positions.argmax(-1)]
                if not torch.allclose(head(features).float(), logits.reshape(len(features), -1), atol=1e-3, rtol=1e-3):
                    raise RuntimeError(f"cannot read the score head's features of {type(model).__name__}")
                offset = 0
                for i in chunk:
                    n = len(rows[i]["completion_ids"])
                    per_row[i] = features[offset : offset + n].float().cpu()  # the probe's fit is host-side
                    offset += n
    finally:
        hook.remove()
        model.train(was_training)
    return [f for f in per_row if f is not None]


def fit_head_by_probe(
    model,
    rows: list[dict[str, Any]],
    pad_token_id: int,
    *,
    l2: float,
    center_rewards_coefficient: float | None = None,
    label_smoothing: float = 0.0,
    batch_size: int = 16,
    seed: int = 0,
    length_robust: bool = False,
) -> dict[str, float]:
    """Fit ``model``'s score head, in place, on its frozen features of ``rows`` (a linear probe).

    The head's weights and bias become the minimiser of the mean
    :func:`training.losses.preference_loss` of the rows (pairs, ties and lists alike, the very loss
    fine-tuning then continues) plus ``l2 * |w|²``, found by L-BFGS from zero, i.e. from scores that
    are all equal. The backbone is not changed. A head with several outputs (a 'heads' ensemble) is
    fitted output by output: the first on the rows, output k on a bootstrap resample of them drawn
    with ``seed + k``, all from the same forward pass. Returns ``probe_loss_start`` (the loss at
    zero), ``probe_loss`` and ``probe_accuracy`` (on the rows' pairs) of the first output's fit.
    With ``length_robust`` the probe fits one more weight, on each answer's length feature
    (:func:`training.reward.inputs.answer_length`), which the head does not keep: the length expert of
    ``RewardConfig.length_robust``, returned as ``probe_length_weight``.
    """
    import torch

    head = _score_head(model)
    per_row = _head_features(model, rows, pad_token_id, batch_size)  # the one forward pass, shared by all heads
    results = []
    for k in range(head.out_features):
        # Head 0 is fitted on the rows themselves; each further head of a 'heads' ensemble on its own
        # bootstrap resample of them (seeded), so the heads start apart as bootstrap members do.
        picks = list(range(len(rows)))
        if k > 0:
            rng = random.Random(seed + k)
            picks = [rng.randrange(len(rows)) for _ in rows]
        features = torch.cat([per_row[i] for i in picks])  # (answers, hidden)
        if length_robust:  # one more column: the length expert's weight is fitted beside the head's
            features = torch.cat([features, answer_lengths([rows[i] for i in picks])[:, None]], dim=1)
        weight, bias, result = _fit_probe(
            features,
            _row_targets([rows[i] for i in picks]),
            l2=l2,
            with_bias=head.bias is not None,
            center_rewards_coefficient=center_rewards_coefficient,
            label_smoothing=label_smoothing,
        )
        if length_robust:
            result["probe_length_weight"] = float(weight[-1])
            weight = weight[:-1]
        with torch.no_grad():
            head.weight[k].copy_(weight.to(head.weight.dtype))
            if head.bias is not None:
                head.bias[k] = float(bias)
        results.append(result)
    return results[0]  # head 0's fit, on the rows themselves


def fit_length_expert(rows: list[dict[str, Any]], *, label_smoothing: float = 0.0) -> float:
    """The length expert of ``RewardConfig.length_robust``: the one weight w for which scores ``w · length``
    (:func:`training.reward.inputs.answer_length`) best explain the rows' preferences, by the same loss —
    how much of them length alone explains. Fitted before training and then held fixed, as the bias-only
    model of product-of-experts debiasing is (Clark et al. 2019), so the reward model learns what is left."""
    weight, _, _ = _fit_probe(
        answer_lengths(rows)[:, None],  # (answers, 1)
        _row_targets(rows),
        l2=0.0,
        with_bias=False,
        center_rewards_coefficient=None,
        label_smoothing=label_smoothing,
    )
    return float(weight[0])


def _fit_probe(
    features: Tensor,
    targets: dict[str, Tensor],
    *,
    l2: float,
    with_bias: bool,
    center_rewards_coefficient: float | None,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Minimise the mean :func:`training.losses.preference_loss` of ``features @ weight + bias`` plus ``l2 * |w|²`` by
    L-BFGS from zero; return ``(weight, bias, metrics)``."""
    import torch

    from training.losses import preference_loss

    weight = torch.zeros(features.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=with_bias)

    def objective() -> tuple[Tensor, dict[str, float]]:
        scores = features @ weight + bias  # (answers,)
        loss, diagnostics = preference_loss(
            scores, **targets, center_rewards_coefficient=center_rewards_coefficient, label_smoothing=label_smoothing
        )
        return loss + l2 * (weight**2).sum(), diagnostics

    with torch.no_grad():
        start_loss = float(objective()[0])
    optimiser = torch.optim.LBFGS(
        [weight, bias] if with_bias else [weight], max_iter=500, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss, _ = objective()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        loss, diagnostics = objective()
    return (
        weight.detach(),
        bias.detach(),
        {
            "probe_loss_start": start_loss,
            "probe_loss": float(loss),
            "probe_accuracy": diagnostics.get("accuracy", float("nan")),
        },
    )


def spread_heads(model, spread: float) -> None:
    """Set the score head's outputs 1.. to ``(1 - spread) x output 0 + spread x their own`` weights, in place.

    A 'heads' ensemble shares one backbone; heads drawn independently point the backbone's features
    different ways at the start and slow training down (on the tiny test model, the loss after 60
    steps stayed at 0.60 with independent heads, against 0.17 for one head and 0.24 at spread ½).
    Starting the heads partly together keeps them pulling the same way while they still differ."""
    import torch

    head = _score_head(model)
    with torch.no_grad():
        head.weight[1:] = (1.0 - spread) * head.weight[:1] + spread * head.weight[1:]
        if head.bias is not None:
            head.bias[1:] = (1.0 - spread) * head.bias[:1] + spread * head.bias[1:]
