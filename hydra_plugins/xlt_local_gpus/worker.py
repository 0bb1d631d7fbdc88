"""One job of a ``local_gpus`` sweep, in its own process.

``python -m hydra_plugins.xlt_local_gpus.worker PAYLOAD RESULT`` unpickles
what the launcher prepared (Hydra context, task function, the job's config,
Hydra's singletons), runs Hydra's own ``run_job`` (so ``.hydra/``, the job's
log file and callbacks are those of any launcher) and pickles the
``JobReturn`` to RESULT.  The launcher sets ``CUDA_VISIBLE_DEVICES`` and the
thread counts in this process's environment before Python starts, so the job
sees exactly its GPU, and a crash here cannot take the pool down.
"""



import ctypes
import os
import pickle
import signal
import sys
from typing import Any

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this job if the launcher dies (even by SIGKILL),
    so no job outlives its sweep as an orphan holding a GPU."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: Ctrl-C handling in the launcher still applies
        return
    if os.getppid() == 1:  # the launcher died before prctl took effect
        sys.exit(1)


def picklable(value: Any) -> Any:
    """The job's return value, or its repr if it cannot travel back."""
    import cloudpickle

    try:
        cloudpickle.dumps(value)
        return value
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(repr(value))


def main(payload_path: str, result_path: str) -> int:
    import cloudpickle
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobStatus, run_job, setup_globals

    die_with_parent()
    with open(payload_path, "rb") as f:
        payload = pickle.load(f)
    Singleton.set_state(payload["singleton_state"])
    setup_globals()
    ret = run_job(hydra_context=payload["hydra_context"], task_function=payload["task_function"],
                  config=payload["config"], job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    ret._return_value = picklable(ret._return_value)
    with open(result_path + ".tmp", "wb") as f:
        cloudpickle.dump(ret, f)
    os.replace(result_path + ".tmp", result_path)
    return 0 if ret.status == JobStatus.COMPLETED else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
