"""DDP on CPU (gloo, 2 processes, tiny model): no deadlock on the training
lock, a multirun's workers run their own job only, one results.json per job,
the effective batch stays task.batch_size, the curve is every process's,
and a non-finite loss on one process stops them all with one line."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "data=demo", "task.train_limit=64", "task.eval_limit=12", "task.epochs=2",
        "trainer.enable_progress_bar=false"]
DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
           "trainer.num_workers=0"]

pytestmark = pytest.mark.slow


def xlt(tmp_path: Path, *args: str, flags: tuple[str, ...] = (), env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLT_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "xlt", *flags, *TINY, *DDP_CPU, *args], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=420)  # a deadlock fails here instead of hanging


def steps(tmp_path: Path) -> list[int]:
    done = sorted((tmp_path / "cache" / "checkpoints").glob("*/done.json"))
    return [json.loads(p.read_text())["global_step"] for p in done]


def test_ddp_single_run(tmp_path):
    result = xlt(tmp_path, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["status"] == "ok" and len(saved["metrics"]) == 4  # xnli, xnli_mixed and its two halves
    # 64 examples, effective batch 32 = 2 processes x 16: 2 steps per epoch, as on one device.
    assert saved["training"]["steps"] == 4 == steps(tmp_path)[0]
    assert (saved["training"]["processes"], saved["training"]["micro_batch"]) == (2, 16)
    assert "MEMBER: 2/2" in result.stdout + result.stderr  # Lightning's rendezvous of both ranks
    # The curve survives rank 0's evaluation Trainer, and the evaluation metrics follow it.
    with (tmp_path / "run" / "logs" / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["step"] for row in rows if row["train/task_loss"]] == ["3"]
    assert float(rows[-1]["eval/xnli.ru/accuracy"]) == pytest.approx(saved["metrics"]["xnli.ru"]["accuracy"])


def test_ddp_multirun_runs_each_job_once(tmp_path):
    sweep = tmp_path / "sweep"
    result = xlt(tmp_path, "mode=original", "seed=1,2", f"hydra.sweep.dir={sweep}", flags=("-m",))
    assert result.returncode == 0, result.stderr[-3000:]
    results = sorted(sweep.glob("*/results.json"))
    assert [p.parent.name for p in results] == ["0", "1"]
    assert sorted(json.loads(p.read_text())["config"]["seed"] for p in results) == [1, 2]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]  # workers did not sweep again
    assert steps(tmp_path) == [4, 4]
    assert all(json.loads(p.read_text())["training"]["processes"] == 2 for p in results)
    assert not (REPO / "multirun" / sweep.name).exists()


def test_the_curve_is_the_mean_over_processes_and_micro_batches(tmp_path):
    """train/task_loss at a logged step is the mean over both processes and
    both micro-batches of the step (the loss it optimized), in the CSV and in
    the progress line; it was rank 0's last micro-batch."""
    run, probe = tmp_path / "run", tmp_path / "losses"
    result = xlt(tmp_path, f"hydra.run.dir={run}", "trainer.accumulate_grad_batches=2", "trainer.log_every_n_steps=3",
                 "trainer.enable_progress_bar=true", f"trainer.callbacks=[{{_target_: tests.ddp_probes.RecordLosses, folder: '{probe}'}}]",
                 env={"XLT_PROGRESS_S": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["training"]["micro_batch"] == 8  # 32 = 2 processes x 2 x 8
    step_losses: dict[int, list[float]] = {}  # optimizer step (from 1) -> its 4 micro-batch losses
    for rank in (0, 1):
        for line in (probe / f"losses-rank{rank}.jsonl").read_text().splitlines():
            record = json.loads(line)
            step_losses.setdefault(record["epoch"] * 2 + record["batch"] // 2 + 1, []).append(record["loss"])
    assert sorted(step_losses) == [1, 2, 3, 4] and all(len(v) == 4 for v in step_losses.values())
    with (run / "logs" / "metrics.csv").open(newline="") as handle:
        curve = {int(row["step"]): float(row["train/task_loss"]) for row in csv.DictReader(handle) if row["train/task_loss"]}
    assert sorted(curve) == [2, 3]  # step 3 (every 3 steps) and the last, 4; Lightning's column is step - 1
    for step in (3, 4):
        assert curve[step - 1] == pytest.approx(sum(step_losses[step]) / 4, rel=1e-5)
        assert curve[step - 1] != pytest.approx(step_losses[step][1], rel=1e-3)  # not one process's last micro-batch
    shown = re.search(r"fine-tuning: 3/4 steps \(75%\), .*, loss (\d\.\d{4})", result.stdout + result.stderr)
    assert shown and float(shown.group(1)) == pytest.approx(curve[2], abs=5e-5)


@pytest.mark.parametrize("flags", [(), ("-m",)], ids=["run", "multirun"])
def test_a_non_finite_loss_on_one_process_stops_every_process_with_one_line(tmp_path, flags):
    """Rank 1's loss is NaN at step 2: every process stops with the same line
    (rank 0 crashed in its next collective with a gloo traceback, which under
    -m replaced rank 1's line in results.json; on NCCL it would have hung)."""
    out = tmp_path / "out"
    where = f"hydra.sweep.dir={out}" if flags else f"hydra.run.dir={out}"
    result = xlt(tmp_path, where, "task.train_limit=128", "task.batch_size=8", "trainer.checkpoint_every_n_steps=1",
                 "trainer.callbacks=[{_target_: tests.ddp_probes.NanOnRank, rank: 1, step: 2}]", flags=flags)
    line = ("fine-tuning: non-finite training loss at optimizer step 2 (epoch 0, batch 1) on rank 1 of 2 processes: "
            "loss=nan; lower the learning rate or check the loss weights (continual.alpha, continual.reg_weight, "
            "adjustment.reg_weight)")
    assert result.returncode == (1 if flags else 2), result.stderr[-3000:]
    assert "Connection closed" not in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.count(f"xlt: error: {line}") == (1 if flags else 2)  # the job's processes (-m: rank 1 only)
    record = json.loads((out / ("0" if flags else "") / "results.json").read_text())
    assert (record["status"], record["error"]) == ("failed", line)
    saved = next((tmp_path / "cache" / "checkpoints").glob("*/last.ckpt"))
    assert torch.load(saved, weights_only=True)["global_step"] == 1  # the last finite state: step 2 was not saved
