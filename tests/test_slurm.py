"""A Slurm sweep on a simulated cluster: fake ``sbatch``/``srun``/``sacct``/
``scontrol``/``squeue`` on PATH (tests/fake_slurm) run the array that
hydra-submitit-launcher submits on this machine.  One job gets SIGUSR2 while
it trains (what Slurm sends ``signal_delay_s`` before a preemption), writes
its checkpoint, is requeued through ``scontrol requeue``, resumes mid-epoch,
and ``xlt-report`` on the sweep is complete.  A GPU preset composes and is
submitted from this machine, which has no GPU (a login node): every job is
submitted and each records, where it runs, that it has no GPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "fake_slurm"

pytestmark = pytest.mark.slow


def test_preempted_slurm_job_is_requeued_and_resumes(tmp_path):
    state, sweep, cache = tmp_path / "slurm", tmp_path / "sweep", tmp_path / "cache"
    env = {**os.environ, "PATH": f"{FAKE / 'bin'}:{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state),
           "XLT_CACHE_DIR": str(cache), "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "xlt", "-m", "model=tiny", "data=demo", "seed=1,2", "task.train_limit=96",
               "task.batch_size=8", "task.eval_limit=12", "task.epochs=2", "trainer.enable_progress_bar=false",
               "trainer.checkpoint_every_n_steps=4", "trainer.callbacks=[{_target_: tests.fake_slurm.steptime.StepTime, seconds: 0.25}]",
               "hydra/launcher=slurm", "hydra.launcher.partition=fake", "hydra.launcher.gpus_per_node=0",
               "hydra.launcher.tasks_per_node=1", f"hydra.sweep.dir={sweep}"]
    started = time.time()
    sweep_run = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        preempted = preempt_while_training(state, cache, deadline=started + 240)
        out, err = sweep_run.communicate(timeout=300)
    finally:
        if sweep_run.poll() is None:
            sweep_run.kill()
    assert sweep_run.returncode == 0, err[-3000:]

    events = (state / "events.log").read_text()
    assert "name=xlt-sweep signal=USR2@120" in events
    assert f"scontrol requeue {preempted}" in events and f"requeued {preempted}" in events
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}
    assert sorted(results) == ["0", "1"] and all(r["status"] == "ok" for r in results.values())
    task = preempted.split("_")[1]
    assert results[task]["training"]["resumed_from_step"] > 0  # the requeued run continued, mid-epoch
    assert results[task]["training"]["steps"] == 24 and not results[task]["training"]["reused_checkpoint"]
    assert "stop requested: checkpoint at step" in (sweep / task / "train.log").read_text()
    report = subprocess.run([sys.executable, "-c", "from xlt.report import main; raise SystemExit(main())", str(sweep)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert report.returncode == 0, report.stderr
    assert "2 jobs read: 2 ok, 0 failed" in report.stdout
    print(f"simulated Slurm sweep with a preemption: {time.time() - started:.0f} s")


def preempt_while_training(state: Path, cache: Path, deadline: float, signum: int = signal.SIGUSR2) -> str:
    """``signum`` to the first array task's process once it has a step checkpoint."""
    while time.time() < deadline:
        pids = sorted(state.glob("*_0.pid"))
        checkpoints = list(cache.glob("checkpoints/*/last.ckpt"))
        if pids and checkpoints and not list(cache.glob("checkpoints/*/done.json")):
            os.kill(int(pids[0].read_text()), signum)
            return pids[0].name.removesuffix(".pid")
        time.sleep(0.1)
    raise AssertionError(f"no step checkpoint appeared; events: {(state / 'events.log').read_text()}")


