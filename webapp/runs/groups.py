"""Groups of annotators who prefer differently, found from a project's labels (training.groups), for
reward runs that train one member per group (MaxMin-RLHF), and what the dashboard shows of them."""

from __future__ import annotations

from typing import Any

import numpy as np

from training.groups import choose_groups, group_agreement, text_features

TYPICAL = 3  # labels shown per group: those its own reward is surest of


def _last_user_message(prompt: Any) -> str:
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else ""
    return str(prompt)


def annotator_groups(*, pairs: list[dict[str, Any]], max_k: int, seed: int = 0) -> dict[str, Any]:
    """Up to `max_k` groups of the annotators of `pairs` (a run's training pairs: "annotator", "prompt",
    "chosen", "rejected"). Returns {"k", "heldout_loglik" (per k tried), "groups": [{"annotators",
    "n_labels", "share", "agreement", "typical"}]}, largest group first; "k" is 1 (and "why" says so)
    where the labels show no groups or there are too few annotators to look."""
    labelled = [p for p in pairs if p.get("annotator")]
    names = sorted({p["annotator"] for p in labelled})
    if max_k < 2 or len(names) < 2:
        why = "groups were not asked for" if max_k < 2 else f"{len(names)} annotator(s): too few to form groups"
        return {"k": 1, "why": why, "groups": [{"annotators": names, "n_labels": len(labelled)}]}
    annotators = [p["annotator"] for p in labelled]
    chosen = np.stack([text_features(p["chosen"]) for p in labelled])  # (labels, features)
    rejected = np.stack([text_features(p["rejected"]) for p in labelled])
    fit, scores = choose_groups(annotators, chosen, rejected, max_k=max_k, seed=seed)
    agreement = group_agreement(fit, annotators, chosen, rejected)
    assigned = fit.group_of()
    margins = (chosen - rejected) @ fit.weights.T  # (labels, k): each group's view of each label
    groups = []
    for g, members in enumerate(fit.members()):
        rows = [i for i, a in enumerate(annotators) if assigned[a] == g]
        surest = sorted(rows, key=lambda i: -margins[i, g])[:TYPICAL]
        typical = [
            {
                "annotator": annotators[i],
                "prompt": _last_user_message(labelled[i]["prompt"])[:200],
                "chosen": labelled[i]["chosen"][:200],
                "rejected": labelled[i]["rejected"][:200],
            }
            for i in surest
        ]
        agrees = agreement[g]
        groups.append(
            {
                "annotators": members,
                "n_labels": len(rows),
                "share": round(float(fit.shares[g]), 3),
                "agreement": None if agrees is None else round(agrees, 3),
                "typical": typical,
            }
        )
    groups = [g for g in groups if g["annotators"]]  # an empty group has no member to train
    found: dict[str, Any] = {
        "k": len(groups),
        "heldout_loglik": {str(k): round(v, 3) for k, v in scores.items()},
        "groups": groups,
    }
    if len(groups) < 2:
        found["why"] = "the held-out labels were best explained by one population"
    return found
