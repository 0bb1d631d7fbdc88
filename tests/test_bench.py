"""``make bench`` keeps running: a smoke run of bench/run.py on the tiny
model (sections 1 and 3, two steps each).  It asserts what the bench
computes, never how fast: speed lives in bench/results.json, measured side
by side in one run (bench/README.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~20 s
def test_the_bench_runs_and_checks_its_own_loss(tmp_path, tiny_cache):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "bench/run.py", "--model", "tiny", "--tasks", "nli", "--steps", "2", "--warmup", "1",
         "--cache-task", "none", "--adjust-steps", "2", "--adjust-warmup", "1", "--peer-steps", "0", "--eval-rounds", "0",
         "--align-sizes", "0", "--train-sizes", "0", "--qa-sizes", "0", "--pool-lines", "0", "--examples-sizes", "0",
         "--cache-sentences", "0", "--report-jobs", "0", "--threads", "1",
         "--cache-dir", str(tiny_cache), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["overhead"]["nli"]["variants"]) == {"plain", "continual"}
    adjust = results["adjust"]
    assert adjust["loss_check"]["total"]["rel_diff"] < 1e-3  # xlt's loss = the naive reference's
    assert adjust["naive_padding"] >= 128  # whole sentences fit the naive reference's fixed padding


@pytest.mark.slow  # ~2 min
def test_the_scale_sections_run_and_compare_equal_work(tmp_path):
    """Sections 8-11 at small sizes: each pair of variants computed the same
    (the bench stops otherwise), and the continual cache holds what the job's
    log line says."""
    out = tmp_path / "scale.json"
    run = subprocess.run(
        [sys.executable, "bench/scale.py", "--pool-lines", "20000", "--pool-size", "2000", "--examples-sizes", "500",
         "--cache-sentences", "64", "--report-jobs", "3", "--scale-rounds", "1", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    pool = results["pool"]
    assert pool["read"]["lines"] == 20000 and pool["read"]["pool"] == 2500
    assert {r["pairs"] for v in ("xlt", "list") for r in pool["job"]["runs"][v]} == {2500}
    assert results["examples"]["500"]["runs"]["xlt"][0]["examples"] == 500
    cache = results["cache"]
    assert cache["sentences"] == 64 and cache["tensor_bytes"] == cache["logged_bytes"]
    assert results["report"]["jobs"] == 3 and set(results["report"]["median"]) == {"tests", "no tests"}
