"""The Lightning Trainer every stage uses, built from ``cfg.trainer``, and
the hardware check that runs in the job.

Every key of ``cfg.trainer`` is a ``lightning.Trainer`` argument except the
xlt-only ones in ``xlt.config.TRAINER_XLT_KEYS`` (the data loader's workers,
the checkpoint interval); the config contract has already stopped a key that
is neither.  ``cfg.logger`` and ``cfg.trainer.callbacks`` are ``_target_``
nodes instantiated with Hydra.
"""

from __future__ import annotations

import logging
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lightning as L
from omegaconf import DictConfig, OmegaConf

from xlt import stopping
from xlt.checkpoints import LAST, AtomicCheckpointIO, State, keep_weights_only
from xlt.config import TRAINER_XLT_KEYS
from xlt.errors import XltError, one_line
from xlt.rundir import in_multirun

log = logging.getLogger(__name__)


def trainer_kwargs(cfg: DictConfig, **override: Any) -> dict[str, Any]:
    """The ``lightning.Trainer`` arguments of ``cfg.trainer`` (plus ``override``)."""
    settings = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k not in TRAINER_XLT_KEYS}
    return {**settings, **override}


def check_hardware(cfg: DictConfig) -> None:
    """What the machine the job runs on must have for ``cfg.trainer``: a
    visible GPU for ``accelerator=gpu``, as many as ``trainer.devices`` asks
    for (Lightning's own error is a traceback), bfloat16 for
    ``precision=bf16-*`` (emulated it is slow or fails late).  Called in the
    job, not where the sweep is composed (a Slurm login node has no GPU)."""
    import os

    import torch

    accelerator, precision = str(cfg.trainer.accelerator), str(cfg.trainer.precision)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise XltError(f"trainer.accelerator={accelerator}: no CUDA GPU is visible on this machine (use trainer=cpu)")
    gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    devices = OmegaConf.to_container(cfg.trainer.devices) if OmegaConf.is_config(cfg.trainer.devices) else cfg.trainer.devices
    if gpu and (wanted := gpus_beyond(devices, visible := torch.cuda.device_count())):
        mask = os.environ.get("CUDA_VISIBLE_DEVICES")
        shown = f"{visible} GPU is" if visible == 1 else f"{visible} GPUs are"
        raise XltError(f"trainer.devices={devices} asks for {wanted}, but {shown} visible on this machine "
                       f"(indices 0-{visible - 1}{f'; CUDA_VISIBLE_DEVICES={mask}' if mask is not None else ''}): "
                       "ask for fewer (trainer.devices=-1 uses every visible GPU)")
    if gpu and precision.startswith("bf16") and not torch.cuda.is_bf16_supported(False):
        raise XltError(f"trainer.precision={precision} needs a GPU with bfloat16 (Ampere or newer); "
                       f"{torch.cuda.get_device_name()} has none: pass trainer.precision=16-mixed or 32-true")


def gpus_beyond(devices: Any, visible: int) -> str | None:
    """What ``trainer.devices`` asks for beyond the ``visible`` CUDA devices,
    read as Lightning reads it: a count n (or "n") is GPUs 0..n-1, a list (or
    "i,j") those indices, -1 and "auto" every visible one."""
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return None
        devices = [int(part) for part in text.split(",") if part.strip()] if "," in text else int(text)
    if isinstance(devices, int):
        return f"{devices} GPUs" if devices > visible else None
    beyond = [index for index in devices if index >= visible]
    return f"GPU {', '.join(map(str, beyond))}" if beyond else None


def config_callbacks(cfg: DictConfig) -> list:
    """``cfg.trainer.callbacks``: Lightning callbacks as ``_target_`` nodes."""
    from hydra.utils import instantiate

    nodes = cfg.trainer.get("callbacks") or []
    try:
        return [instantiate(node, _convert_="all") for node in nodes]
    except Exception as err:  # noqa: BLE001
        raise XltError(f"cannot create a callback of trainer.callbacks: {one_line(err.__cause__ or err)}") from err


