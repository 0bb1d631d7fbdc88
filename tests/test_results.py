"""The results.json contract (xlt.results): what counts as "the same result",
and older files read on today's scale."""

from __future__ import annotations

import json

import pytest

from xlt import results
from xlt.contract import compose
from xlt.keys import job_hash


def resolved(*overrides: str) -> dict:
    return results.describe(compose(["model=tiny", "paths.output_dir=unused", *overrides]))


def test_comparable_values_are_the_job_hash_payload():
    """The report's cells and the rerun check use one definition: settings
    that cannot change a result (checkpoint interval, logger, progress bar,
    the table title) and subtrees the mode does not read are left out."""
    plain = results.comparable(resolved())
    for bookkeeping in ("trainer.checkpoint_every_n_steps=7", "logger=tensorboard", "trainer.num_workers=3",
                        "trainer.enable_progress_bar=false", "task.title=Table 2", "corpus.size=10"):
        assert results.comparable(resolved(bookkeeping)) == plain, bookkeeping
        assert job_hash(compose(["model=tiny", "paths.output_dir=unused", bookkeeping])) == \
            job_hash(compose(["model=tiny", "paths.output_dir=unused"])), bookkeeping
    assert results.comparable(resolved("task.lr=1e-3"))["task.lr"] == 1e-3 != plain["task.lr"]
    assert "corpus.size" in results.comparable(resolved("mode=adjusted"))  # read when adjusting


def test_a_file_without_a_report_block_reads_on_the_one_scale(tmp_path):
    """Before the task described itself in results.json, QA wrote F1 / EM in
    0-100: read back as fractions, with the test QA used."""
    (tmp_path / "results.json").write_text(json.dumps({
        "config": {"task": "qa", "seed": 1}, "status": "ok",
        "metrics": {"xquad.ru": {"f1": 80.0, "exact_match": 60.0, "n": 10}}}))
    data = results.read(tmp_path)
    assert data["metrics"]["xquad.ru"] == {"f1": pytest.approx(0.8), "exact_match": pytest.approx(0.6), "n": 10}
    assert data["report"] == {"title": "qa", "significance": "paired_ttest", "headline": ["f1", "exact_match"]}


def test_malformed_files_name_the_problem(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"config": {"seed": 1}, "status": "maybe"}))
    with pytest.raises(ValueError, match="status 'maybe' is not one of ok, failed"):
        results.read(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(ValueError, match="config has no 'seed'"):
        results.read(tmp_path)
