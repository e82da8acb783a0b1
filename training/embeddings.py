"""Sentence embeddings of items, and their nearest neighbours.

``embed(path, texts)`` reads each text with a sentence-transformers encoder loaded by
``from_pretrained(path)`` (all-MiniLM-L6-v2 by default, the backbone the reward models use) and
returns one unit vector per text: the mean of the last hidden states over the real tokens,
L2-normalised, as the encoder was trained to be read. ``nearest`` finds, for each query row, the
``k`` most similar rows of a matrix by cosine (a dot product of unit vectors), in chunks so the
score matrix never holds more than ``chunk`` query rows.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

DIM_DTYPE = np.float32


@functools.lru_cache(maxsize=2)
def _encoder(path: str) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    model.eval()
    return tokenizer, model


def embed(path: str, texts: Sequence[str], *, batch_size: int = 32, max_length: int = 256) -> np.ndarray:
    """One L2-normalised float32 vector per text (rows in the order of ``texts``)."""
    import torch

    tokenizer, model = _encoder(str(path))
    rows: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            states = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(DIM_DTYPE))
    width = model.config.hidden_size
    return np.concatenate(rows) if rows else np.zeros((0, width), dtype=DIM_DTYPE)


def nearest(
    matrix: np.ndarray, queries: np.ndarray, *, k: int = 5, exclude: Sequence[int] | None = None, chunk: int = 1024
) -> list[list[tuple[int, float]]]:
    """For each row of ``queries``, the ``k`` rows of ``matrix`` most similar to it, best first,
    as (row index, cosine); ``exclude[i]`` is a row of ``matrix`` left out for query ``i`` (itself)."""
    out: list[list[tuple[int, float]]] = []
    k = min(k, max(len(matrix) - (1 if exclude is not None else 0), 0))
    if k == 0:
        return [[] for _ in range(len(queries))]
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ matrix.T
        if exclude is not None:
            for i in range(scores.shape[0]):
                scores[i, exclude[start + i]] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        for i, row in enumerate(top):
            best = row[np.argsort(-scores[i, row])]
            out.append([(int(j), float(scores[i, j])) for j in best])
    return out