def make_trainer(
    cfg: DictConfig, max_epochs: int, checkpoint_dir: Path | None, log_dir: Path, callbacks=(), loggers=None,
    stage: str = "fine-tuning", **override: Any
) -> L.Trainer:
    """A Lightning Trainer from ``cfg.trainer`` (``override`` replaces its values).

    With ``checkpoint_dir``, ``last.ckpt`` is written every
    ``trainer.checkpoint_every_n_steps`` optimizer steps and when the job is
    told to stop (SIGTERM, SIGINT, or SIGUSR2 that Slurm/submitit send before
    preemption or time-out), so a rerun resumes mid-epoch.  Every training
    stops at its first non-finite loss (``FiniteLoss``) and logs its
    module's ``curve_terms`` once per optimizer step (``TrainingCurve``).
    ``loggers``: the stage's (``xlt.tracking``), else a CSV record in ``log_dir``.  Progress:
    Lightning's bar in a terminal, else a ``ProgressLines`` line every few
    seconds, named ``stage`` (``trainer.enable_progress_bar=false``: neither).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from xlt.progress import is_terminal
    from xlt.tracking import CsvRecord

    check_hardware(cfg)
    callbacks = [*callbacks, *config_callbacks(cfg), FiniteLoss(), TrainingCurve()]
    if checkpoint_dir is not None:
        every = cfg.trainer.checkpoint_every_n_steps
        # No version counter: a resumed job whose checkpoint's callback state
        # names no earlier step save (a stop before the first one, a moved
        # cache) would write last-v1.ckpt beside last.ckpt, which no resume reads.
        callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=0, every_n_train_steps=every,
                                         enable_version_counter=False))
        callbacks.append(StopSignal(checkpoint_dir / "last.ckpt"))
    kwargs = {"enable_model_summary": False, "deterministic": False, **trainer_kwargs(cfg, **override)}
    if kwargs.get("enable_progress_bar", True) and not is_terminal():  # a redrawn bar is noise in a file
        kwargs["enable_progress_bar"] = False
        callbacks.append(ProgressLines(stage))
    callbacks.append(LastStepLogged())
    try:
        trainer = L.Trainer(
            **kwargs,
            max_epochs=int(max_epochs),  # whole epochs (the config contract rejects a fraction)
            enable_checkpointing=checkpoint_dir is not None,
            default_root_dir=str(checkpoint_dir or log_dir),  # Lightning's own hpc_ckpt_*.ckpt (SIGUSR1) land here
            callbacks=callbacks,
            logger=list(loggers) if loggers is not None else [CsvRecord(log_dir)],
        )
    except (TypeError, ValueError, MisconfigurationException) as err:  # a value of a passed-on argument
        raise XltError(f"lightning.Trainer rejected the trainer settings: {one_line(err)}") from err
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # no truncated checkpoint on a full disk
    return trainer


def fit_resumable(trainer: L.Trainer, module: L.LightningModule, loader, state: State, checkpoints: Path,
                  loggers: list, label: str, finished: str = "training had finished; a rerun evaluates") -> None:
    """Train ``module`` from ``state`` (fresh, or the checkpoint to resume
    from) to the end, then keep its weights only (``keep_weights_only``):
    the shared path of the adjustment and the fine-tuning.

    The CSV curve is rewound to the resumed step, the log says where the
    training starts (``<label>: resumed from step N``), a stop signal is
    deferred to the next step boundary (``StopSignal`` checkpoints there;
    one noted after the last step stops the job once the weights are kept,
    saying ``finished``), and Lightning's own SIGTERM exit, which is 0,
    becomes ``Stopped`` naming the checkpoint."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from xlt.tracking import rewind_curve

    rewind_curve(loggers, state.step, checkpoints.name)
    if state.path:
        log.info("%s: resumed from step %d (%s)", label, state.step, state.path)
    else:
        log.info("%s: from step 0", label)
    with stopping.deferred(finished):
        try:
            trainer.fit(module, loader, ckpt_path=str(state.path) if state.path else None, weights_only=True)
        except SIGTERMException as stop:  # Lightning exits 0 on SIGTERM: a stopped job has not finished
            raise stopping.Stopped(signal.SIGTERM, stopping.current_stage(),
                                   f"checkpoint at step {trainer.global_step} in {checkpoints / LAST}") from stop
        keep_weights_only(trainer, checkpoints)


