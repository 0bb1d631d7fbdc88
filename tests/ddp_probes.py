"""Callbacks that DDP tests name in ``trainer.callbacks`` (run in every
process of a CPU gloo job): one rank's loss made non-finite, as a bad shard
or an fp16 overflow on one GPU would; each rank's micro-batch losses recorded."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class NanOnRank(L.Callback):
    """Rank ``rank``'s training loss is NaN at optimizer step ``step``."""

    def __init__(self, rank: int = 1, step: int = 2):
        self.rank, self.step = rank, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step and isinstance(outputs, dict):
            outputs["loss"] = torch.tensor(float("nan"))


class RecordLosses(L.Callback):
    """Appends each micro-batch's loss (``outputs["loss"]`` is divided by
    ``accumulate_grad_batches``: undone) to ``<folder>/losses-rank<r>.jsonl``."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"epoch": trainer.current_epoch, "batch": batch_idx,
                  "loss": float(outputs["loss"]) * trainer.accumulate_grad_batches}
        with (self.folder / f"losses-rank{trainer.global_rank}.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")
