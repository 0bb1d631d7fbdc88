"""A rerun into a job folder replaces what the earlier run left there: its
results.json (also when the rerun fails) and its ``checkpoints`` link."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xlt.contract import compose
from xlt.stages.job import link_checkpoints

REPO = Path(__file__).resolve().parents[1]
SMALL = ["model=tiny", "data=demo", "task.train_limit=64", "task.eval_limit=12", "task.epochs=2",
         "trainer.enable_progress_bar=false"]


def xlt(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLT_CACHE_DIR": str(REPO / ".cache" / "xlt-test")}
    return subprocess.run([sys.executable, "-m", "xlt", *args], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.slow
def test_a_failed_rerun_replaces_the_earlier_ok_result(tmp_path: Path) -> None:
    """The same folder, a job that finished and then one that fails (its data
    folder is empty): results.json says failed, with the second run's error,
    and xlt-report counts the job as failed, not as the first run's ok."""
    from xlt import report

    run = tmp_path / "run"
    first = xlt(*SMALL, f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads((run / "results.json").read_text())["status"] == "ok"
    empty = tmp_path / "empty"
    empty.mkdir()
    second = xlt(*SMALL, f"data.root={empty}", f"hydra.run.dir={run}")
    assert second.returncode == 2
    error = second.stderr.strip().removeprefix("xlt: error: ")
    assert str(empty) in error
    saved = json.loads((run / "results.json").read_text())
    assert saved["status"] == "failed" and saved["error"] == error and "metrics" not in saved
    assert saved["config"]["resolved"]["data"]["root"] == str(empty)
    assert report.main([str(run), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "1 jobs read: 0 ok, 1 failed" in md and "## Failed jobs (1)" in md and error in md


def test_the_checkpoints_link_follows_the_rerun(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A rerun with another config points ``<run>/checkpoints`` at its own
    checkpoint folder (it used to keep the earlier run's); a folder the user
    put there is left alone, with one warning."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    cfg = compose(["model=tiny", f"paths.output_dir={out}", f"paths.cache_dir={cache}"])
    link = out / "checkpoints"
    for target in (cache / "first", cache / "second", cache / "first"):
        link_checkpoints(out, target, cfg)
        assert link.is_symlink() and link.resolve() == target.resolve()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]  # no temporary link left
    link.unlink()
    link.mkdir()
    (link / "mine.txt").write_text("kept")
    with caplog.at_level(logging.WARNING):
        link_checkpoints(out, cache / "second", cfg)
    assert not link.is_symlink() and (link / "mine.txt").read_text() == "kept"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{link} is not a symlink: left as it is (this run's checkpoints are in {(cache / 'second').resolve()})"]
