"""hydra-submitit-launcher's Slurm launcher, with two changes for xlt.

How a job runs under submitit: ``submitit.core._submit`` (``process_job``)
unpickles the launcher and calls it in the Slurm task; the launcher runs
Hydra's ``run_job``, which calls ``xlt.cli.dispatch``.  ``dispatch`` turns a
stop (SIGTERM, SIGINT; SIGUSR2 whose requeue submitit refused) and a failure
into a results.json record and returns normally, so that a sweep goes on:
Hydra's ``run_job`` then reports the job COMPLETED, submitit pickles it as
``("success", ...)`` and the process exits 0 -- a stopped job was a
successful Slurm job (COMPLETED for a plain ``kill``; exit 0 where Slurm
had signalled it).  And hydra-submitit-launcher collects the jobs with
``[job.results()[0] for job in jobs]``, which raises at the first failed
job, so the sweep on the login node would end in a traceback before
collecting the others.

* :meth:`SlurmLauncher.__call__` (in the job): a job whose record says it
  did not end ok raises :class:`JobNotOk` on the job's task 0 (the one
  submitit acts on: it requeues, and the launcher reads its result), so
  submitit records ``("error", ...)``, the process exits 1 and Slurm marks
  the job FAILED.  A requeued job (SIGUSR2) is unchanged: submitit's handler
  calls ``scontrol requeue`` and exits, and the requeued run's result is the
  job's.  The other tasks of a DDP job exit as before: an early non-zero
  exit could make ``srun`` (``--kill-on-bad-exit``) end task 0 before it
  requeues.
* :meth:`SlurmLauncher.launch` (on the login node): a job that submitit
  reports failed, or that produced no result (killed), is logged in one
  line and collected as an empty COMPLETED return, as ``dispatch`` returns
  for it in any other launcher; the sweep's end (``SweepOutcome``) names it
  from its results.json, and ``xlt`` exits 1.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class JobNotOk(RuntimeError):
    """The job ran and its record says it did not end ok (the record's one line)."""


def not_ok(ret: JobReturn) -> Optional[str]:
    """Why the job this process just ran did not end ok, or None: a stop
    (``xlt.stopping``: any command), else its results.json (``xlt``'s jobs)."""
    from hydra_plugins.xlt_local_gpus.launcher import recorded_failure
    from xlt import stopping

    if (stop := stopping.sweep_stop()) is not None:
        return stop.message
    output_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg is not None else None
    return recorded_failure(Path(output_dir)) if output_dir else None


def collect(job: Any, overrides: Sequence[str]) -> JobReturn:
    """The job's return; for a job submitit reports failed or without a
    result (killed), one log line and an empty completed return, so the
    sweep goes on and its end names the job from its results.json."""
    from submitit.core.utils import UncompletedJobError

    try:
        return job.results()[0]
    except UncompletedJobError as err:
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        log.error(f"Slurm job {job.job_id} ({' '.join(filter_overrides(overrides))}) did not finish ok: {first} "
                  f"(log: {job.paths.stderr})")
        return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None)


class SlurmLauncher(SubmititSlurmLauncher):
    """hydra-submitit-launcher's ``SlurmLauncher``: a job that did not end ok
    is a failed submitit job, and does not end the sweep (module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        import submitit

        ret = super().__call__(*args, **kwargs)
        if submitit.JobEnvironment().global_rank == 0 and (why := not_ok(ret)) is not None:
            raise JobNotOk(why)
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """hydra-submitit-launcher 1.2's ``launch``, collecting each job with
        :func:`collect` instead of ``job.results()[0]``."""
        import submitit

        assert self.config is not None

        num_jobs = len(job_overrides)
        assert num_jobs > 0
        params = self.params
        init_params = {"folder": self.params["submitit_folder"]}
        specific_init_keys = {"max_num_timeout"}
        init_params.update(**{f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x in specific_init_keys})
        init_keys = specific_init_keys | {"submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        params = {x if x in baseparams else f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x not in init_keys}
        executor.update_parameters(**params)

        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))

        job_params: List[Any] = []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))

        jobs = executor.map_array(self, *zip(*job_params))
        return [collect(job, overrides) for job, overrides in zip(jobs, job_overrides)]
