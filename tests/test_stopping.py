"""A stopped job never says "ok": SIGTERM, SIGINT or SIGUSR2 at any stage is
recorded ("stopped at <stage>") and the exit status is 128 + signal; a sweep
that lost jobs to a signal names them (xlt.stopping)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from xlt import stopping

REPO = Path(__file__).resolve().parents[1]
SMALL = ["model=tiny", "data=demo", "task.train_limit=32", "task.eval_limit=8", "task.epochs=1", "task.batch_size=8",
         "trainer.enable_progress_bar=false"]
ADJUSTED = ["mode=adjusted", "corpus=demo", "corpus.size=300", "corpus.heldout=10"]  # 10 adjustment steps


def test_outside_fine_tuning_a_signal_stops_at_once():
    with stopping.handling_signals(), stopping.stage("alignment"):
        with pytest.raises(stopping.Stopped) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            spin()
    assert stop.value.message == "stopped at alignment by SIGTERM" and stop.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the job


def spin() -> None:
    """Give a pending signal's handler the next bytecode boundary to run at."""
    for _ in range(10**5):
        pass


def test_during_fine_tuning_the_stop_waits_for_the_step_boundary(monkeypatch):
    """The first signal is noted (StopSignal checkpoints, then stops); a
    second one stops at once; one noted at the very end stops the job after
    the training is saved."""
    monkeypatch.setattr(stopping, "DUPLICATE_S", 0.0)  # the second signal is a second request
    with stopping.handling_signals(), stopping.stage("fine-tuning"):
        with pytest.raises(stopping.Stopped, match="^stopped at fine-tuning by SIGINT$"):
            with stopping.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                spin()
                assert stopping.requested() == signal.SIGINT  # noted, not raised
                os.kill(os.getpid(), signal.SIGINT)
                spin()
    with stopping.handling_signals(), stopping.stage("fine-tuning"):  # the next job starts clean
        assert stopping.requested() is None
        with pytest.raises(stopping.Stopped, match=r"by SIGUSR2 \(training had finished"):
            with stopping.deferred():
                os.kill(os.getpid(), signal.SIGUSR2)
                spin()


def test_one_stop_delivered_twice_still_waits_for_the_step_boundary():
    """A scheduler's SIGTERM and the launcher's forwarded SIGINT (or a dying
    launcher's PDEATHSIG) arrive together: one stop, not "stop at once"."""
    with stopping.handling_signals(), stopping.stage("fine-tuning"):
        with pytest.raises(stopping.Stopped, match=r"by SIGTERM \(training had finished"):
            with stopping.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                spin()
                os.kill(os.getpid(), signal.SIGINT)
                spin()
                assert stopping.requested() == signal.SIGTERM  # noted, not raised: the step boundary stops it


def test_sigusr2_is_recorded_then_handed_to_submitit(tmp_path, monkeypatch):
    """submitit's SIGUSR2 handler (requeue) runs after results.json says stopped."""
    from omegaconf import OmegaConf

    import xlt.cli as cli
    from xlt.contract import compose as compose_config

    cfg = compose_config([*SMALL, f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"])
    OmegaConf.resolve(cfg)
    seen = []

    def submitit_requeue(signum, frame):
        seen.append(json.loads((tmp_path / "results.json").read_text()))
        raise SystemExit(-1)  # what submitit does after `scontrol requeue`

    def evaluation(cfg):
        with stopping.stage("evaluation"):
            os.kill(os.getpid(), signal.SIGUSR2)
            spin()

    monkeypatch.setattr(cli, "run_command", evaluation)
    previous = signal.signal(signal.SIGUSR2, submitit_requeue)
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.dispatch(cfg)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert exit_.value.code == -1
    assert seen and seen[0]["status"] == "stopped" and seen[0]["error"] == "stopped at evaluation by SIGUSR2"
    assert seen[0]["stage"] == "evaluation"


def signalled(tmp_path: Path, stage: str, signame: str, *args: str, step: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLT_TEST_SIGNAL": signame, "XLT_TEST_STAGE": stage, "XLT_CACHE_DIR": str(tmp_path / "cache")}
    flags = [a for a in args if a == "-m"]  # Hydra takes its flags before the overrides
    overrides = [a for a in args if a != "-m"]
    return subprocess.run([sys.executable, str(REPO / "tests" / "kill_at_step.py"), str(step), *flags, *SMALL, *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("stage, signame, extra", [
    ("alignment", "SIGTERM", ADJUSTED),
    ("evaluation", "SIGUSR2", []),
    ("evaluation", "SIGINT", []),
], ids=["alignment-SIGTERM", "evaluation-SIGUSR2", "evaluation-SIGINT"])
def test_a_signal_at_any_stage_is_recorded_and_exits_non_zero(tmp_path, stage, signame, extra):
    """Lightning turns SIGTERM into exit 0 and keeps evaluating; SIGINT became
    exit 1 or nothing: every stop is now 128 + signal, recorded in results.json."""
    run = tmp_path / "run"
    stopped = signalled(tmp_path, stage, signame, *extra, f"hydra.run.dir={run}")
    code = 128 + getattr(signal, signame)
    assert stopped.returncode == code, stopped.stderr[-3000:]
    message = f"stopped at {stage} by {signame}"
    assert stopped.stderr.strip().splitlines()[-1].startswith(f"xlt: error: {message}; rerun the same command")
    record = json.loads((run / "results.json").read_text())
    assert record["status"] == "stopped" and record["error"] == message and "metrics" not in record
    assert not (run / "predictions").exists() or not list((run / "predictions").iterdir()) or stage == "evaluation"


@pytest.mark.slow
def test_xlt_adjust_stopped_keeps_no_artifact(tmp_path):
    """``xlt-adjust`` (SIGTERM during the adjustment's training) exits 143
    and leaves no adjusted model: the next run builds it."""
    stopped = signalled(tmp_path, "adjustment", "SIGTERM", "command=adjust", *ADJUSTED, f"hydra.run.dir={tmp_path / 'run'}")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "xlt: error: stopped at adjustment by SIGTERM" in stopped.stderr
    assert [p.name for p in (tmp_path / "cache" / "adjusted").iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.slow
def test_a_stopped_sweep_names_its_lost_jobs_and_exits_non_zero(tmp_path):
    """SIGTERM during job 0's adjustment used to end ``xlt -m`` with 0 and
    job 1 never run: now job 0 says where it stopped, job 1 that it was not
    run, and the sweep exits 143 naming both."""
    sweep = tmp_path / "sweep"
    stopped = signalled(tmp_path, "adjustment", "SIGTERM", "-m", *ADJUSTED, "seed=1,2", f"hydra.sweep.dir={sweep}")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert last == (f"xlt: error: the sweep was stopped at adjustment by SIGTERM: 2 job(s) did not finish: "
                    f"{sweep}/0 (stopped at adjustment by SIGTERM); "
                    f"{sweep}/1 (not run: the sweep was stopped at adjustment by SIGTERM)")
    records = [json.loads((sweep / job / "results.json").read_text()) for job in ("0", "1")]
    assert [r["status"] for r in records] == ["stopped", "stopped"]
    assert [r["config"]["seed"] for r in records] == [1, 2]
    report = subprocess.run([sys.executable, "-c", "from xlt.report import main; raise SystemExit(main())", str(sweep)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert "not run: the sweep was stopped" in report.stdout  # listed with the failed jobs, not dropped
