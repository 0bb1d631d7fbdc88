"""xlt.progress: plain progress lines outside a terminal."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from xlt.progress import Progress, duration, progress


def test_lines_outside_a_terminal_have_count_rate_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="xlt.progress")
    items = list(progress(range(5), "reading", unit="pairs", interval=0.0))
    assert items == [0, 1, 2, 3, 4]
    lines = [r.getMessage() for r in caplog.records if r.name == "xlt.progress"]
    assert len(lines) == 6  # one per item at interval 0, plus the closing line
    assert lines[1].startswith("reading: 2/5 pairs (40%), ") and "pairs/s" in lines[1] and "ETA" in lines[1]
    assert lines[-1].startswith("reading: 5/5 pairs (100%)") and "took" in lines[-1]


def test_no_line_before_the_interval_and_extra_is_appended(caplog):
    caplog.set_level(logging.INFO, logger="xlt.progress")
    bar = Progress("training", total=100, unit="steps", interval=3600)
    for _ in range(10):
        bar.update(extra="loss 0.5312")
    assert not [r for r in caplog.records if r.name == "xlt.progress"]
    bar.close()
    bar.close()  # once only
    lines = [r.getMessage() for r in caplog.records if r.name == "xlt.progress"]
    assert lines == [lines[0]] and lines[0].startswith("training: 10/100 steps (10%)") and lines[0].endswith("loss 0.5312")


def test_unknown_total_and_durations():
    bar = Progress("tokenising", interval=3600)
    bar.update(7)
    assert bar.line().startswith("tokenising: 7 it, ")
    assert duration(42) == "42s" and duration(185) == "3m05s" and duration(3720) == "1h02m"


@pytest.mark.slow
def test_a_job_outside_a_terminal_logs_progress_lines_while_it_works(tmp_path, tiny_cache):
    """A local_gpus job writes to console.log (no terminal): adjustment,
    fine-tuning and evaluation each log step/total, rate, ETA and the loss
    while they run, not only a bar at the end."""
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "xlt", "-m", "model=tiny", "data=demo", "task.train_limit=96", "task.batch_size=8",
         "task.eval_limit=12", "task.epochs=1", "mode=adjusted", "corpus=demo", "corpus.size=120", "corpus.heldout=30",
         "hydra/launcher=local_gpus", "hydra.launcher.gpus=[]", f"hydra.sweep.dir={sweep}"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600,
        env={**os.environ, "XLT_CACHE_DIR": str(tiny_cache), "XLT_PROGRESS_S": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    console = (sweep / "0" / "console.log").read_text()
    during = re.findall(r"fine-tuning: (\d+)/12 steps \(\d+%\), [\d.]+ steps/s, ETA \S+(, loss \d+\.\d{4})?\n", console)
    assert [int(step) for step, _ in during] == list(range(1, 12))  # a line per step at XLT_PROGRESS_S=0, before the end
    # The loss of the curve's latest logged step (every trainer.log_every_n_steps=10): none before step 10.
    assert [int(step) for step, loss in during if loss] == [10, 11]
    assert re.search(r"fine-tuning: 12/12 steps \(100%\), [\d.]+ steps/s, took \S+", console)
    assert re.search(r"adjustment: 1/4 steps \(25%\), [\d.]+ steps/s, ETA \S+, loss \d", console)
    assert re.search(r"evaluation xnli.ru: 1/1 batches", console)
    assert "\r" not in console  # no redrawn bar
