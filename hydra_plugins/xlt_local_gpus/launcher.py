"""A Hydra launcher for one multi-GPU machine: up to N jobs at once, one GPU each.

Why xlt has its own: ``hydra-joblib-launcher`` reuses long-lived loky worker
processes that all inherit the launcher's environment, so a job cannot be
given its own ``CUDA_VISIBLE_DEVICES`` before CUDA starts, and a crashing
worker aborts the whole ``Parallel`` call.  ``submitit_local`` starts every
job at once, and its ``visible_gpus`` (not exposed by the Hydra plugin, Hydra
issue #2757) gives each job the *same* first GPUs.  This launcher keeps a
pool of slots (one per GPU, or ``n_jobs`` CPU slots) and runs each job as a
fresh subprocess (:mod:`.worker`) that sees only its slot's GPU; the next job
starts as soon as a slot is free.

Shared artifacts (an adjusted encoder, the original model's English
fine-tuning) are built once under file locks held only by *running* jobs,
so a job waiting for one always waits on a running sibling: no deadlock.
With ``order=shared_first`` (default) the jobs that build distinct artifacts
start first, so that siblings find them built instead of holding a slot
while they wait.
"""


import copy
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class LocalGpusLauncherConf:
    """``hydra.launcher.*`` of ``hydra/launcher=local_gpus``."""

    _target_: str = "hydra_plugins.xlt_local_gpus.launcher.LocalGpusLauncher"
    # GPU ids, one job per GPU at a time; null: $CUDA_VISIBLE_DEVICES, else every
    # GPU torch sees; []: CPU only (jobs see no GPU).
    gpus: Optional[List[str]] = None
    # Jobs at once; null: one per GPU (1 on CPU).  With GPUs at most len(gpus).
    n_jobs: Optional[int] = None
    # OMP/MKL (torch) threads per job; null: this machine's cores // n_jobs.
    threads_per_job: Optional[int] = None
    # shared_first: jobs that build distinct shared artifacts start first; given: sweep order.
    order: str = "shared_first"
    # After Ctrl-C (or SIGTERM), seconds a job may take to stop before SIGKILL.
    stop_grace_s: float = 10.0


ConfigStore.instance().store(group="hydra/launcher", name="xlt_local_gpus", node=LocalGpusLauncherConf,
                             provider="xlt")


class JobsFailed(CompactHydraException):
    """Raised by the sweeper (through the failed JobReturns) after the pool is
    done: one line naming every failed job and its log, exit code 1."""


@dataclass
class Job:
    """One job of the sweep, its config composed and its folder fixed."""

    idx: int
    overrides: List[str]
    config: DictConfig
    job_dir: Path
    shared: frozenset = frozenset()


@dataclass
class Running:
    job: Job
    slot: Optional[str]
    proc: subprocess.Popen
    result: Path
    started: float = field(default_factory=time.monotonic)