def test_a_stopped_slurm_job_is_a_failed_submitit_job_and_the_sweep_goes_on(tmp_path):
    """SIGTERM (a plain kill; scancel sends it too) to job 0 while it trains:
    it records "stopped", and submitit records a failure and the job exits 1
    (it was "success", exit 0, COMPLETED); the login node still collects job
    1 and ends with the one line naming job 0."""
    import pickle

    state, sweep, cache = tmp_path / "slurm", tmp_path / "sweep", tmp_path / "cache"
    command = [sys.executable, "-m", "xlt", "-m", "model=tiny", "data=demo", "seed=1,2", "task.train_limit=96",
               "task.batch_size=8", "task.eval_limit=12", "task.epochs=2", "trainer.enable_progress_bar=false",
               "trainer.checkpoint_every_n_steps=4", "trainer.callbacks=[{_target_: tests.fake_slurm.steptime.StepTime, seconds: 0.25}]",
               "hydra/launcher=slurm", "hydra.launcher.partition=fake", "hydra.launcher.gpus_per_node=0",
               "hydra.launcher.tasks_per_node=1", f"hydra.sweep.dir={sweep}"]
    sweep_run = subprocess.Popen(command, cwd=REPO, env=fake_slurm_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stopped = preempt_while_training(state, cache, deadline=time.time() + 240, signum=signal.SIGTERM)
        out, err = sweep_run.communicate(timeout=300)
    finally:
        if sweep_run.poll() is None:
            sweep_run.kill()
    assert sweep_run.returncode == 1, err[-3000:]
    array, task = stopped.split("_")
    other = "1" if task == "0" else "0"
    message = json.loads((sweep / task / "results.json").read_text())["error"]
    assert message.startswith("stopped at fine-tuning by SIGTERM (checkpoint at step")
    assert err.strip().splitlines()[-1] == f"xlt: error: 1 job(s) of the sweep did not finish ok: {sweep / task}: stopped: {message}"
    wait_for_events(state, [f"end {stopped} exit 1", f"end {array}_{other} exit 0"])  # FAILED / COMPLETED (was exit 0)
    outcome, trace = pickle.loads(next((sweep / ".submitit" / stopped).glob("*_result.pkl")).read_bytes())
    assert outcome == "error" and trace.strip().splitlines()[-1].endswith(f"JobNotOk: {message}")
    assert f"Slurm job {stopped} (" in out + err  # the login node said so, then collected the other job
    assert json.loads((sweep / other / "results.json").read_text())["status"] == "ok"


def wait_for_events(state: Path, lines: list[str]) -> None:
    """The fake Slurm records a task's end after its process exits, which
    may be after the sweep on the login node has its result."""
    for _ in range(300):
        if all(line in (state / "events.log").read_text() for line in lines):
            return
        time.sleep(0.1)
    raise AssertionError(f"not all of {lines} in {(state / 'events.log').read_text()}")


def fake_slurm_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{FAKE / 'bin'}:{os.environ['PATH']}", "FAKE_SLURM_DIR": str(tmp_path / "slurm"),
            "XLT_CACHE_DIR": str(tmp_path / "cache"), "CUDA_VISIBLE_DEVICES": "",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def test_a_gpu_preset_is_submitted_from_a_machine_without_a_gpu(tmp_path):
    """issue 22 point 1: a table2_nli-shaped sweep (tiny model, local data,
    trainer=gpu from the preset) composes, validates and submits here; each
    job, lacking a GPU, records a one-line failure in its results.json."""
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "xlt", "-m", "experiment=table2_nli", "model=tiny", "data=demo", "corpus=demo",
               "mode=original,adjusted,continual", "lang=ru,hi", "seed=1", "hydra/launcher=slurm",
               "hydra.launcher.partition=gpu", f"hydra.sweep.dir={sweep}"]
    run = subprocess.run(command, cwd=REPO, env=fake_slurm_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr[-3000:]  # every job ran and failed: the sweep says so
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("xlt: error: 6 job(s) of the sweep did not finish ok: ")
    assert all(f"{sweep / str(n)}: failed: " in last for n in range(6))  # each job named, not only the first
    assert "sbatch 1000 tasks 0-5 name=xlt-table2_nli" in (tmp_path / "slurm" / "events.log").read_text()
    wait_for_events(tmp_path / "slurm", [f"end 1000_{n} exit 1" for n in range(6)])  # failed Slurm jobs, not COMPLETED
    saved = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert len(saved) == 6 and {(r["config"]["mode"], r["config"]["lang"]) for r in saved} == {
        (m, lang) for m in ("original", "adjusted", "continual") for lang in ("ru", "hi")}
    for record in saved:
        assert record["status"] == "failed" and record["config"]["resolved"]["trainer"]["accelerator"] == "gpu"
        assert record["error"] == "trainer.accelerator=gpu: no CUDA GPU is visible on this machine (use trainer=cpu)"
    assert not (tmp_path / "cache" / "alignments").exists()  # stopped before any work


def test_each_jobs_out_says_which_job_it_is_and_that_it_failed(tmp_path):
    """A job's Slurm .out named neither its overrides nor its folder: at its
    start it now says both, where its config is and the code it runs, and a
    failure names the job's folder (here: no GPU on the node)."""
    from omegaconf import OmegaConf

    from xlt.keys import code_version

    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "xlt", "-m", "model=tiny", "data=demo", "seed=1,2", "trainer=gpu", "hydra/launcher=slurm",
               "hydra.launcher.partition=gpu", f"hydra.sweep.dir={sweep}"]
    run = subprocess.run(command, cwd=REPO, env=fake_slurm_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr[-3000:]
    jobs = set()
    for out in sweep.glob(".submitit/*/*_log.out"):
        text = out.read_text()
        job = Path(text.split(": xlt run in ", 1)[1].split("\n", 1)[0])
        overrides = ",".join(sorted(OmegaConf.load(job / ".hydra" / "overrides.yaml")))
        assert f"job {overrides}: xlt run in {job}\n  config: {job / '.hydra' / 'config.yaml'}\n  code: xlt {code_version()}" in text
        assert f"job {job} failed: trainer.accelerator=gpu: no CUDA GPU is visible" in text
        jobs.add(job)
    assert jobs == {sweep / "0", sweep / "1"}


def test_the_readmes_alignment_step_is_submitted_without_a_gpu(tmp_path):
    """README, Slurm step 1: xlt-align on a CPU partition with a GPU preset."""
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-c", "from xlt.cli import align_main; align_main()", "-m", "experiment=table2_nli",
               "mode=adjusted", "model=tiny", "data=demo", "corpus=demo", "corpus.size=200", "lang=ru,hi", "seed=1",
               "hydra/launcher=slurm", "hydra.launcher.partition=cpu", "hydra.launcher.gpus_per_node=0",
               "hydra.launcher.tasks_per_node=1", f"hydra.sweep.dir={sweep}"]
    run = subprocess.run(command, cwd=REPO, env=fake_slurm_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "sbatch 1000 tasks 0-1" in (tmp_path / "slurm" / "events.log").read_text()
    assert len(list((tmp_path / "cache" / "alignments").glob("*-demo-fast_align-*/links.align"))) == 2  # ru and hi
