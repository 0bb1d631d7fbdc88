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


def test_a_dry_run_in_the_same_process_leaves_no_multirun_behind(monkeypatch, capsys, tmp_path):
    """``xlt --cfg job`` run in-process (a notebook, a test) leaves Hydra's
    config set with ``mode: None``; the next job of that process read
    ``mode.name`` and crashed at its first fit (``'NoneType' object has no
    attribute 'name'``: 13 jobs of the full suite)."""
    from hydra.core.hydra_config import HydraConfig

    from xlt import cli
    from xlt.rundir import in_multirun
    from xlt.stages.trainer import ddp_job

    monkeypatch.setattr(sys, "argv", ["xlt", "model=tiny", "--cfg", "job"])
    try:
        cli.main()  # prints the config and returns
        assert "model:" in capsys.readouterr().out
        assert HydraConfig.initialized() and HydraConfig.get().mode is None
        assert not in_multirun()
        argv = list(sys.argv)
        with ddp_job(tmp_path):
            assert sys.argv == argv  # a single job keeps its command line
    finally:
        HydraConfig.instance().cfg = None


def test_a_training_job_of_a_sweep_claims_no_run_folder(monkeypatch, tmp_path):
    """Every fit of a sweep's job saved ``hydra.run.dir`` around Lightning's
    DDP launch by reading it, which resolved ``${xlt_fresh_dir:outputs/...}``
    and created an empty ``outputs/<date>/<time>`` in the working directory
    (``hydra.sweep.dir`` set or not).  Kept as written, nothing is created,
    and the value is put back as it was."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict, read_write

    from xlt import rundir
    from xlt.contract import _composed
    from xlt.stages.trainer import ddp_job

    rundir.register()
    monkeypatch.chdir(tmp_path)
    cfg = _composed(["model=tiny", f"hydra.sweep.dir={tmp_path / 'sweep'}"], return_hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    written = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    assert written.startswith("${xlt_fresh_dir:outputs/")
    try:
        HydraConfig.instance().set_config(cfg)
        with ddp_job(tmp_path / "sweep" / "0"):
            assert HydraConfig.get().run.dir == str(tmp_path / "sweep" / "0")  # where Lightning's DDP ranks run
        assert OmegaConf.to_container(HydraConfig.get().run, resolve=False)["dir"] == written
        assert list(tmp_path.iterdir()) == []
    finally:
        HydraConfig.instance().cfg = None