def detect_gpus() -> List[str]:
    """The GPUs this process may use: ``$CUDA_VISIBLE_DEVICES`` when set
    (ids, UUIDs or MIG names, kept as given), else every device torch sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        return [] if ids[:1] == ["-1"] else ids
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


ORDERS = ("shared_first", "given")


def check_settings(gpus: Optional[Sequence[Any]] = None, n_jobs: Optional[int] = None,
                   threads_per_job: Optional[int] = None, order: str = "shared_first",
                   stop_grace_s: float = 10.0) -> List[Optional[str]]:
    """The slots of these ``hydra.launcher.*`` settings, every one checked
    first (one line naming it, exit 2).  Called before Hydra writes anything
    for the sweep (``xlt.cli.check_launcher``; ``setup``, before the sweeper
    writes multirun.yaml): a rejected setting leaves no sweep folder."""
    from xlt.cli import fail

    if order not in ORDERS:
        fail(f"hydra.launcher.order must be {' or '.join(ORDERS)}, got '{order}'")
    if threads_per_job is not None and threads_per_job < 1:
        fail(f"hydra.launcher.threads_per_job must be >= 1 (null: this machine's cores // jobs at once), "
             f"got {threads_per_job}")
    if stop_grace_s < 0:
        fail(f"hydra.launcher.stop_grace_s must be >= 0, got {stop_grace_s}")
    return plan_slots(gpus, n_jobs)


def plan_slots(gpus: Optional[Sequence[Any]], n_jobs: Optional[int]) -> List[Optional[str]]:
    """One slot per job that may run at once: a GPU id, or None for CPU.

    The jobs run on this machine, so the GPUs they are given are checked
    here, where they would be used: a GPU that is not there gave a job a
    ``CUDA_VISIBLE_DEVICES`` naming nothing, and it ran on CPU while the
    sweep said "GPU 5"."""
    from xlt.cli import fail

    ids = detect_gpus() if gpus is None else [str(g) for g in gpus]
    if n_jobs is not None and n_jobs < 1:
        fail(f"hydra.launcher.n_jobs must be >= 1, got {n_jobs}")
    present = detect_gpus() if gpus is not None and ids else ids  # read once (torch counts them)
    missing = [i for i in ids if i not in present]
    if missing:
        fail(missing_gpus(missing, present))
    if not ids:
        return [None] * (n_jobs or 1)
    if len(set(ids)) != len(ids):
        fail(f"hydra.launcher.gpus lists a GPU twice: {ids}")
    if n_jobs is not None and n_jobs > len(ids):
        fail(f"hydra.launcher.n_jobs={n_jobs} but only {len(ids)} GPUs ({','.join(ids)}): one job per GPU; "
             "use hydra.launcher.gpus=[] for CPU jobs")
    return ids[: n_jobs or len(ids)]


def missing_gpus(missing: List[str], present: List[str]) -> str:
    """The line for ``hydra.launcher.gpus`` naming GPUs this process cannot
    use (``present``: those it can, :func:`detect_gpus`)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # a job's CUDA_VISIBLE_DEVICES names physical GPUs: stay inside this process's share
        return (f"hydra.launcher.gpus: {','.join(missing)} not in CUDA_VISIBLE_DEVICES={visible} "
                "(the GPUs this sweep may use; give ids from that list)")
    return (f"hydra.launcher.gpus: {','.join(missing)} not a GPU of this machine (GPUs here, as torch counts "
            f"them: {','.join(present) or 'none'}; hydra.launcher.gpus=[] runs the jobs on CPU; "
            "a GPU UUID or MIG name: list it in CUDA_VISIBLE_DEVICES)")


def job_env(slot: Optional[str], threads: int) -> dict[str, str]:
    """The job's environment: only its GPU visible, its share of CPU threads,
    and this process's import path (so the job imports the same code)."""
    prefixes = tuple({sys.prefix, sys.base_prefix})
    extra = [os.path.abspath(p or ".") for p in sys.path if not (p and p.startswith(prefixes))]
    inherited = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "CUDA_VISIBLE_DEVICES": slot if slot is not None else "",
            "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "PYTHONPATH": os.pathsep.join([*extra, inherited] if inherited else extra)}


def shared_artifacts(config: DictConfig, job_dir: Path) -> frozenset:
    """The cache entries of an xlt job that sibling jobs may share (built once
    under a lock): its adjusted encoder and its fine-tuning checkpoint folder,
    computed from the job's config as ``run_job`` will see it (no ``hydra``
    node, its output folder).  Empty for configs that are not xlt jobs."""
    if not {"mode", "paths", "hydra"} <= set(config):
        return frozenset()
    from xlt.keys import adjusted_dir, checkpoint_dir
    from xlt.tasks.registry import bind

    cfg = copy.deepcopy(config)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(job_dir)
    bind(cfg)  # task.options typed with their defaults, as the job keys them
    shared = {str(checkpoint_dir(cfg))}
    if cfg.mode.adjust:
        shared.add(str(adjusted_dir(cfg)))
    return frozenset(shared)


def order_shared_first(jobs: List[Job]) -> List[Job]:
    """Jobs that share no artifact with an earlier job first, the others after
    (each group in sweep order): builders of distinct artifacts run side by
    side, and the jobs that reuse them start when they are (likely) built."""
    claimed: set = set()
    first, later = [], []
    for job in jobs:
        (later if job.shared & claimed else first).append(job)
        claimed |= job.shared
    return first + later


