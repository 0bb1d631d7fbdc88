"""Jobs started in the same second get their own run folders (xlt.rundir)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xlt.rundir import fresh_dir

REPO = Path(__file__).resolve().parents[1]

# xlt with Hydra's ${now:...} frozen: every job "starts" at 12:00:00.
FROZEN_NOW = """
import datetime, sys
import hydra.core.utils as hydra_utils

class Fixed(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2026, 12, 6, 12, 0, 0)

hydra_utils.datetime = Fixed
from xlt.cli import main
sys.argv = ["xlt", *sys.argv[1:]]
main()
"""


def test_fresh_dir_claims_a_new_folder(tmp_path):
    base = tmp_path / "outputs" / "12-00-00"
    assert fresh_dir(str(base)) == str(base) and base.is_dir()
    assert fresh_dir(str(base)) == f"{base}-2"
    assert fresh_dir(str(base)) == f"{base}-3"


@pytest.mark.slow
def test_two_jobs_started_in_the_same_second_keep_their_results(tmp_path):
    """``xlt lang=ru & xlt lang=es`` in one second used to share one folder
    (one results.json lost, both exit 0)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    jobs = [subprocess.Popen([sys.executable, "-c", FROZEN_NOW, "model=tiny", f"lang={lang}", "data=demo",
                              f"data.root={tmp_path / 'no-data'}", f"paths.cache_dir={tmp_path / 'cache'}"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for lang in ("ru", "es")]
    for job in jobs:
        job.communicate(timeout=300)
    folders = sorted(p.name for p in (tmp_path / "outputs" / "2026-12-06").iterdir())
    assert folders == ["12-00-00", "12-00-00-2"]
    langs = sorted(json.loads((tmp_path / "outputs" / "2026-12-06" / f / "results.json").read_text())["config"]["lang"]
                   for f in folders)
    assert langs == ["es", "ru"]  # each job's own record (here: its failure, no data at data.root)
