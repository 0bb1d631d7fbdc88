"""Fine-tuning (xlt.models.finetune): the paper scripts' optimiser and
schedule, and the sampler that makes a resumed run see the same batches."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import BertConfig, BertModel, get_scheduler

from tests.helpers import make_task
from xlt.models.finetune import EpochShuffleSampler, FineTuneModule, batch_seed

CONFIG = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def task_of(name: str, head: str = "bert"):
    return make_task(name, "ru", "unused", f"task.head={head}")


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


def test_sampler_order_depends_only_on_seed_and_epoch():
    """Epoch k's order never depends on what ran before it; a resume skips
    into it; DDP shards take every world-th index of the same order."""
    sampler = EpochShuffleSampler(10, seed=3)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    fresh = EpochShuffleSampler(10, seed=3)
    fresh.set_epoch(1)
    assert list(fresh) == epoch1 and sorted(epoch1) == list(range(10))
    fresh.resume(1, 4)
    assert list(fresh) == epoch1[4:] and list(fresh) == epoch1  # only the first pass after a resume is shortened
    shards = []
    for rank in (0, 1):
        shard = EpochShuffleSampler(10, seed=3)
        shard.set_epoch(1)
        shard.shard(rank, 2)
        shards.append(list(shard))
    assert shards == [epoch1[0::2], epoch1[1::2]] and len(shard) == 5


@pytest.mark.parametrize("seed", [1, 2**32 - 1])
def test_every_allowed_seed_seeds_the_batches(seed):
    """The per-batch dropout seed stays within torch's range for the largest
    job seed the config allows (it overflowed from seed ~2.9M), and keeps its
    old value for the seeds studies used."""
    module = FineTuneModule(BertModel(CONFIG, add_pooling_layer=False), task_of("xnli"), lr=5e-5, seed=seed)
    module._trainer = SimpleNamespace(current_epoch=2, global_rank=1)
    module.on_train_batch_start(None, 12_000)
    first = torch.rand(3)
    torch.manual_seed(batch_seed(seed, 2, 12_000, 1))
    assert torch.equal(torch.rand(3), first)
    assert batch_seed(5, 2, 12_000, 1) == ((5 * 100_003 + 2) * 1_000_003 + 12_000) * 64 + 1