def recorded_failure(job_dir: Path) -> Optional[str]:
    """xlt's own failure record: in a sweep, a failing job writes results.json
    with ``status: failed`` and returns normally (so the basic launcher goes
    on); the pool must still count it as failed."""
    from xlt import results

    try:
        record = results.read(job_dir)  # the one reader of the results.json contract
    except (OSError, ValueError):
        return None
    return str(record.get("error", record["status"])) if record["status"] != results.OK else None  # failed, stopped


class LocalGpusLauncher(Launcher):
    """Runs a sweep's jobs as subprocesses, at most one per GPU at a time."""

    def __init__(self, gpus: Optional[Sequence[Any]] = None, n_jobs: Optional[int] = None,
                 threads_per_job: Optional[int] = None, order: str = "shared_first",
                 stop_grace_s: float = 10.0) -> None:
        self.gpus = None if gpus is None else list(gpus)
        self.n_jobs, self.threads_per_job, self.order, self.stop_grace_s = n_jobs, threads_per_job, order, stop_grace_s
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None
        self.slots: List[Optional[str]] = []

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Check the settings now: the sweeper writes multirun.yaml after
        setup, before ``launch``."""
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.slots = check_settings(self.gpus, self.n_jobs, self.threads_per_job, self.order, self.stop_grace_s)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        slots = self.slots
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = self.threads_per_job or max(1, cores // len(slots))
        jobs = [self.prepare(initial_job_idx + i, overrides) for i, overrides in enumerate(job_overrides)]
        if self.order == "shared_first":
            jobs = order_shared_first(jobs)
        where = f"GPUs {','.join(s for s in slots if s is not None)}" if slots[0] is not None else "CPU"
        log.info(f"Launching {len(jobs)} jobs locally, {len(slots)} at a time on {where}, {threads} threads each")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".local_gpus-", dir=sweep_dir) as scratch:
            returns = Pool(slots, threads, self.stop_grace_s, Path(scratch)).run(jobs, self.payload)
        return [returns[job_idx] for job_idx in sorted(returns)]

    def prepare(self, idx: int, overrides: Sequence[str]) -> Job:
        """Compose the job's config and fix its folder, as the basic launcher
        does, so the job process needs nothing from the clock or the sweep."""
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
            config.hydra.sweep.dir = str(config.hydra.sweep.dir)  # ${now:...} resolved once, here
            config.hydra.sweep.subdir = str(config.hydra.sweep.subdir)
        job_dir = Path(config.hydra.sweep.dir) / config.hydra.sweep.subdir
        shared = shared_artifacts(config, job_dir) if self.order == "shared_first" else frozenset()
        return Job(idx, list(overrides), config, job_dir, shared)

    def payload(self, job: Job) -> bytes:
        """What the job process needs to run Hydra's ``run_job`` itself."""
        import cloudpickle

        return cloudpickle.dumps({"hydra_context": self.hydra_context, "task_function": self.task_function,
                                  "config": job.config, "singleton_state": Singleton.get_state()})


