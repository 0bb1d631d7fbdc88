"""``hydra/launcher=local_gpus``: one job per (fake) GPU at a time, on CPU.

The launcher only sets ``CUDA_VISIBLE_DEVICES`` in each job's process, so
fake GPU ids on a CPU machine test its scheduling: the sweep runs under
``CUDA_VISIBLE_DEVICES=0,1``, which the launcher takes as the GPUs it may
use (it checks the ids it is given against them, or against the GPUs torch
counts when unset); a Hydra callback (tests/launcher_probe.py) records what
each job saw and when it ran.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hydra_plugins.xlt_local_gpus.launcher import Job, detect_gpus, order_shared_first, plan_slots, shared_artifacts

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "data=demo", f"data.root={REPO / 'data' / 'demo'}", "task.train_limit=16", "task.eval_limit=4",
        "task.epochs=1", "trainer.enable_progress_bar=false", "hydra/launcher=local_gpus"]
FAKE_GPUS = "0,1"  # CUDA_VISIBLE_DEVICES of the simulated sweeps: two GPUs this machine need not have


def sweep(tmp_path: Path, e5_dir: str, *args: str, crash_job: int = -1, wait: bool = True):
    """``xlt -m`` with the probe callback and a fresh cache (the converted
    tokenizer linked in), so every job really trains; run in an empty
    working directory (``tmp_path/cwd``), where it should write nothing."""
    cache = tmp_path / "cache"
    if not cache.exists():
        cache.mkdir()
        (cache / "models").symlink_to(Path(e5_dir).parent)
    probe = ["+hydra.callbacks.probe._target_=tests.launcher_probe.Probe",
             f"+hydra.callbacks.probe.path={tmp_path / 'probe.jsonl'}", f"+hydra.callbacks.probe.crash_job={crash_job}"]
    command = [sys.executable, "-m", "xlt", "-m", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}", *probe, *args]
    env = {**os.environ, "XLT_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": FAKE_GPUS}
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    if not wait:
        # SIGINT back to its default in the sweep: a suite started in the background
        # (`nohup make test &`) inherits SIGINT ignored, and Python then never raises
        # KeyboardInterrupt, so the Ctrl-C test would test nothing.
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def probe_runs(tmp_path: Path) -> dict[int, dict]:
    """job -> {cuda, omp, pid, start, end} from the probe's records."""
    runs: dict[int, dict] = {}
    path = tmp_path / "probe.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        run = runs.setdefault(record["job"], {"cuda": record["cuda"], "omp": record["omp"], "pid": record["pid"]})
        run[record["event"]] = record["time"]
    return runs


def max_running(runs: dict[int, dict]) -> int:
    """The most jobs running at one moment (a crashed job: an instant)."""
    events = sorted((t, delta) for run in runs.values()
                    for t, delta in ((run["start"], 1), (run.get("end", run["start"] + 1e-3), -1)))
    running, most = 0, 0
    for _, delta in events:
        running += delta
        most = max(most, running)
    return most


def statuses(tmp_path: Path) -> dict[int, str]:
    return {int(p.parent.name): json.loads(p.read_text())["status"]
            for p in (tmp_path / "sweep").glob("*/results.json")}


