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
import torch

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


def adjusted_folder(cache: Path) -> Path:
    (folder,) = [p for p in (cache / "adjusted").iterdir() if p.is_dir() and not p.name.endswith(".resume")]
    return folder


def same_weights(a: Path, b: Path) -> list[str]:
    """The tensors of two saved encoders that differ (none: bit-identical)."""
    from safetensors.torch import load_file

    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert first.keys() == second.keys()
    return [k for k in first if not torch.equal(first[k], second[k])]


def adjust(tmp_path: Path, cache: str, *args: str, step: int | None = None, stage: str = "adjustment",
           signame: str = "SIGTERM") -> subprocess.CompletedProcess:
    """``xlt-adjust`` on the demo corpus (10 steps, a checkpoint every 4);
    with ``step``, signalled after that adjustment step."""
    overrides = ["command=adjust", *ADJUSTED, "trainer.checkpoint_every_n_steps=4", f"hydra.run.dir={tmp_path / cache}-run"]
    env = {**os.environ, "XLT_TEST_SIGNAL": signame, "XLT_TEST_STAGE": stage, "XLT_CACHE_DIR": str(tmp_path / cache)}
    run = [str(REPO / "tests" / "kill_at_step.py"), str(step)] if step is not None else ["-m", "xlt"]
    return subprocess.run([sys.executable, *run, *SMALL, *overrides, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The adjusted encoder of an uninterrupted ``xlt-adjust`` run."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    done = adjust(tmp_path, "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    return adjusted_folder(tmp_path / "cache")


@pytest.mark.slow
@pytest.mark.parametrize("signame, step, resumed", [("SIGTERM", 2, 2), ("SIGKILL", 6, 4)], ids=["sigterm", "sigkill"])
def test_a_stopped_adjustment_resumes_to_the_uninterrupted_weights(tmp_path, uninterrupted, signame, step, resumed):
    """SIGTERM at adjustment step 2 writes the step-2 checkpoint and exits 143;
    SIGKILL at step 6 leaves the step-4 one.  Either way no adjusted model
    is kept, and the rerun resumes there (not from step 0: the log and the
    evidence say so), mid-epoch, and ends bit-identical to an uninterrupted
    run, with the same probe trajectory and curve.  Before, a stop anywhere
    in the adjustment lost all of it (an hour of mBERT at 250K pairs)."""
    stopped = adjust(tmp_path, "cache", step=step, signame=signame)
    assert stopped.returncode == (143 if signame == "SIGTERM" else -9), stopped.stderr[-3000:]
    adjusted = tmp_path / "cache" / "adjusted"
    # No adjusted model: only its checkpoints (and, after SIGKILL, the killed builder's temporary folder).
    (checkpoints,) = [p for p in adjusted.iterdir() if p.is_dir() and ".tmp" not in p.name]
    assert checkpoints.name == uninterrupted.name + ".resume"
    saved = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == resumed and "optimizer_states" in saved
    if signame == "SIGTERM":
        assert (f"xlt: error: stopped at adjustment by SIGTERM (checkpoint at step 2 in {checkpoints / 'last.ckpt'})"
                in stopped.stderr)

    rerun = adjust(tmp_path, "cache")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"adjustment: resumed from step {resumed}" in (tmp_path / "cache-run" / "train.log").read_text()
    folder = adjusted_folder(tmp_path / "cache")
    assert not checkpoints.exists()  # gone once the adjusted model is in place
    assert same_weights(folder, uninterrupted) == []
    evidence = json.loads((folder / "evidence.json").read_text())
    reference = json.loads((uninterrupted / "evidence.json").read_text())
    assert evidence["resumed_from_step"] == resumed and reference["resumed_from_step"] == 0
    assert evidence["steps"] == reference["steps"] == 10
    assert evidence["during"] == reference["during"] and len(evidence["during"]) >= 2  # probes before and after the stop
    assert evidence["adjusted"] == reference["adjusted"]
    # The curve survives the stop: the rows before it, then the resumed steps, once each.
    assert (folder / "logs" / "metrics.csv").read_text() == (uninterrupted / "logs" / "metrics.csv").read_text()


@pytest.mark.slow
def test_an_adjustment_stopped_after_its_training_keeps_the_trained_weights(tmp_path, uninterrupted):
    """A stop after the last step, while the held-out distances are measured
    and the encoder saved (study 2 lost a 12-minute adjustment 34 s after
    its last step): the finished weights stay in the checkpoint folder and
    the rerun measures and saves them without training again."""
    stopped = adjust(tmp_path, "cache", step=0, stage="adjustment-done")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert ("stopped at adjustment by SIGTERM (the adjustment had finished training; a rerun measures and saves it)"
            in stopped.stderr)
    rerun = adjust(tmp_path, "cache")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (tmp_path / "cache-run" / "train.log").read_text()
    assert "adjustment: its training had finished (10 steps" in log and "adjustment: resumed" not in log
    folder = adjusted_folder(tmp_path / "cache")
    assert same_weights(folder, uninterrupted) == []
    evidence = json.loads((folder / "evidence.json").read_text())
    assert evidence["resumed_from_step"] == evidence["steps"] == 10
    assert evidence["during"] == json.loads((uninterrupted / "evidence.json").read_text())["during"]


@pytest.mark.slow
def test_a_stopped_sweep_names_its_lost_jobs_and_exits_non_zero(tmp_path):
    """SIGTERM during job 0's adjustment used to end ``xlt -m`` with 0 and
    job 1 never run: now job 0 says where it stopped, job 1 that it was not
    run, and the sweep exits 143 naming both."""
    sweep = tmp_path / "sweep"
    stopped = signalled(tmp_path, "adjustment", "SIGTERM", "-m", *ADJUSTED, "seed=1,2", f"hydra.sweep.dir={sweep}")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    (checkpoint,) = (tmp_path / "cache" / "adjusted").glob("*.resume/last.ckpt")  # job 0's adjustment resumes from it
    stop = f"stopped at adjustment by SIGTERM (checkpoint at step 2 in {checkpoint})"
    assert last == (f"xlt: error: the sweep was {stop}: 2 job(s) did not finish: "
                    f"{sweep}/0 ({stop}); {sweep}/1 (not run: the sweep was {stop})")
    records = [json.loads((sweep / job / "results.json").read_text()) for job in ("0", "1")]
    assert [r["status"] for r in records] == ["stopped", "stopped"]
    assert [r["config"]["seed"] for r in records] == [1, 2]
    report = subprocess.run([sys.executable, "-c", "from xlt.report import main; raise SystemExit(main())", str(sweep)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert "not run: the sweep was stopped" in report.stdout  # listed with the failed jobs, not dropped