class Pool:
    """Slots (GPU ids or CPU) and the job processes running on them."""

    def __init__(self, slots: List[Optional[str]], threads: int, stop_grace_s: float, scratch: Path,
                 poll_s: float = 0.2) -> None:
        self.slots, self.threads, self.stop_grace_s, self.scratch, self.poll_s = slots, threads, stop_grace_s, scratch, poll_s
        self.running: List[Running] = []
        self.returns: dict[int, JobReturn] = {}
        self.failures: List[str] = []

    def run(self, jobs: List[Job], payload) -> dict[int, JobReturn]:
        """Run every job, the next one as soon as a slot is free; a failed job
        does not stop the others.  Ctrl-C or SIGTERM stops them all."""
        pending, free = deque(jobs), deque(self.slots)
        previous = _raise_on_sigterm()
        try:
            while pending or self.running:
                while pending and free:
                    self.start(pending.popleft(), free.popleft(), payload)
                time.sleep(self.poll_s)
                for done in [r for r in self.running if r.proc.poll() is not None]:
                    self.running.remove(done)
                    free.append(done.slot)
                    self.finish(done)
        except KeyboardInterrupt as interrupt:
            signum = interrupt.args[0] if interrupt.args else signal.SIGINT
            stopped = [f"#{r.job.idx} ({r.job.job_dir})" for r in self.running]
            self.stop()
            log.error(f"interrupted: stopped {len(stopped)} running jobs; {len(pending)} jobs not started "
                      f"({signal.Signals(signum).name}; stopped: {', '.join(stopped) or 'none'}; "
                      f"not started: {', '.join(f'#{job.idx}' for job in pending) or 'none'})")
            raise SystemExit(128 + signum) from None
        finally:
            _restore_sigterm(previous)
        if self.failures:
            error = JobsFailed(f"{len(self.failures)} of {len(jobs)} jobs failed: " + "; ".join(self.failures))
            for ret in self.returns.values():
                if ret.status == JobStatus.FAILED:
                    ret.return_value = error
        return self.returns

    def start(self, job: Job, slot: Optional[str], payload) -> None:
        payload_path, result = self.scratch / f"{job.idx}.pkl", self.scratch / f"{job.idx}.ret"
        payload_path.write_bytes(payload(job))
        job.job_dir.mkdir(parents=True, exist_ok=True)
        with open(job.job_dir / "console.log", "ab") as console:  # the child keeps its own descriptor
            proc = subprocess.Popen([sys.executable, "-m", "hydra_plugins.xlt_local_gpus.worker", str(payload_path),
                                     str(result)], env=job_env(slot, self.threads), stdout=console,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        where = f"GPU {slot}" if slot is not None else "CPU"
        log.info(f"\t#{job.idx} : {' '.join(filter_overrides(job.overrides))} ({where}, pid {proc.pid})")
        self.running.append(Running(job, slot, proc, result))

    def finish(self, done: Running) -> None:
        """Collect the job's JobReturn; a crash, a non-zero exit or xlt's
        failure record makes it FAILED."""
        job, code = done.job, done.proc.returncode
        ret = pickle.loads(done.result.read_bytes()) if done.result.exists() else None
        if ret is None:  # died before run_job returned
            ret = JobReturn(overrides=job.overrides, cfg=job.config, hydra_cfg=job.config,
                            working_dir=str(job.job_dir), status=JobStatus.FAILED)
        reason = (f"killed by signal {-code}" if code < 0 else f"exit code {code}") if code else recorded_failure(job.job_dir)
        if ret.status == JobStatus.COMPLETED and reason:
            ret.status = JobStatus.FAILED
        seconds = time.monotonic() - done.started
        if ret.status == JobStatus.COMPLETED:
            log.info(f"\t#{job.idx} done in {seconds:.0f} s")
            self.returns[job.idx] = ret
            return
        reason = reason or "failed"
        self.failures.append(f"#{job.idx} ({reason}; log {job.job_dir / 'console.log'})")
        log.error(f"\t#{job.idx} FAILED after {seconds:.0f} s: {reason}; see {job.job_dir / 'console.log'}")
        self.returns[job.idx] = ret

    def stop(self) -> None:
        """SIGINT to every running job's process group (Lightning stops
        gracefully), SIGKILL to whatever is left after the grace period or
        at a second Ctrl-C."""
        for r in self.running:
            _signal_group(r.proc, signal.SIGINT)
        deadline = time.monotonic() + self.stop_grace_s
        try:
            while any(r.proc.poll() is None for r in self.running) and time.monotonic() < deadline:
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
        for r in self.running:
            _signal_group(r.proc, signal.SIGKILL)
            r.proc.wait()
        self.running.clear()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the job and its own children (data loader workers)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _raise_on_sigterm() -> dict:
    """SIGTERM (``kill``, a scheduler) and SIGHUP (the terminal closed) stop
    the pool like Ctrl-C: the jobs run in their own sessions and would not
    see them."""

    def handler(signum, frame):
        raise KeyboardInterrupt(signum)

    try:
        return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    except ValueError:  # not the main thread
        return {}


def _restore_sigterm(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
