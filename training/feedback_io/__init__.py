"""Import and export of prompts and human feedback, streaming, in plain Python.

- :mod:`.records`: the normalised records (:class:`ImportedItem`, :class:`ImportedCandidate`,
  :class:`ImportedLabel`, :class:`BadRecord`);
- :mod:`.readers`: ``read_feedback(path, fmt)`` for ``jsonl``, ``csv``, ``hh`` (Anthropic HH-RLHF),
  ``oasst`` (Open-Assistant trees), ``pandalm`` and ``defacto``;
- :mod:`.rows`: pure helpers that turn labels into export rows (TRL's conversational formats);
- :mod:`.writers`: ``write_export(rows, path, kind)`` to ``.jsonl`` or ``.parquet``, and
  ``read_export(path)``.

Example: PandaLM's labels as DPO / reward-model data::

    items = read_feedback("pandalm-testset-v1.json", "pandalm")
    n = write_export(rows_from_items(items, "preference"), "pandalm.parquet", "preference")
"""

from __future__ import annotations

from .readers import FORMAT_KINDS, FORMATS, read_feedback
from .records import (
    ITEM_KINDS,
    LABEL_KINDS,
    PAIRWISE_CHOICES,
    BadRecord,
    ImportedCandidate,
    ImportedItem,
    ImportedLabel,
    validate_gold,
    validate_messages,
    validate_ranking,
)
from .rows import (
    EXPORT_KINDS,
    STRENGTH_MARGIN,
    assistant_turn,
    critique_row,
    kto_row,
    kto_rows_from_pairwise,
    kto_rows_from_ranking,
    listwise_row,
    margin_from_strength,
    pairs_from_ranking,
    preference_row,
    preference_rows_from_pairwise,
    preference_rows_from_ranking,
    preference_rows_from_rewrite,
    prompt_row,
    rows_from_item,
    rows_from_items,
)
from .writers import COLUMNS, export_schema, read_export, validate_row, write_export

__all__ = [
    "COLUMNS",
    "EXPORT_KINDS",
    "FORMATS",
    "FORMAT_KINDS",
    "ITEM_KINDS",
    "LABEL_KINDS",
    "PAIRWISE_CHOICES",
    "STRENGTH_MARGIN",
    "BadRecord",
    "ImportedCandidate",
    "ImportedItem",
    "ImportedLabel",
    "assistant_turn",
    "critique_row",
    "export_schema",
    "kto_row",
    "kto_rows_from_pairwise",
    "kto_rows_from_ranking",
    "listwise_row",
    "margin_from_strength",
    "pairs_from_ranking",
    "preference_row",
    "preference_rows_from_pairwise",
    "preference_rows_from_ranking",
    "preference_rows_from_rewrite",
    "prompt_row",
    "read_export",
    "read_feedback",
    "rows_from_item",
    "rows_from_items",
    "validate_gold",
    "validate_messages",
    "validate_ranking",
    "validate_row",
    "write_export",
]
