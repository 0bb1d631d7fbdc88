"""Fine-tuning on an English task: encoder + the task's linear head.

One LightningModule serves every fine-tuning task: the task object supplies
the head, the loss and the batches (``TrainableTask``: what this module needs
of ``xlt.tasks.base.FineTuningTask``).  Continual learning is the same module
with a ``ContinualObjective`` attached: every training step then adds the
adjustment loss on a fresh batch of aligned sentence pairs (see
``xlt.models.continual``).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Protocol

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from xlt.models.inputs import model_inputs


class TrainableTask(Protocol):
    """What fine-tuning needs of a task (``xlt.tasks.base.FineTuningTask``
    has it; models sit below tasks, so they name the protocol, not the class)."""

    def head(self, config, pooler: Optional[torch.nn.Module] = None) -> torch.nn.Module: ...

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def collate(self, tokenizer, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]: ...


class ListDataset(Dataset):
    """A list of already tokenised features."""

    def __init__(self, items: list[Any]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with ``seed + epoch``: the order of epoch k never depends on
    what ran before it, so a run resumed from a checkpoint sees the same
    batches as an uninterrupted one.  Lightning calls ``set_epoch``.

    ``resume(epoch, skip)`` makes the next pass start ``skip`` indices into
    that epoch's order (exact mid-epoch resume); ``shard(rank, world)`` gives
    each DDP process every ``world``-th index of the same order (padded by
    wrapping, as ``DistributedSampler`` does), so Lightning need not replace it.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0
        self.skip, self.rank, self.world = 0, 0, 1

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def resume(self, epoch: int, skip: int) -> None:
        self.epoch, self.skip = epoch, skip

    def shard(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        order = (order * self.world)[: len(self) * self.world][self.rank :: self.world]
        skip, self.skip = self.skip, 0  # only the first pass after a resume is shortened
        return iter(order[skip:])

    def __len__(self) -> int:
        return -(-self.size // self.world)


def task_loader(task: TrainableTask, tokenizer, features: list[dict], batch_size: int, seed: int | None, workers: int = 0) -> DataLoader:
    """DataLoader with dynamic padding; shuffled by epoch when ``seed`` is given."""
    sampler = EpochShuffleSampler(len(features), seed) if seed is not None else None
    return DataLoader(
        ListDataset(features),
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=lambda batch: task.collate(tokenizer, batch),
        num_workers=workers,
    )


def decays(name: str) -> bool:
    """Whether AdamW's weight decay applies to parameter ``name``: not to
    biases and LayerNorm weights, the ``no_decay = ["bias", "LayerNorm.weight"]``
    groups of the paper code's ``run_*_no_trainer.py`` (plus any other norm
    layer's weights, for non-BERT names)."""
    return not ("bias" in name or "LayerNorm.weight" in name or "norm" in name.lower())


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """The RNG seed of one training batch on one process.  Reduced modulo
    2**63, which ``torch.manual_seed`` accepts for every job seed the config
    allows (< 2**32); smaller products, i.e. every seed below ~2.9M, keep
    the values that seeded their dropout before the reduction."""
    return (((seed * 100_003 + epoch) * 1_000_003 + batch) * 64 + rank) % 2**63


class SamplerPosition(L.Callback):
    """Saves where the training sampler stands (epoch, batches done in it) in
    every checkpoint and restores it on resume, so a run killed mid-epoch
    continues with the next unseen batch.  Also shards the sampler across
    DDP processes (``use_distributed_sampler=False``: the order stays ours)."""

    def __init__(self, loader: DataLoader):
        self.sampler: EpochShuffleSampler = loader.sampler
        self.batch_size = loader.batch_size

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.sampler.shard(trainer.global_rank, trainer.world_size)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        epoch = trainer.current_epoch
        if done >= trainer.num_training_batches:  # saved on the epoch's last batch
            epoch, done = epoch + 1, 0
        checkpoint["xlt_sampler"] = {"epoch": epoch, "batches": done}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        position = checkpoint.get("xlt_sampler", {"epoch": checkpoint.get("epoch", 0), "batches": 0})
        self.sampler.resume(position["epoch"], position["batches"] * self.batch_size)


class FineTuneModule(L.LightningModule):
    """Encoder + task head trained as the paper code's ``no_trainer`` loop:
    AdamW with weight-decay groups, linear schedule with warm-up
    (``get_scheduler("linear", ...)``), no gradient clipping."""

    def __init__(
        self,
        encoder: PreTrainedModel,
        task: TrainableTask,
        lr: float,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        seed: int = 1,
        objective: Optional[Any] = None,
        adam_eps: float = 1e-8,
        pooler: Optional[torch.nn.Module] = None,
    ):
        super().__init__()
        # from_pretrained returns eval mode; training uses dropout as the HF scripts do.
        self.encoder = encoder.train()
        self.head = task.head(encoder.config, pooler)
        self.task = task
        self.lr, self.weight_decay, self.warmup_ratio, self.seed = lr, weight_decay, warmup_ratio, seed
        self.adam_eps = adam_eps
        # Not a submodule: its frozen reference model must stay out of the
        # optimiser and the checkpoint.
        self.objective = objective
        self.curve_terms: dict[str, torch.Tensor] = {}  # the latest micro-batch's loss terms, this process's

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: batch[k] for k in model_inputs(batch)}
        return self.head(self.encoder(**inputs).last_hidden_state)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # RNG (dropout) seeded per batch and process: a run resumed mid-epoch
        # draws the same masks as an uninterrupted one without saving RNG states.
        torch.manual_seed(batch_seed(self.seed, self.current_epoch, batch_idx, self.global_rank))

    def on_fit_start(self) -> None:
        if self.objective is not None:
            self.objective.to(self.device)

    def on_train_end(self) -> None:
        if self.objective is not None:
            self.objective.loss.warn_without_negatives("continual learning")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The step's loss; its terms go to ``curve_terms``, which the Trainer's
        ``TrainingCurve`` logs as the mean over the optimizer step's
        micro-batches and DDP processes (the first one in the progress bar)."""
        task_loss = self.task.loss(self(batch), batch)
        if self.objective is None:
            self.curve_terms = {"train/task_loss": task_loss.detach()}
            return task_loss
        align = self.objective.step_loss(self.encoder, self.global_step)
        loss = task_loss + align["weighted"]
        self.curve_terms = {"train/loss": loss.detach(), "train/task_loss": task_loss.detach(),
                            **{f"train/{k}": v.detach() for k, v in align.items()}}
        return loss

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> list[torch.Tensor]:
        logits = self(batch).float().cpu()
        if logits.dim() == 2:
            return list(logits)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        return [row[:length] for row, length in zip(logits, lengths)]

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            (decay if decays(name) else no_decay).append(param)
        # transformers.AdamW (the paper code) = torch AdamW with eps 1e-6 (task.adam_eps).
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            eps=self.adam_eps,
            fused=True,  # one kernel over all parameters: ~3x faster than the loop on CPU (bench/)
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = get_linear_schedule_with_warmup(optimizer, int(self.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