class ProgressLines(L.Callback):
    """Training and prediction progress as log lines (``xlt.progress``) where
    no terminal redraws a bar (a Slurm ``.out``, a launcher's ``console.log``):
    optimizer steps / total, rate, ETA and the loss as the progress bar shows
    it (its latest logged step); predicted batches / total.  Rank 0 only.
    ``label`` names the current prediction (``describe_progress``)."""

    def __init__(self, stage: str):
        self.stage, self.label = stage, "prediction"
        self.bar, self.step = None, 0

    def on_train_start(self, trainer, pl_module) -> None:
        from xlt.progress import Progress

        if trainer.is_global_zero:
            self.step = trainer.global_step
            self.bar = Progress(self.stage, int(trainer.estimated_stepping_batches), "steps", start=self.step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time

        if self.bar is None or trainer.global_step == self.step:  # other ranks; accumulating micro-batches
            return
        done, self.step = trainer.global_step - self.step, trainer.global_step
        extra = None
        if time.monotonic() - self.bar.last >= self.bar.interval:  # a line is due: read the loss (a device sync) only now
            # The progress bar's loss: the latest step the loggers wrote (under DDP
            # the mean over the processes, which this rank alone cannot compute).
            shown = next(iter(trainer.progress_bar_metrics.values()), None)
            extra = f"loss {float(shown):.4f}" if shown is not None else None
        self.bar.update(done, extra)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_predict_start(self, trainer, pl_module) -> None:
        from xlt.progress import Progress

        if trainer.is_global_zero:
            self.bar = Progress(self.label, int(sum(trainer.num_predict_batches)), "batches")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.bar is not None:
            self.bar.update()

    def on_predict_end(self, trainer, pl_module) -> None:
        self.on_train_end(trainer, pl_module)


def describe_progress(trainer: L.Trainer, label: str) -> None:
    """Name the next prediction in the progress lines (``evaluation xnli.ru``)."""
    for callback in trainer.callbacks:
        if isinstance(callback, ProgressLines):
            callback.label = label


class LastStepLogged(L.Callback):
    """Log the training metrics of the last optimizer step when Lightning did
    not (it logs every ``log_every_n_steps``): a run shorter than that would
    otherwise leave no curve at all, and a longer one would end its curve early.
    Lightning's step column is the optimizer step minus one."""

    def on_train_end(self, trainer, pl_module) -> None:
        steps = trainer.global_step
        if steps == 0 or steps % trainer.log_every_n_steps == 0 or not trainer.loggers:
            return
        last = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
        if last:
            for logger in trainer.loggers:
                logger.log_metrics(last, step=steps - 1)
                logger.save()


class StopSignal(L.Callback):
    """Checkpoint, then stop, when the job is asked to stop.

    ``xlt.stopping`` notes SIGTERM (``scancel``, a plain kill), SIGINT
    (Ctrl-C) and SIGUSR2 (what submitit asks Slurm to send
    ``signal_delay_s`` before a preemption or a time-out) while a stage
    trains (the adjustment, the fine-tuning);
    Lightning also notes SIGTERM (``trainer.received_sigterm``).  A signal
    handler may run in the middle of an optimizer step, so it only sets a
    flag; the checkpoint is written here, at the next step boundary, and then
    ``Stopped`` ends the job (``xlt.cli.dispatch`` records it, hands SIGUSR2
    to submitit's requeue, and exits non-zero).
    """

    def __init__(self, path: Path):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not step_boundary(trainer, batch_idx):
            return
        signum = stopping.requested() or (signal.SIGTERM if trainer.received_sigterm else None)
        stop = signum is not None
        if trainer.world_size > 1:  # ranks may see the signal a step apart: agree, or the collective save hangs
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        trainer.save_checkpoint(self.path)
        log.warning("stop requested: checkpoint at step %d written to %s", trainer.global_step, self.path)
        raise stopping.Stopped(signum or signal.SIGTERM, stopping.current_stage(),
                               f"checkpoint at step {trainer.global_step} in {self.path}")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """SIGTERM noticed by Lightning between two steps (it raises before the
        next batch): the state is a step boundary, so checkpoint it too."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        if isinstance(exception, SIGTERMException) and progress.completed % trainer.accumulate_grad_batches == 0:
            trainer.save_checkpoint(self.path)
            log.warning("SIGTERM: checkpoint at step %d written to %s", trainer.global_step, self.path)


def step_boundary(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether the batch that just ended completed an optimizer step (the
    last of ``accumulate_grad_batches`` micro-batches, or of the epoch), as
    Lightning's own accumulation decides."""
    done = batch_idx + 1
    return done % trainer.accumulate_grad_batches == 0 or done == trainer.num_training_batches


class FiniteLoss(L.Callback):
    """Stop at the first non-finite training loss, with one line naming the
    step and the terms that are not finite.

    Optimizer steps on NaN or infinite gradients leave NaN weights that
    still "predict" (one class everywhere), so a job would report a
    meaningless accuracy and exit 0.  Checking costs one device sync per
    micro-batch.  Runs before the step's checkpoint callback: no NaN state is saved.

    Under DDP the processes first agree (every process's loss and
    ``curve_terms`` gathered in one all-reduce per micro-batch; Lightning's
    ``all_gather`` is deprecated in torch), and every process stops with
    the same line, naming the ranks whose loss was not finite: a process
    that stopped alone left the others in their next collective (on gloo a
    "Connection closed by peer" traceback that replaced the one line in
    results.json, on NCCL a hang until the watchdog).
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import torch

        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        terms = {**(getattr(pl_module, "curve_terms", None) or {}), "loss": loss}
        values = torch.zeros(trainer.world_size, len(terms), device=loss.device)  # (processes, terms)
        values[trainer.global_rank] = torch.stack([value.detach().float().reshape(()).to(loss.device) for value in terms.values()])
        if trainer.world_size > 1:  # an all-gather in one all-reduce: the other rows are 0, and nan + 0 is nan
            import torch.distributed as dist

            dist.all_reduce(values)
        values = values.cpu()
        finite = torch.isfinite(values)
        if bool(finite.all()):
            return
        names = list(terms)
        ranks = [rank for rank in range(len(values)) if not bool(finite[rank].all())]

        def shown(rank: int) -> str:
            bad = {name: float(values[rank, i]) for i, name in enumerate(names[:-1]) if not finite[rank, i]}
            if not bad and len(names) == 1 and len(values) == 1:  # a module without curve_terms: what it logged
                bad = {k: float(v) for k, v in trainer.callback_metrics.items()
                       if isinstance(v, torch.Tensor) and v.numel() == 1 and not bool(torch.isfinite(v))}
            return ", ".join(f"{k}={v}" for k, v in bad.items()) or f"loss={float(values[rank, -1])}"

        step = trainer.global_step + (0 if step_boundary(trainer, batch_idx) else 1)  # the step in progress
        where, detail = "", shown(ranks[0])
        if len(values) > 1:
            where = f" on rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} of {len(values)} processes"
            detail = detail if len(ranks) == 1 else "; ".join(f"rank {rank}: {shown(rank)}" for rank in ranks)
        raise XltError(f"{stopping.current_stage()}: non-finite training loss at optimizer step {step} "
                       f"(epoch {trainer.current_epoch}, batch {batch_idx}){where}: {detail}; lower the learning rate "
                       "or check the loss weights (continual.alpha, continual.reg_weight, adjustment.reg_weight)")


class TrainingCurve(L.Callback):
    """The training curve: for each optimizer step, the mean of the module's
    ``curve_terms`` (the scalars of its latest training step, e.g.
    ``train/task_loss``) over the step's micro-batches and DDP processes --
    the loss the step optimized, not one process's last micro-batch.

    Averaged across processes only on the steps the loggers write (every
    ``trainer.log_every_n_steps``, and the last one, which ``LastStepLogged``
    writes), in one all-reduce of all terms together: ``self.log(...,
    sync_dist=True)`` would all-reduce each term at every micro-batch, a
    cost Lightning's documentation warns about.  The first term is the one
    the progress bar shows.  Modules without ``curve_terms`` log their own.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.batches, self.step = 0, 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.sums, self.batches, self.step = {}, 0, trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import torch

        terms = getattr(pl_module, "curve_terms", None)
        if not terms:
            return
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach().float()
        self.batches += 1
        if trainer.global_step == self.step:  # accumulating micro-batches: the step is not done
            return
        self.step = trainer.global_step
        sums, batches, self.sums, self.batches = self.sums, self.batches, {}, 0
        if self.step % trainer.log_every_n_steps and self.step < trainer.estimated_stepping_batches:
            return  # not a step the loggers write: no collective
        device = next(iter(sums.values())).device
        means = trainer.strategy.reduce(torch.stack([value.to(device) for value in sums.values()]) / batches, reduce_op="mean")
        for index, (name, value) in enumerate(zip(sums, means)):
            pl_module.log(name, value, on_step=True, on_epoch=False, prog_bar=index == 0)


def one_device() -> dict[str, Any]:
    """Overrides for a Trainer that runs on this process's device only (the
    adjustment, rank 0's evaluation): inside an ``srun`` job with one task per
    GPU, Lightning's SLURM environment would otherwise expect all tasks."""
    from lightning.fabric.plugins.environments import LightningEnvironment

    return {"devices": 1, "strategy": "auto", "num_nodes": 1, "plugins": [LightningEnvironment()]}


@contextmanager
def as_rank_zero() -> Iterator[None]:
    """Run a ``one_device()`` training (the adjustment) as rank 0 of its own
    one-process run, whatever this process's rank in the job.

    Lightning's rank-zero gate (``rank_zero_only.rank``: CSV records,
    trackers, its messages) is read from ``SLURM_PROCID`` / ``RANK`` at
    import, and only DDP strategies reset it.  Under Slurm every srun task
    of a DDP job runs the job, and whichever takes the adjustment's build
    lock trains it; task 1 left no curve and no tracker run.  Restored
    afterwards for the job's DDP fine-tuning."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    rank, rank_zero_only.rank = rank_zero_only.rank, 0
    try:
        yield
    finally:
        rank_zero_only.rank = rank


DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def ddp_job(out: Path) -> Iterator[None]:
    """Run one job's DDP fit so that the next job of the same process starts clean.

    Lightning's DDP launcher re-executes ``sys.argv`` (plus ``hydra.run.dir``)
    for the other ranks; in a multirun that command is the whole sweep, so
    every worker would run every job: here it becomes this job's own
    overrides in run mode, in this job's folder.  Afterwards the process group
    is destroyed and the launcher's environment variables (``LOCAL_RANK``,
    ``MASTER_PORT``...) are restored, or the next job of a sweep would talk to
    the finished job's dead workers.
    """
    import os

    import torch.distributed as dist
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    env = {k: os.environ.get(k) for k in DDP_ENV}
    multirun = in_multirun()
    hydra_cfg = HydraConfig.get() if multirun else None
    # Kept as written, not resolved: reading it resolved ${xlt_fresh_dir:outputs/...}, which claims (creates)
    # an empty outputs/<date>/<time> in the working directory for every training job of a sweep.
    argv, run_dir = sys.argv, OmegaConf.to_container(hydra_cfg.run, resolve=False)["dir"] if multirun else None
    if multirun:
        sys.argv = [argv[0], *hydra_cfg.overrides.task]
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = str(out)
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in env.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        if multirun:
            sys.argv = argv
            with read_write(hydra_cfg), open_dict(hydra_cfg):
                hydra_cfg.run.dir = run_dir
