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
    from lightning.pytorch.loggers import MLFlowLogger

    from xlt.tracking import CsvRecord, stage_loggers

    cfg = compose(tmp_path, "logger=mlflow")
    assert cfg.logger._target_ == "lightning.pytorch.loggers.MLFlowLogger"
    assert training_hash(cfg) == training_hash(compose(tmp_path))  # a logger never changes the model
    trainer = make_trainer(cfg, 1, None, tmp_path / "logs", loggers=stage_loggers(cfg, "finetune", tmp_path / "logs"))
    csv_record, tracker = trainer.loggers  # the CSV record always, the tracker beside it
    assert isinstance(csv_record, CsvRecord) and isinstance(tracker, MLFlowLogger)
    assert tracker._tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"  # a single run: its own folder


def test_paper_presets_train_on_gpu_in_fp32_as_the_paper(tmp_path):
    """The paper's code has no mixed precision: the presets run in fp32 on a
    GPU, bf16 only when asked for."""
    presets = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("table*.yaml"))
    assert len(presets) == 6
    for preset in presets:
        trainer = compose(tmp_path, f"experiment={preset}").trainer
        assert (trainer.accelerator, trainer.precision) == ("gpu", "32-true"), preset
        assert compose(tmp_path, f"experiment={preset}", "trainer.precision=bf16-mixed").trainer.precision == "bf16-mixed"
        assert compose(tmp_path, f"experiment={preset}", "trainer=ddp").trainer.precision == "32-true"
    assert compose(tmp_path, "experiment=table4_qa").task.options.mlqa_metric == "squad"  # as the paper's run_qa*.py
    shown = subprocess.run([sys.executable, "-m", "xlt", "experiment=table2_nli", "--cfg", "job", "-p", "trainer"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "accelerator: gpu" in shown.stdout and "precision: 32-true" in shown.stdout, shown.stderr[-2000:]


def test_bf16_on_a_gpu_without_it_is_one_line(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-32GB")
    with pytest.raises(XltError, match=r"needs a GPU with bfloat16 .*Tesla V100.*trainer.precision=16-mixed"):
        make_trainer(compose(tmp_path, "trainer=gpu"), 1, None, tmp_path)