@pytest.mark.slow
def test_six_jobs_on_two_gpus_one_crashing(tmp_path, e5_dir):
    """At most 2 at once, each job sees exactly one of the two ids, both are
    used, runs overlap; job #2 dies hard and the other 5 still finish, and the
    sweep exits non-zero naming it."""
    result = sweep(tmp_path, e5_dir, "seed=1,2,3,4,5,6", "hydra.launcher.gpus=[0,1]", crash_job=2)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "1 of 6 jobs failed: #2 (exit code 3" in result.stderr
    assert statuses(tmp_path) == {0: "ok", 1: "ok", 3: "ok", 4: "ok", 5: "ok"}
    runs = probe_runs(tmp_path)
    assert sorted(runs) == [0, 1, 2, 3, 4, 5]
    assert {run["cuda"] for run in runs.values()} == {"0", "1"}  # one id each, both used
    assert all(run["omp"] == str(max(1, len(os.sched_getaffinity(0)) // 2)) for run in runs.values())
    assert max_running(runs) == 2  # never more than the 2 GPUs, and runs overlap
    for job in (0, 1, 3, 4, 5):  # per-job logs, as with the other launchers
        job_dir = tmp_path / "sweep" / str(job)
        assert (job_dir / "train.log").stat().st_size > 0 and (job_dir / ".hydra" / "config.yaml").exists()
    assert list((tmp_path / "cwd").iterdir()) == []  # each training claimed an empty outputs/<date>/<time> here


@pytest.mark.slow
def test_cpu_pool_builds_a_shared_adjustment_once_and_counts_recorded_failures(tmp_path, e5_dir):
    """gpus=[] n_jobs=2: two jobs needing the same adjusted model start
    together (order=given); one builds it, the other waits and reuses it.  Two
    jobs fail inside xlt (missing data: results.json status failed, process
    exit 0), and the pool still reports them."""
    result = sweep(tmp_path, e5_dir, "mode=adjusted", "corpus=demo", "corpus.size=60", "corpus.heldout=10",
                   f"corpus.path='{REPO}/data/demo/parallel/en-{{lang}}.tsv'",
                   f"data.root={REPO / 'data' / 'demo'},{tmp_path / 'missing'}", "task.lr=2e-5,3e-5",
                   "hydra.launcher.gpus=[]", "hydra.launcher.n_jobs=2", "hydra.launcher.order=given")
    assert result.returncode == 1 and "2 of 4 jobs failed" in result.stderr, result.stderr[-2000:]
    assert statuses(tmp_path) == {0: "ok", 1: "ok", 2: "failed", 3: "failed"}
    runs = probe_runs(tmp_path)
    assert {run["cuda"] for run in runs.values()} == {""}  # CPU jobs see no GPU
    assert max_running({job: runs[job] for job in (0, 1)}) == 2  # the two users of the model ran together
    adjusted = {p.name for p in (tmp_path / "cache" / "adjusted").iterdir()} - {"checksums.json"}  # the checksum index
    assert len(adjusted) == 1 and not any(name.endswith((".lock", ".tmp")) for name in adjusted), adjusted  # one model, no leftovers
    logs = [(tmp_path / "sweep" / str(job) / "train.log").read_text() for job in (0, 1)]
    assert sum("adjustment evidence" in log for log in logs) == 1  # built by one job only


@pytest.mark.slow
def test_ctrl_c_stops_every_job(tmp_path, e5_dir):
    """SIGINT to the launcher: both running jobs (and their process groups)
    are gone, the sweep exits 130 and the last job never starts."""
    proc = sweep(tmp_path, e5_dir, "seed=1,2,3", "task.train_limit=256", "hydra.launcher.gpus=[0,1]", wait=False)
    deadline = time.time() + 300
    while len(probe_runs(tmp_path)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    pids = [run["pid"] for run in probe_runs(tmp_path).values()]
    assert len(pids) == 2, proc.communicate()[1][-2000:]
    # A job records its stop once it handles signals, from its first log line on
    # (a Ctrl-C before that, while it imports, only reaches the launcher's summary):
    # under load the second job can be a few seconds behind the probe's start.
    logs = [tmp_path / "sweep" / str(job) / "train.log" for job in (0, 1)]
    while (not all(log.exists() and "code: xlt " in log.read_text() for log in logs) and time.time() < deadline
           and proc.poll() is None):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted: stopped 2 running jobs; 1 jobs not started (SIGINT; stopped: #0 (" in stdout  # Hydra logs to stdout
    assert "; not started: #2)" in stdout
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert sorted(probe_runs(tmp_path)) == [0, 1]
    records = {job: json.loads((tmp_path / "sweep" / str(job) / "results.json").read_text()) for job in (0, 1)}
    assert all(r["status"] == "stopped" and r["error"].endswith("by SIGINT") for r in records.values()), records


def test_more_jobs_than_gpus_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "xlt", "-m", "model=tiny", "hydra/launcher=local_gpus",
                             "hydra.launcher.gpus=[0,1]", "hydra.launcher.n_jobs=3", f"hydra.sweep.dir={tmp_path}"],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "0,1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "xlt: error: hydra.launcher.n_jobs=3 but only 2 GPUs (0,1): one job per GPU; "
        "use hydra.launcher.gpus=[] for CPU jobs")


def test_slots_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,GPU-5f1c")
    assert detect_gpus() == ["2", "3", "GPU-5f1c"]
    assert plan_slots(None, None) == ["2", "3", "GPU-5f1c"]
    assert plan_slots(None, 2) == ["2", "3"]
    assert plan_slots([], 3) == [None, None, None]  # CPU
    assert plan_slots([], None) == [None]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert plan_slots(None, None) == [None]


def test_gpus_must_lie_inside_cuda_visible_devices(monkeypatch, capsys):
    """Under CUDA_VISIBLE_DEVICES=4,5 (e.g. a Slurm allocation), gpus=[0,1]
    would put jobs on other people's GPUs: one line, exit 2."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert plan_slots(["5"], None) == ["5"]
    with pytest.raises(SystemExit) as stop:
        plan_slots(["0", "5"], None)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == ("xlt: error: hydra.launcher.gpus: 0 not in CUDA_VISIBLE_DEVICES=4,5 "
                                               "(the GPUs this sweep may use; give ids from that list)")


def test_gpus_must_be_on_this_machine(monkeypatch, capsys):
    """Without CUDA_VISIBLE_DEVICES, gpus=[5] on a machine without GPU 5 was
    accepted: the jobs were logged "GPU 5" and ran on CPU.  The launcher runs
    its jobs here, so it checks them against the GPUs torch counts (two,
    simulated)."""
    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert plan_slots(None, None) == ["0", "1"] and plan_slots(["1"], None) == ["1"]
    with pytest.raises(SystemExit) as stop:
        plan_slots(["1", "5"], None)
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("xlt: error: hydra.launcher.gpus: 5 not a GPU of this machine (GPUs here, as "
                                       "torch counts them: 0,1; hydra.launcher.gpus=[] runs the jobs on CPU; "
                                       "a GPU UUID or MIG name: list it in CUDA_VISIBLE_DEVICES)\n")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(SystemExit):
        plan_slots(["0"], None)
    assert "0 not a GPU of this machine (GPUs here, as torch counts them: none;" in capsys.readouterr().err
    assert plan_slots([], 2) == [None, None]


@pytest.mark.parametrize("setting, message", [
    ("hydra.launcher.gpus=[99]", "hydra.launcher.gpus: 99 not a GPU of this machine (GPUs here, as torch counts "),
    ("hydra.launcher.n_jobs=0", "hydra.launcher.n_jobs must be >= 1, got 0"),
    ("hydra.launcher.order=foo", "hydra.launcher.order must be shared_first or given, got 'foo'"),
    ("hydra.launcher.threads_per_job=-1", "hydra.launcher.threads_per_job must be >= 1"),
])
@pytest.mark.parametrize("sweep_dir", [True, False])
def test_a_rejected_launcher_setting_writes_nothing(tmp_path, setting, message, sweep_dir):
    """One line, exit 2, and no sweep folder: Hydra claimed the default one
    (and wrote multirun.yaml into a given one) before the launcher saw its
    settings.  The GPUs are checked where the jobs would run: here, with
    no CUDA_VISIBLE_DEVICES, against what torch counts."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    given = [f"hydra.sweep.dir={tmp_path / 'sweep'}"] if sweep_dir else []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    no_data = f"data.root={tmp_path / 'no-data'}"  # a job that does start fails at once: no training
    result = subprocess.run([sys.executable, "-m", "xlt", "-m", "model=tiny", no_data, "hydra/launcher=local_gpus",
                             setting, *given], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(f"xlt: error: {message}") and result.stderr.count("\n") == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd"] and list(cwd.iterdir()) == []


def test_builders_of_distinct_artifacts_go_first():
    """(seed 1, lr a), (seed 1, lr b), (seed 2, lr a), (seed 2, lr b): the two
    adjustments are built side by side, then their reusers run."""
    def job(idx, *shared):
        return Job(idx, [], OmegaConf.create(), Path(str(idx)), frozenset(shared))

    jobs = [job(0, "adj1", "ck0"), job(1, "adj1", "ck1"), job(2, "adj2", "ck2"), job(3, "adj2", "ck3"), job(4, "ck4")]
    assert [j.idx for j in order_shared_first(jobs)] == [0, 2, 4, 1, 3]


def sweep_config(*overrides: str):
    """A job's config as the launcher gets it (with the ``hydra`` node)."""
    from hydra import compose, initialize_config_dir

    from xlt.config import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", ["model=tiny", "hydra/launcher=local_gpus", *overrides], return_hydra_config=True)


def test_shared_artifacts_of_real_job_configs(tmp_path):
    """Same seed, other fine-tuning lr: one adjusted model, two checkpoints;
    original mode in two languages: one checkpoint (English fine-tuning)."""
    def shared(*overrides):
        return shared_artifacts(sweep_config(f"paths.cache_dir={tmp_path}", *overrides), tmp_path / "job")

    a, b = shared("mode=adjusted", "seed=1", "task.lr=2e-5"), shared("mode=adjusted", "seed=1", "task.lr=3e-5")
    other_seed = shared("mode=adjusted", "seed=2", "task.lr=2e-5")
    assert len(a) == len(b) == 2 and len(a & b) == 1 and "adjusted" in next(iter(a & b))
    assert not a & other_seed
    ru, hi = shared("mode=original", "lang=ru"), shared("mode=original", "lang=hi")
    assert ru == hi and len(ru) == 1
