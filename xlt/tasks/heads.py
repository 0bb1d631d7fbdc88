"""Task heads on top of the encoder's last hidden states.

``task.head`` chooses the structure:

* ``bert`` -- exactly what the paper code fine-tunes, the heads of
  ``AutoModelFor{SequenceClassification,TokenClassification,QuestionAnswering}``
  for a BERT checkpoint (``xnli|ner|question_answering/run_*_no_trainer.py``):
  NLI ``BertForSequenceClassification`` = pooler (dense + tanh on the first
  token, *pretrained* weights) -> dropout -> linear; NER
  ``BertForTokenClassification`` = dropout -> linear; QA
  ``BertForQuestionAnswering`` = linear (no dropout).  New linear layers are
  initialised as transformers does (normal(0, initializer_range), zero bias);
  dropout is ``classifier_dropout`` or ``hidden_dropout_prob``; the
  pretrained pooler comes from ``xlt.models.encoder.load_pooler``.
* ``linear`` -- one linear layer on the first token (NLI) or on every token
  (NER, QA), PyTorch's default init: xlt's head for encoders without a
  pretrained pooler (e5-small).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers import PretrainedConfig

from xlt.config import HEADS

SHAPES = ("sequence", "token", "span")


class FirstTokenHead(nn.Module):
    """Linear layer on the first token's vector ([CLS] / <s>)."""

    def __init__(self, hidden_size: int, num_labels: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden[:, 0])


class PooledHead(nn.Module):
    """``BertForSequenceClassification`` after the encoder: pooler -> dropout -> classifier."""

    def __init__(self, pooler: nn.Module, dropout: float, hidden_size: int, num_labels: int):
        super().__init__()
        self.pooler = pooler
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pooler(hidden)))


class TokenHead(nn.Module):
    """``BertForTokenClassification`` after the encoder: dropout -> classifier."""

    def __init__(self, dropout: float, hidden_size: int, num_labels: int):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(hidden))


def _hf_linear(config: PretrainedConfig, out: int) -> nn.Linear:
    """A new linear layer initialised as transformers' ``BertPreTrainedModel._init_weights``."""
    layer = nn.Linear(config.hidden_size, out)
    nn.init.normal_(layer.weight, mean=0.0, std=config.initializer_range)
    nn.init.zeros_(layer.bias)
    return layer


def new_pooler(config: PretrainedConfig) -> nn.Module:
    """A BERT pooler initialised as transformers does (no pretrained weights)."""
    from transformers.models.bert.modeling_bert import BertPooler

    pooler = BertPooler(config)
    pooler.dense = _hf_linear(config, config.hidden_size)
    return pooler


def build_head(kind: str, shape: str, config: PretrainedConfig, num_labels: int,
               pooler: Optional[nn.Module] = None) -> nn.Module:
    """The head ``kind`` (:data:`HEADS`) for a task of ``shape`` (:data:`SHAPES`)."""
    if kind not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {kind!r}")
    hidden = config.hidden_size
    if kind == "linear":
        return FirstTokenHead(hidden, num_labels) if shape == "sequence" else nn.Linear(hidden, num_labels)
    dropout = getattr(config, "classifier_dropout", None)
    dropout = config.hidden_dropout_prob if dropout is None else dropout
    if shape == "sequence":
        head = PooledHead(pooler if pooler is not None else new_pooler(config), dropout, hidden, num_labels)
    elif shape == "token":
        head = TokenHead(dropout, hidden, num_labels)
    else:
        return _hf_linear(config, num_labels)  # BertForQuestionAnswering.qa_outputs
    head.classifier = _hf_linear(config, num_labels)
    return head
