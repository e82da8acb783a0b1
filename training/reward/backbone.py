"""The backbone as a scoring model: how its score is read (:func:`backbone_pooling`; a mean-pooled
head for sentence-transformers encoders), loading it with one score output per head, and freezing its
bottom layers (:func:`freeze_bottom_layers`).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from training.reward.config import RewardConfig
from training.reward.inputs import _quiet_transformers


def backbone_pooling(path: str | Path) -> str:
    """'mean' if the backbone folder is a sentence-transformers model that pools by mean, else 'model'.

    Such encoders were trained to be read through the mean of their token states (their
    ``1_Pooling/config.json`` says so); their [CLS] pooler is left over from pre-training.
    """
    pooling_file = Path(path) / "1_Pooling" / "config.json"
    if pooling_file.is_file():
        declared = json.loads(pooling_file.read_text())
        if declared.get("pooling_mode_mean_tokens") and not declared.get("pooling_mode_cls_token"):
            return "mean"
    return "model"


def _resolve_pooling(config: RewardConfig) -> str:
    return backbone_pooling(config.backbone) if config.pooling == "auto" else config.pooling


@functools.cache
def _mean_pooled_class():  # -> type[PreTrainedModel]
    import torch
    from transformers import AutoModel, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import SequenceClassifierOutput

    class MeanPooledRewardModel(PreTrainedModel):
        """Any backbone (``AutoModel``) with a linear head (``config.num_labels`` outputs, one per score
        head) on the masked mean of its last hidden states. Saved and loaded with
        ``save_pretrained``/``from_pretrained(path, config=...)``."""

        config_class = PretrainedConfig
        base_model_prefix = "backbone"  # a bare backbone checkpoint loads into self.backbone

        def __init__(self, config) -> None:
            super().__init__(config)
            kwargs = {"add_pooling_layer": False} if config.model_type in ("bert", "roberta", "xlm-roberta") else {}
            self.backbone = AutoModel.from_config(config, **kwargs)
            self.score = torch.nn.Linear(config.hidden_size, config.num_labels)
            self.post_init()

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
            extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            states = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            return SequenceClassifierOutput(logits=self.score(pooled.to(self.score.weight.dtype)))

    return MeanPooledRewardModel


def _load_scoring_model(path: str, *, pooling: str = "model", heads: int = 1, dtype=None):  # -> PreTrainedModel
    """The backbone at ``path`` with a score head of ``heads`` outputs (one per head of a 'heads' ensemble)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    dtype = dtype or torch.float32
    with suppress_seqcls_warning(), _quiet_transformers():  # the score head is new; a causal LM's lm_head unused
        if pooling == "mean":
            config = AutoConfig.from_pretrained(path, num_labels=heads)
            return _mean_pooled_class().from_pretrained(path, config=config, dtype=dtype)
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=heads, dtype=dtype)


def freeze_bottom_layers(model, n_layers: int) -> int:
    """Freeze the input embeddings and the first ``n_layers`` transformer blocks of ``model``; return
    how many parameters stay trainable.

    The blocks are the model's ``ModuleList`` of ``config.num_hidden_layers`` modules (BERT's
    ``encoder.layer``, Qwen2's ``layers``, ...); everything registered before the first block (word,
    position and token-type embeddings and their norm) counts as embeddings, and whatever comes
    after the blocks (final norm, pooler, score head) stays trainable."""
    import torch

    if n_layers > 0:
        n_blocks = getattr(model.config, "num_hidden_layers", None)
        found = next(
            (
                (name, module)
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.ModuleList) and len(module) == n_blocks
            ),
            None,
        )
        if found is None:
            raise ValueError(f"freeze_layers={n_layers}: the model has no list of {n_blocks} transformer blocks")
        prefix, blocks = found
        if n_layers > len(blocks):
            raise ValueError(f"freeze_layers={n_layers} exceeds the backbone's {len(blocks)} transformer blocks")
        for name, param in model.named_parameters():
            if name.startswith(prefix + "."):
                break
            param.requires_grad_(False)  # the embeddings
        for block in blocks[:n_layers]:
            block.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
