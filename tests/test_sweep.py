"""The outcome of a multirun (xlt.report.sweep): which of its jobs failed or were killed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import write_composed_job


def test_sweep_problems_names_failed_and_killed_jobs(tmp_path: Path) -> None:
    from xlt.report.sweep import sweep_problems

    root = tmp_path / "sweep"
    write_composed_job(root, "0", ["model=tiny", "lang=ru"], [1, 0])
    write_composed_job(root, "1", ["model=tiny", "lang=hi"], None)
    failed = write_composed_job(root, "2", ["model=tiny", "lang=es"], None)
    (failed / "results.json").write_text(json.dumps({"config": {"seed": 1}, "status": "failed", "error": "boom"}))
    problems = sweep_problems(root, before={})
    assert [p.split(": ", 1)[0] for p in problems] == [str(root / "1"), str(root / "2")]
    assert "killed" in problems[0] and problems[1].endswith("failed: boom")
    assert sweep_problems(root, before={d: (d / ".hydra/config.yaml").stat().st_mtime_ns
                                        for d in root.iterdir()}) == []  # not started by this sweep
