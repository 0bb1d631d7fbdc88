"""The Lightning Trainer every stage uses, built from ``cfg.trainer``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf


def make_trainer(
    cfg: DictConfig, max_epochs: float, checkpoint_dir: Path | None, log_dir: Path, callbacks=(), **override: Any
) -> L.Trainer:
    """A Lightning Trainer from ``cfg.trainer`` (``override`` replaces its values)."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    callbacks = list(callbacks)
    if checkpoint_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=0, every_n_epochs=1))
    t = {**OmegaConf.to_container(cfg.trainer), **override}
    epochs = int(max_epochs) if float(max_epochs).is_integer() else max(1, int(max_epochs + 0.999))
    return L.Trainer(
        accelerator=t["accelerator"],
        devices=t["devices"],
        strategy=t["strategy"],
        precision=t["precision"],
        num_nodes=t["num_nodes"],
        max_epochs=epochs,
        max_steps=t["max_steps"],
        accumulate_grad_batches=t["accumulate_grad_batches"],
        log_every_n_steps=t["log_every_n_steps"],
        enable_progress_bar=t["enable_progress_bar"],
        enable_checkpointing=checkpoint_dir is not None,
        enable_model_summary=False,
        callbacks=callbacks,
        logger=CSVLogger(str(log_dir), name="", version=""),
        deterministic=False,
    )
