"""The Lightning Trainer is built from the whole ``cfg.trainer``: any Trainer
argument reaches it, an unknown one is a one-line error, loggers and callbacks
come from the config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from xlt.contract import compose as compose_job_config
from xlt.errors import XltError
from xlt.keys import training_hash
from xlt.stages.trainer import StopSignal, make_trainer

REPO = Path(__file__).resolve().parents[1]


def compose(tmp_path: Path, *overrides: str):
    return compose_job_config([f"paths.output_dir={tmp_path}", *overrides])


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


def test_unknown_trainer_argument_is_an_error(tmp_path, monkeypatch, capsys):
    from xlt import cli

    monkeypatch.setattr(sys, "argv", ["xlt", "model=tiny", "data=demo", "+trainer.gradent_clip_val=1.0"])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "xlt: error: trainer.gradent_clip_val: not a lightning.Trainer argument xlt passes on "
        "(see `python -c 'import lightning; help(lightning.Trainer)'`)"]


@pytest.mark.parametrize("setting, says", [
    ("+trainer.gradient_clip_val=abc", "`gradient_clip_val` should be an int or a float. Got abc."),
    ("+trainer.gradient_clip_algorithm=foo", "`gradient_clip_algorithm` foo is invalid."),
])
def test_a_trainer_value_lightning_rejects_is_one_line(tmp_path, setting, says):
    """A passed-on argument's value is checked by Lightning only when the
    Trainer is built, in the job: its TypeError or MisconfigurationException
    (a traceback, no results.json) becomes one line."""
    with pytest.raises(XltError) as err:
        make_trainer(compose(tmp_path, setting), 1, tmp_path / "ckpt", tmp_path / "logs")
    message = str(err.value)
    assert message.startswith("lightning.Trainer rejected the trainer settings: ") and says in message
    assert "\n" not in message


def test_a_callback_that_cannot_be_created_is_one_line(tmp_path):
    cfg = compose(tmp_path, "trainer.callbacks=[{_target_: no_such_module.Callback}]")
    with pytest.raises(XltError) as err:
        make_trainer(cfg, 1, None, tmp_path / "logs")
    assert str(err.value).startswith("cannot create a callback of trainer.callbacks: Error loading 'no_such_module.Callback'")
    assert "\n" not in str(err.value)


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
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-32GB")
    with pytest.raises(XltError, match=r"needs a GPU with bfloat16 .*Tesla V100.*trainer.precision=16-mixed"):
        make_trainer(compose(tmp_path, "trainer=gpu"), 1, None, tmp_path)


@pytest.mark.parametrize("devices, shown, wanted", [
    ("3", "3", "3 GPUs"), ("[0,3]", "[0, 3]", "GPU 3"), ("'1,2'", "1,2", "GPU 2"),
])
def test_more_gpus_than_visible_is_one_line(tmp_path, monkeypatch, devices, shown, wanted):
    """trainer.devices beyond the GPUs the job's machine shows: one line naming
    the setting and what is visible, where Lightning raised a traceback."""
    import torch

    from xlt.stages.trainer import check_hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    cfg = compose(tmp_path, "trainer=gpu", "trainer.precision=32-true", f"trainer.devices={devices}")
    with pytest.raises(XltError) as err:
        check_hardware(cfg)
    assert str(err.value) == (f"trainer.devices={shown} asks for {wanted}, but 2 GPUs are visible on this machine "
                              "(indices 0-1; CUDA_VISIBLE_DEVICES=4,5): ask for fewer (trainer.devices=-1 uses every visible GPU)")
    for fits in ("2", "-1", "auto", "[1]", "'0,1'"):
        check_hardware(compose(tmp_path, "trainer=gpu", "trainer.precision=32-true", f"trainer.devices={fits}"))


def diverging_module():
    """A toy LightningModule whose auxiliary term becomes infinite at step 3
    (as ``continual.alpha=inf`` or a huge learning rate make it), and its data."""
    import lightning as L
    import torch

    class Diverging(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            task = self.layer(batch).pow(2).mean()
            pairs = torch.tensor(float("inf") if self.global_step >= 2 else 0.5)
            self.log("train/task_loss", task)
            self.log("train/pairs", pairs)
            return task + pairs

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Diverging(), torch.utils.data.DataLoader(torch.ones(16, 2), batch_size=2)


@pytest.mark.parametrize("stage", ["adjustment", "fine-tuning"])
def test_a_non_finite_loss_stops_with_one_line_naming_the_step(tmp_path, stage):
    """Every training (adjustment, fine-tuning, continual) stops at its first
    non-finite loss instead of reporting an accuracy from NaN weights, and
    writes no checkpoint of that state."""
    import torch

    from xlt import stopping

    module, data = diverging_module()
    trainer = make_trainer(compose(tmp_path, "trainer.checkpoint_every_n_steps=1", "trainer.enable_progress_bar=false"),
                           1, tmp_path / "ckpt", tmp_path / "logs")
    with stopping.stage(stage), pytest.raises(XltError) as err:
        trainer.fit(module, data)
    assert str(err.value).startswith(f"{stage}: non-finite training loss at optimizer step 3 (epoch 0, batch 2): "
                                     "train/pairs=inf")
    assert "\n" not in str(err.value)
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 2  # the last finite state
