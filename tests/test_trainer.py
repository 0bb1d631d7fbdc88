"""The Lightning Trainer is built from the whole ``cfg.trainer``: any Trainer
argument reaches it, an unknown one is a one-line error, loggers and callbacks
come from the config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from xlt.config import compose_config
from xlt.errors import XltError
from xlt.keys import training_hash
from xlt.stages.trainer import StopSignal, make_trainer

REPO = Path(__file__).resolve().parents[1]


def compose(tmp_path: Path, *overrides: str):
    return compose_config([f"paths.output_dir={tmp_path}", *overrides])


def test_any_trainer_argument_reaches_lightning(tmp_path):
    cfg = compose(tmp_path, "+trainer.gradient_clip_val=1.0", "+trainer.limit_train_batches=0.5",
                  "trainer.callbacks=[{_target_: lightning.pytorch.callbacks.LearningRateMonitor}]")
    trainer = make_trainer(cfg, 2, tmp_path / "ckpt", tmp_path / "logs")
    assert trainer.gradient_clip_val == 1.0 and trainer.limit_train_batches == 0.5
    assert any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks)
    checkpoint = next(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint))
    assert checkpoint._every_n_train_steps == 1000 and any(isinstance(c, StopSignal) for c in trainer.callbacks)
    assert isinstance(trainer.logger, CSVLogger) and Path(trainer.logger.log_dir) == tmp_path / "logs"
    # A model-changing argument changes the checkpoint key; bookkeeping does not.
    plain = training_hash(compose(tmp_path))
    assert training_hash(compose(tmp_path, "+trainer.gradient_clip_val=1.0")) != plain
    assert training_hash(compose(tmp_path, "trainer.checkpoint_every_n_steps=7", "trainer.num_workers=2")) == plain


def test_unknown_trainer_argument_is_an_error(tmp_path):
    with pytest.raises(XltError, match=r"unknown lightning.Trainer argument trainer.gradent_clip_val"):
        make_trainer(compose(tmp_path, "+trainer.gradent_clip_val=1.0"), 1, None, tmp_path)
    result = subprocess.run([sys.executable, "-m", "xlt", "model=tiny", "data=demo", "+trainer.gradent_clip_val=1.0",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "XLT_CACHE_DIR": str(tmp_path / "cache")}, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "xlt: error: unknown lightning.Trainer argument trainer.gradent_clip_val (set on the command line by "
        "+trainer.gradent_clip_val=1.0); see `python -c 'import lightning; help(lightning.Trainer)'`"]


def test_logger_group_selects_a_lightning_logger(tmp_path):
    cfg = compose(tmp_path, "logger=mlflow")
    assert cfg.logger._target_ == "lightning.pytorch.loggers.MLFlowLogger"
    assert training_hash(cfg) == training_hash(compose(tmp_path))  # a logger never changes the model
    with pytest.raises(XltError, match=r"cannot create logger lightning.pytorch.loggers.MLFlowLogger: .*mlflow"):
        make_trainer(cfg, 1, None, tmp_path)  # mlflow is not installed here: one line, not a traceback
