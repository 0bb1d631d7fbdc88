"""What an encoder reads of a tokenised input.

The task features, the collate, the fine-tuning model's forward and the
job's prediction cache all take these keys and no others, so a tokenizer
output key the encoder does not read (offsets, word ids) never reaches it.
"""

from __future__ import annotations

from typing import Any

# token_type_ids only where the tokenizer makes them (BERT's; not XLM-R's).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(mapping: Any) -> list[str]:
    """The keys of ``MODEL_INPUTS`` that ``mapping`` (a tokenizer output, feature or batch) holds."""
    return [key for key in MODEL_INPUTS if key in mapping]
