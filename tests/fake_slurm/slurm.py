#!/usr/bin/env python3
"""A fake Slurm for tests: ``sbatch``, ``srun``, ``sacct``, ``scontrol``,
``squeue`` and ``scancel`` (symlinks to this file) run a submitted job array
on this machine, the way submitit drives a real cluster.

* ``sbatch script``: reads ``#SBATCH --array=0-N%P`` and starts one detached
  runner per array task; prints ``Submitted batch job <id>``.
* runner: runs the script with the SLURM_* variables of task ``<id>_<i>``
  (one node, one task); if ``scontrol requeue`` was called for it, runs it
  again (``SLURM_RESTART_COUNT`` + 1), else records COMPLETED / FAILED.
* ``srun --output O --error E cmd``: runs ``cmd`` with its output appended to
  O / E (``%A %a %j %t`` filled in) and writes its pid to
  ``$FAKE_SLURM_DIR/<id>_<i>.pid``, so a test can signal the job's process as
  Slurm does (``--signal=USR2@...``).
* ``sacct -o JobID,State,NodeList --parsable2 -j <id>``: the tasks' states.

State lives in ``$FAKE_SLURM_DIR``; ``events.log`` there lists what happened.
Only the standard library is used.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKE_SLURM_DIR", "/tmp/fake-slurm"))


def event(text: str) -> None:
    with open(STATE / "events.log", "a") as log:
        log.write(f"{time.time():.2f} {text}\n")


def sbatch(args: list[str]) -> None:
    script = Path(args[-1])
    flags = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", script.read_text(), re.M))
    first, last = (int(x) for x in flags.get("array", "0-0").split("%")[0].split("-"))
    STATE.mkdir(parents=True, exist_ok=True)
    job = 1000 + len(list(STATE.glob("job-*")))
    (STATE / f"job-{job}").write_text(str(script))
    for task in range(first, last + 1):
        (STATE / f"{job}_{task}.state").write_text("PENDING")
        subprocess.Popen([sys.executable, __file__, "_run", str(job), str(task), str(script), flags.get("job-name", "")],
                         start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    event(f"sbatch {job} tasks {first}-{last} name={flags.get('job-name')} signal={flags.get('signal')}")
    print(f"Submitted batch job {job}")


def run(job: str, task: str, script: str, name: str) -> None:
    tid = f"{job}_{task}"
    restarts = 0
    while True:
        (STATE / f"{tid}.state").write_text("RUNNING")
        env = {**os.environ, "SLURM_JOB_ID": str(int(job) * 1000 + int(task)), "SLURM_ARRAY_JOB_ID": job,
               "SLURM_ARRAY_TASK_ID": task, "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0",
               "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1",
               "SLURM_JOB_NODELIST": "localhost", "SLURM_NODELIST": "localhost", "SLURM_JOB_NAME": name,
               "SLURM_RESTART_COUNT": str(restarts)}
        event(f"start {tid} restart={restarts}")
        code = subprocess.call(["bash", script], env=env)
        requeue = STATE / f"{tid}.requeue"
        if requeue.exists():
            requeue.unlink()
            restarts += 1
            (STATE / f"{tid}.state").write_text("REQUEUED")
            event(f"requeued {tid} (exit {code})")
            continue
        (STATE / f"{tid}.state").write_text("COMPLETED" if code == 0 else "FAILED")
        event(f"end {tid} exit {code}")
        return


def srun(args: list[str]) -> None:
    files = {}
    while args and args[0].startswith("--"):
        flag = args.pop(0)
        if flag in ("--output", "--error"):
            files[flag] = args.pop(0)
    tid = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    fill = {"%A": os.environ["SLURM_ARRAY_JOB_ID"], "%a": os.environ["SLURM_ARRAY_TASK_ID"],
            "%j": os.environ["SLURM_JOB_ID"], "%t": "0"}
    for flag, target in zip(("--output", "--error"), (1, 2)):
        if flag in files:
            path = re.sub("%[Aajt]", lambda m: fill[m.group()], files[flag])
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), target)
    (STATE / f"{tid}.pid").write_text(str(os.getpid()))
    os.execvp(args[0], args)


def sacct(args: list[str]) -> None:
    jobs = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
    print("JobID|State|NodeList")
    for job in jobs:
        for state in sorted(STATE.glob(f"{job.split('_')[0]}_*.state")):
            print(f"{state.name.removesuffix('.state')}|{state.read_text()}|localhost")


def scontrol(args: list[str]) -> None:
    if args[:1] == ["requeue"]:
        (STATE / f"{args[1]}.requeue").touch()
        event(f"scontrol requeue {args[1]}")


def squeue(args: list[str]) -> None:
    print("JOBID STATE")
    for state in sorted(STATE.glob("*.state")):
        if state.read_text() in ("PENDING", "RUNNING", "REQUEUED"):
            print(state.name.removesuffix(".state"), state.read_text())


def scancel(args: list[str]) -> None:
    sig = signal.SIGTERM
    if "--signal" in args:
        sig = getattr(signal, "SIG" + args[args.index("--signal") + 1])
    for job in (a for a in args if a[:1].isdigit()):
        for pid in STATE.glob(f"{job}*.pid"):
            os.kill(int(pid.read_text()), sig)


def main() -> None:
    command = Path(sys.argv[0]).name
    if sys.argv[1:2] == ["_run"]:
        run(*sys.argv[2:6])
        return
    {"sbatch": sbatch, "srun": srun, "sacct": sacct, "scontrol": scontrol, "squeue": squeue,
     "scancel": scancel}[command](sys.argv[1:])


if __name__ == "__main__":
    main()
