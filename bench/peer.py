"""Section 4 of ``make bench``: what Lightning costs.

One xlt fine-tuning step (``FineTuneModule`` driven by the Lightning Trainer
that ``xlt.stages.trainer.make_trainer`` builds: logging, checkpoint and
signal callbacks, the resumable sampler) against one step of a plain
HuggingFace ``transformers.Trainer`` on the same encoder + head, the same
English NLI batches (``task_loader``'s features and collate, batch
``task.batch_size``), AdamW with the same learning rate.  A step is the wall
time between consecutive step starts (data, forward, backward, optimizer,
bookkeeping), measured by a callback in each trainer; the first step of every
run is discarded.  The two run in alternating rounds (xlt, HF, xlt, HF) so a
busy machine slows both alike; reported are medians over the rounds.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn


class StepClock(L.Callback):
    """Times between consecutive ``on_train_batch_start`` calls (Lightning)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())


class TaskModel(nn.Module):
    """Encoder + the task's head with the task's loss, for ``transformers.Trainer``."""

    def __init__(self, module) -> None:
        super().__init__()
        self.encoder, self.head, self.task = module.encoder, module.head, module.task

    def forward(self, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        return {"loss": self.task.loss(self.head(self.encoder(**inputs).last_hidden_state), batch)}


def xlt_steps(cfg, module, loader, steps: int, tmp: Path) -> list[float]:
    from xlt.stages.trainer import make_trainer

    clock = StepClock()
    trainer = make_trainer(cfg, 1, tmp / "ckpt", tmp / "logs", callbacks=[clock], max_steps=steps,
                           enable_progress_bar=False, use_distributed_sampler=False)
    trainer.fit(module, loader)
    return [b - a for a, b in zip(clock.starts, clock.starts[1:])][1:]


def hf_steps(cfg, module, dataset, collate, steps: int, tmp: Path) -> list[float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    starts: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            starts.append(time.perf_counter())

        def on_train_end(self, args, state, control, **kwargs):
            starts.append(time.perf_counter())

    args = TrainingArguments(output_dir=str(tmp / "hf"), per_device_train_batch_size=cfg.task.batch_size, max_steps=steps,
                             learning_rate=cfg.task.lr, weight_decay=cfg.task.weight_decay, lr_scheduler_type="linear",
                             save_strategy="no", report_to=[], logging_steps=10_000, disable_tqdm=True, use_cpu=True,
                             remove_unused_columns=False, dataloader_num_workers=0, seed=cfg.seed)
    Trainer(model=TaskModel(module), args=args, train_dataset=dataset, data_collator=collate, callbacks=[Clock()]).train()
    return [b - a for a, b in zip(starts, starts[1:])][1:]


def bench_peer(cfg, encoder, tokenizer, steps: int, rounds: int = 2) -> dict[str, Any]:
    """Median step time of xlt (Lightning) vs a plain HF Trainer; ratio = xlt / HF."""
    from xlt.models.finetune import FineTuneModule, ListDataset, task_loader
    from xlt.tasks.registry import build_task

    try:
        import accelerate  # noqa: F401 - transformers.Trainer needs it
    except ImportError:
        print("  [peer] skipped: transformers.Trainer needs accelerate (pip install -e '.[bench]')")
        return {"skipped": "accelerate is not installed (pip install -e '.[bench]')"}

    task = build_task(cfg)
    features = task.features(tokenizer, task.train_examples()[: cfg.task.batch_size * (steps + 1)], train=True)
    times: dict[str, list[float]] = {"xlt": [], "hf": []}
    with tempfile.TemporaryDirectory(prefix="xlt-peer-") as tmp:
        for r in range(rounds):
            for name in ("xlt", "hf"):
                module = FineTuneModule(copy.deepcopy(encoder), task, cfg.task.lr, cfg.task.weight_decay, 0.0, cfg.seed)
                loader = task_loader(task, tokenizer, features, cfg.task.batch_size, cfg.seed)
                where = Path(tmp) / f"{name}{r}"
                if name == "xlt":
                    times[name] += xlt_steps(cfg, module, loader, steps + 1, where)
                else:
                    times[name] += hf_steps(cfg, module, ListDataset(features), loader.collate_fn, steps + 1, where)
                print(f"  [peer] round {r + 1}/{rounds} {name}: median {statistics.median(times[name]):.3f} s/step", flush=True)
    xlt, hf = statistics.median(times["xlt"]), statistics.median(times["hf"])
    return {"batch": cfg.task.batch_size, "timed_steps_each": len(times["xlt"]), "xlt_s_per_step": round(xlt, 4),
            "hf_trainer_s_per_step": round(hf, 4), "ratio_xlt_over_hf": round(xlt / hf, 3)}
