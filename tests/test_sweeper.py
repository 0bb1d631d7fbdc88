"""hydra/sweeper=xlt (the default): a sweep launches each distinct job once.
The paper presets sweep settings the original model never reads (corpus
size, aggregation, tokens); its jobs would repeat per value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from xlt.config import CONF_DIR, register_configs

REPO = Path(__file__).resolve().parents[1]


def planned(*arguments: str) -> tuple[list[list[str]], list]:
    """The jobs (overrides) the sweep of ``xlt -m ARGUMENTS`` launches, and their
    composed configs: the sweeper's own planning, nothing run."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.utils import setup_globals
    from hydra.types import HydraContext, RunMode
    from hydra._internal.callbacks import Callbacks
    from omegaconf import OmegaConf

    register_configs()
    setup_globals()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        from hydra_plugins.xlt_sweeper.sweeper import XltSweeper  # as Hydra's plugin scan left it

        loader = GlobalHydra.instance().config_loader()
        config = loader.load_configuration("config", overrides=list(arguments), run_mode=RunMode.MULTIRUN)
        assert config.hydra.sweeper._target_ == "hydra_plugins.xlt_sweeper.sweeper.XltSweeper"
        sweeper = XltSweeper(max_batch_size=None, params=OmegaConf.to_container(config.hydra.sweeper.params) if config.hydra.sweeper.params else {})
        sweeper.hydra_context, sweeper.config = HydraContext(config_loader=loader, callbacks=Callbacks(config)), config
        parsed = OverridesParser.create(config_loader=loader).parse_overrides([*sweeper._parse_config(), *arguments])
        (jobs,) = sweeper.split_arguments(parsed, None)
        return jobs, [loader.load_sweep_config(config, list(job)) for job in jobs]


@pytest.mark.parametrize("preset, swept, values", [("table5_size", "corpus.size", 5), ("table6_aggregation", "aggregation", 4),
                                                  ("table7_tokens", "tokens", 4)])
def test_paper_table_sweeps_run_the_original_model_once_per_seed(preset, swept, values):
    from hydra_plugins.xlt_sweeper.sweeper import job_identity

    jobs, configs = planned(f"experiment={preset}")
    modes = Counter(c.mode.name for c in configs)
    assert modes == {"original": 5, "adjusted": 5 * values}  # not 5 x values original jobs
    assert sorted(c.seed for c in configs if c.mode.name == "original") == [1, 2, 3, 4, 5]
    identities = [job_identity(c) for c in configs]
    assert len(set(identities)) == len(identities)
    assert len({tuple(sorted(j for j in job if j.startswith(swept))) for job in jobs}) == values  # every row is still there


def test_sweeps_without_repeats_are_unchanged():
    jobs, configs = planned("experiment=table2_nli")
    assert len(jobs) == 3 * 4 * 5
    jobs, configs = planned("task=retrieval", "mode=original", "corpus.heldout=100,200")  # retrieval reads the corpus in every mode
    assert [c.corpus.heldout for c in configs] == [100, 200]


def test_an_adjust_sweep_in_the_default_mode_launches_every_size():
    """``xlt-adjust -m corpus.size=100,150`` runs in ``mode=original`` (the
    default): both sizes are built, none is dropped as a repeat."""
    jobs, configs = planned("command=adjust", "corpus.size=100,150")
    assert [c.corpus.size for c in configs] == [100, 150]


@pytest.mark.slow
def test_dropped_original_jobs_still_give_every_row_its_baseline(tmp_path, tiny_cache):
    """A corpus-size sweep runs one original job; the report compares both
    adjusted rows with it."""
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "xlt", "-m", "model=tiny", "data=demo", "task.train_limit=64", "task.eval_limit=12",
         "task.epochs=1", "trainer.enable_progress_bar=false", "corpus=demo", "corpus.heldout=30", "mode=original,adjusted",
         "corpus.size=120,240", "seed=1", f"hydra.sweep.dir={sweep}"],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "XLT_CACHE_DIR": str(tiny_cache)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 of 4 jobs repeat an earlier job" in result.stdout + result.stderr
    modes = sorted(json.loads(p.read_text())["config"]["mode"] for p in sweep.glob("*/results.json"))
    assert modes == ["adjusted", "adjusted", "original"]
    report = subprocess.run([sys.executable, "-c", "from xlt.report import main; raise SystemExit(main())", str(sweep)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (sweep / "report.md").read_text()
    assert "duplicate" not in report.stdout + report.stderr
    gains = text[text.index("## XNLI — xnli accuracy: gain over original by size"):].split("##")[1]  # titled by the task
    assert "| adjusted (size=120) |" in gains and "| adjusted (size=240) |" in gains, text  # both rows against the one original


def test_two_spellings_of_one_data_folder_are_one_job(tmp_path):
    """The sweeper spells ``data.root`` as the job will (``xlt.config.canonical_data_root``)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    jobs, configs = planned("mode=original", f"data.root={tmp_path / 'data'},{tmp_path / 'link'}")
    assert len(jobs) == 1


# A rule between fields that only a combination of swept values breaks: with the contrastive objective,
# tokens=cls and adjustment.batch_size=1 leave every batch one pair (no negatives); each value alone is valid.
BAD_COMBINATION = ("mode=adjusted", "adjustment.objective=contrastive", "tokens=all,cls", "adjustment.batch_size=32,1")


def test_a_combination_that_breaks_a_rule_stops_the_sweep_before_any_job(capsys):
    """``xlt``'s own check composes one job per swept value, which passes
    here; the sweeper checks every job it composes, so the one bad
    combination is one line and exit 2 instead of a failed job mid-sweep."""
    from xlt import cli

    cli.check_jobs(["-m", *BAD_COMBINATION])  # every value is valid: no exit
    with pytest.raises(SystemExit) as stop:
        planned(*BAD_COMBINATION)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("xlt: error: adjustment.batch_size=1: with tokens=cls every batch holds one pair"), err
    assert ("(the sweep's job mode=adjusted adjustment.objective=contrastive tokens=cls adjustment.batch_size=1; "
            "no job was launched)") in err
    jobs, _ = planned(*BAD_COMBINATION[:-1], "adjustment.batch_size=32,2")  # the same sweep without the bad value
    assert len(jobs) == 4


@pytest.mark.slow
def test_the_bad_combination_leaves_no_sweep_folder(tmp_path):
    """The command line's path: one line, exit 2, and Hydra made no sweep folder."""
    sweep = tmp_path / "sweep"
    result = subprocess.run([sys.executable, "-m", "xlt", "-m", "model=tiny", *BAD_COMBINATION, f"hydra.sweep.dir={sweep}"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("xlt: error: adjustment.batch_size=1: "), result.stderr
    assert not sweep.exists()
