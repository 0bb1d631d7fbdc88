"""A Hydra callback for the launcher tests: each job appends, to a JSON-lines
file, what ``CUDA_VISIBLE_DEVICES`` and thread count it saw and when it ran.
Passed on the command line (``+hydra.callbacks.probe._target_=...``), so no
test-only code enters xlt."""

import json
import os
import time

from hydra.experimental.callback import Callback


class Probe(Callback):
    def __init__(self, path: str, crash_job: int = -1) -> None:
        self.path, self.crash_job = path, crash_job

    def record(self, config, event: str) -> None:
        line = {"job": int(config.hydra.job.num), "event": event, "time": time.time(), "pid": os.getpid(),
                "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "omp": os.environ.get("OMP_NUM_THREADS")}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")

    def on_job_start(self, config, **kwargs) -> None:
        self.record(config, "start")
        if int(config.hydra.job.num) == self.crash_job:
            os._exit(3)  # a hard crash: no results.json, no Python cleanup

    def on_job_end(self, config, job_return, **kwargs) -> None:
        self.record(config, "end")
