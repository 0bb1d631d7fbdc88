"""Hub models and datasets are keyed by the commit they resolve to, not by
their name: a new commit under the same hub id rebuilds the adjusted model
and the checkpoint, reruns a finished job and is another report cell.

The hub is simulated offline by a fake HF cache (``<kind>s--<org>--<name>/
refs/main`` holding a sha, ``snapshots/<sha>/``), the layout from which
``from_pretrained`` and ``load_dataset`` load offline."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import write_composed_job
from xlt import keys, report, results, revisions
from xlt.contract import compose
from xlt.errors import XltError

OLD, NEW = "a" * 40, "b" * 40
MBERT = "bert-base-multilingual-cased"


class FakeHub:
    """A local HF hub cache in which a test moves a repository's ``main``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def commit(self, kind: str, repo: str, sha: str, files: Path | None = None, ref: str = "main") -> Path:
        """Point ``refs/<ref>`` of ``repo`` at ``sha`` (its snapshot holds a
        copy of the files in ``files``); as the next job sees it."""
        from huggingface_hub.file_download import repo_folder_name

        folder = self.root / repo_folder_name(repo_id=repo, repo_type=kind)
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(sha)
        snapshot = folder / "snapshots" / sha
        if files is not None and not snapshot.exists():
            shutil.copytree(files, snapshot)
        snapshot.mkdir(parents=True, exist_ok=True)
        revisions.start_job()
        return snapshot


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    revisions.start_job()
    yield FakeHub(tmp_path / "hf")
    revisions.start_job()


def job(tmp_path: Path, *overrides: str):
    return compose(["model=mbert", "mode=adjusted", "corpus=demo", f"paths.output_dir={tmp_path / 'out'}",
                    f"paths.cache_dir={tmp_path / 'cache'}", *overrides])


# ---- resolution ---------------------------------------------------------------
def test_offline_the_cache_ref_names_the_commit_and_a_pinned_sha_is_taken_as_it_is(hub):
    hub.commit("model", MBERT, OLD)
    hub.commit("model", MBERT, NEW, ref="v2")
    assert revisions.resolve("model", MBERT) == OLD
    assert revisions.resolve("model", MBERT, "v2") == NEW  # a branch or tag pin is resolved too
    assert revisions.resolve("model", "org/never-cached", "c" * 40) == "c" * 40  # a sha needs no lookup
    assert revisions.loaded() == {f"model:{MBERT}": OLD, f"model:{MBERT}@v2": NEW, f"model:org/never-cached@{'c' * 40}": "c" * 40}
    assert revisions.parse(f"dataset:facebook/xnli@v2") == ("dataset", "facebook/xnli", "v2")
    with pytest.raises(OSError, match="no cached dataset facebook/xnli at revision main"):
        revisions.resolve("dataset", "facebook/xnli")


def test_online_the_hubs_api_names_the_commit(hub, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    asked = []

    class Api:  # what HfApi's model_info / dataset_info answer: the commit a revision stands for
        def model_info(self, repo, revision):
            asked.append(("model", repo, revision))
            return type("Info", (), {"sha": NEW})()

        def dataset_info(self, repo, revision):
            asked.append(("dataset", repo, revision))
            return type("Info", (), {"sha": OLD})()

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    hub.commit("model", MBERT, OLD)  # online, the cache's ref is not asked
    assert revisions.resolve("model", MBERT) == NEW and revisions.resolve("dataset", "facebook/xnli", "v2") == OLD
    assert revisions.resolve("model", MBERT) == NEW  # once per job
    assert asked == [("model", MBERT, "main"), ("dataset", "facebook/xnli", "v2")]



def test_online_a_hub_that_does_not_answer_falls_back_to_the_cache_and_an_unknown_repo_does_not(hub, monkeypatch, caplog):
    """A compute node without internet (HF_HUB_OFFLINE unset) loaded cached
    weights through from_pretrained's fallback; asking the hub's API first
    must not turn that into a failure, nor hide a repository that is not there."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    class Api:
        def model_info(self, repo, revision):
            if repo == "org/missing":  # built without an HTTP response (its constructor wants one)
                error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
                Exception.__init__(error, "404 Client Error: Repository Not Found")
                raise error
            raise ConnectionError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    hub.commit("model", MBERT, OLD)
    with caplog.at_level("WARNING", logger="xlt.revisions"):
        assert revisions.resolve("model", MBERT) == OLD
    assert f"the hub did not answer for model {MBERT} (ConnectionError): using the commit the local cache holds, {OLD}" in caplog.text
    hub.commit("model", "org/missing", OLD)
    with pytest.raises(RepositoryNotFoundError):
        revisions.resolve("model", "org/missing")
    with pytest.raises(ConnectionError):  # no answer and nothing cached: the hub's own error
        revisions.resolve("model", "org/never-cached")

def test_a_model_revision_is_passed_to_from_pretrained_and_checked(hub, tmp_path, monkeypatch):
    import transformers

    from xlt.models import encoder

    hub.commit("model", MBERT, OLD)
    asked = []
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", lambda name, **kw: asked.append((name, kw["revision"])))
    encoder.load_encoder(job(tmp_path).model, str(tmp_path))
    encoder.load_encoder(job(tmp_path, f"model.revision={NEW}").model, str(tmp_path))
    assert asked == [(MBERT, OLD), (MBERT, NEW)]
    for bad in (["model=e5_small", "model.revision=main"], ["model.pretrained=/tmp", "model.revision=main"]):
        with pytest.raises(XltError, match="model.revision=main: only a hub model has revisions"):
            from xlt.contract import validate

            validate(job(tmp_path, *bad))


def test_hub_data_loads_the_resolved_commit_and_offline_without_a_cache_keeps_its_one_line(hub, monkeypatch):
    import datasets

    from xlt.tasks.hub import load_hub

    asked = []

    def load_dataset(path, name=None, split=None, revision=None):
        asked.append(revision)
        if revision is None:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)\ndetails")
        return datasets.Dataset.from_dict({"x": [1]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(XltError) as err:  # no cached copy: the loader's own one line, as before
        load_hub("nyu-mll/multi_nli", None, "train")
    assert str(err.value) == "cannot load nyu-mll/multi_nli [train] from the hub: Couldn't reach 'nyu-mll/multi_nli' on the Hub (LocalEntryNotFoundError)"
    hub.commit("dataset", "nyu-mll/multi_nli", OLD)
    assert len(load_hub("nyu-mll/multi_nli", None, "train")) == 1 and asked[-1] == OLD
    assert revisions.loaded() == {"dataset:nyu-mll/multi_nli": OLD}
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_dict({"x": [1]}))
    with pytest.raises(XltError, match="cannot resolve the revision of facebook/xnli on the hub: offline"):
        load_hub("facebook/xnli", "hi", "test")  # loaded (datasets' own cache), but from which commit is unknown


def cache_dataset_copy(root: Path, repo: str, sha: str, value: int, age_s: float) -> None:
    """One processed copy of hub dataset ``repo`` at commit ``sha`` in
    ``datasets``' own cache, laid out as ``load_dataset`` leaves it
    (``<org>___<name>/default/0.0.0/<sha>/``), last written ``age_s`` ago."""
    import os
    import time

    import datasets
    from datasets.arrow_writer import ArrowWriter

    name = repo.split("/")[-1]
    folder = root / repo.replace("/", "___") / "default" / "0.0.0" / sha
    folder.mkdir(parents=True)
    table = datasets.Dataset.from_dict({"x": [value]})
    with ArrowWriter(path=str(folder / f"{name}-train.arrow")) as writer:
        writer.write_table(table.data.table)
    splits = datasets.SplitDict(dataset_name=name)
    splits.add(datasets.SplitInfo(name="train", num_examples=1, dataset_name=name))
    datasets.DatasetInfo(features=table.features, config_name="default", dataset_name=name,
                         splits=splits).write_to_directory(str(folder))
    os.utime(folder, (time.time() - age_s,) * 2)


def test_offline_a_cached_copy_of_another_commit_than_the_job_resolved_is_one_line(hub, tmp_path, monkeypatch):
    """Offline, ``datasets`` loads the newest cached copy whatever revision it
    is asked for (checked here with datasets itself): a job pinned to the old
    commit would read the new one's data and record the old sha."""
    import datasets

    from xlt.tasks.hub import load_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    cache_dataset_copy(tmp_path / "datasets", "org/tiny", OLD, value=1, age_s=100)
    cache_dataset_copy(tmp_path / "datasets", "org/tiny", NEW, value=2, age_s=0)
    hub.commit("dataset", "org/tiny", NEW)
    assert load_hub("org/tiny", None, "train")["x"] == [2]  # main: the newest copy is its commit
    with pytest.raises(XltError) as err:
        load_hub("org/tiny", None, "train", revision=OLD)
    assert str(err.value).startswith(f"org/tiny [train]: the job resolved commit {OLD[:12]} ({OLD}) but datasets "
                                     f"loaded its cached copy of commit {NEW[:12]}")
    assert "\n" not in str(err.value)


# ---- keys ---------------------------------------------------------------------
def test_a_new_model_commit_is_a_new_adjusted_model_alignment_and_checkpoint(hub, tmp_path):
    hub.commit("model", MBERT, OLD)
    cfg, subword = job(tmp_path), job(tmp_path, "aggregation=subword")
    before = keys.adjusted_dir(cfg), keys.checkpoint_dir(cfg), keys.alignment_dir(subword), keys.job_hash(cfg)
    assert keys.training_record(cfg)["revisions"] == {f"model:{MBERT}": OLD}
    hub.commit("model", MBERT, NEW)
    after = keys.adjusted_dir(cfg), keys.checkpoint_dir(cfg), keys.alignment_dir(subword), keys.job_hash(cfg)
    assert [b != a for b, a in zip(before, after)] == [True, True, True, False]  # the job hash is the config's
    assert keys.alignment_dir(job(tmp_path)) == keys.alignment_dir(cfg)  # word alignments read no tokenizer
    pinned = job(tmp_path, f"model.revision={OLD}")
    assert keys.adjusted_dir(pinned) != before[0]  # the pin is a setting too (the sweeper tells the jobs apart)
    assert keys.job_hash(pinned) != keys.job_hash(cfg)


def test_models_without_hub_commits_keep_their_keys(tmp_path):
    """``model.revision`` (null) and the revisions field are left out of the
    keys of everything not loaded from the hub: the caches of e5_small, tiny
    and local folders built before stay valid."""
    cfg = compose(["model=tiny", "mode=adjusted", f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}"])
    assert "revision" not in keys.adjusted_key(cfg)["model"] and "revisions" not in keys.adjusted_key(cfg)
    assert "revision" not in keys.training_record(cfg)["model"] and "revisions" not in keys.training_record(cfg)
    assert "revision" not in keys.result_config(results.resolved_config(cfg))["model"]


def test_hub_data_commits_key_the_checkpoint_when_training_reads_them(hub, tmp_path):
    for repo in ("nyu-mll/multi_nli", "facebook/xnli"):
        hub.commit("dataset", repo, OLD)
    cfg = compose(["model=tiny", "data=hub", f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}"])
    before = keys.checkpoint_dir(cfg)
    assert keys.training_record(cfg)["revisions"] == {"dataset:nyu-mll/multi_nli": OLD}
    hub.commit("dataset", "facebook/xnli", NEW)  # evaluation data: the same fine-tuned model
    assert keys.checkpoint_dir(cfg) == before
    hub.commit("dataset", "nyu-mll/multi_nli", NEW)
    assert keys.checkpoint_dir(cfg) != before
    qa = compose(["model=tiny", "data=hub", "task=qa", f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}"])
    assert [kind_repo[:2] for kind_repo in keys.hub_sources(qa, train_only=True)] == \
        [("dataset", "google/xquad"), ("dataset", "rajpurkar/squad")]  # QA's training drops XQuAD's English paragraphs


def test_a_checkpoint_trained_from_an_older_commit_is_stale(hub):
    hub.commit("model", MBERT, OLD)
    record = {"inputs": {}, "stage_version": keys.training_versions(False, "avg"), "revisions": {f"model:{MBERT}": OLD}}
    assert keys.stale_build(record, "/unused") is None
    hub.commit("model", MBERT, NEW)
    assert keys.stale_build(record, "/unused") == f"it was trained from model:{MBERT} at {OLD}, now {NEW}"


# ---- a rerun and the report -----------------------------------------------------
def finished_job(hub: FakeHub, root: Path, name: str, sha: str, seed: int, correct: list[int]) -> Path:
    """A finished job of mbert as ``sha`` of its hub repository."""
    hub.commit("model", MBERT, sha)
    revisions.resolve("model", MBERT)  # what loading it does
    return write_composed_job(root, name, ["model=mbert", "lang=ru", f"seed={seed}"], correct)


def test_a_rerun_after_the_hub_moved_runs_again_and_says_why(hub, tmp_path, caplog):
    run = finished_job(hub, tmp_path, "s1", OLD, 1, [1, 0, 1])
    cfg = compose(["model=mbert", "lang=ru", "seed=1", f"paths.output_dir={run}"])
    revisions.start_job()
    assert results.finished(run, cfg, {}) is not None  # the same commit: kept
    hub.commit("model", MBERT, NEW)
    with caplog.at_level(logging.INFO, logger="xlt.results"):
        assert results.finished(run, cfg, {}) is None
    assert f"was computed from model:{MBERT} at {OLD}, now {NEW}: running the job again" in caplog.text
    saved = json.loads((run / "results.json").read_text())  # an older xlt recorded no commits: not kept either
    del saved["config"]["revisions"]
    (run / "results.json").write_text(json.dumps(saved))
    hub.commit("model", MBERT, OLD)
    assert results.finished(run, cfg, {}) is None


def test_seeds_at_two_hub_commits_are_two_cells(hub, tmp_path):
    root = tmp_path / "runs"
    finished_job(hub, root, "old-s1", OLD, 1, [1, 0, 1, 1])
    finished_job(hub, root, "old-s2", OLD, 2, [1, 1, 1, 1])
    finished_job(hub, root, "new-s1", NEW, 1, [0, 0, 1, 0])
    write_composed_job(root, "new-s2", ["model=mbert", "lang=ru", "seed=2"], None)  # killed: it recorded no commit
    summary = report.summarise(report.collect([root]))
    column = f"revision.model:{MBERT}"
    assert summary.attrs["axes"] == [column]
    cells = {row[column]: row for _, row in summary.iterrows()}
    assert set(cells) == {OLD, NEW}
    assert cells[OLD]["n_seeds"] == 2 and cells[OLD]["mean"] == pytest.approx(0.875)
    assert cells[NEW]["n_seeds"] == 1 and cells[NEW]["missing_seeds"] == 1  # the killed seed counts where it belongs


def test_the_reports_provenance_names_the_commits_each_configuration_loaded(hub, tmp_path, capsys):
    root = tmp_path / "runs"
    finished_job(hub, root, "old-s1", OLD, 1, [1, 0, 1, 1])
    finished_job(hub, root, "new-s2", NEW, 2, [0, 0, 1, 0])
    assert report.main([str(root), "--out", str(tmp_path / "report")]) == 0
    provenance = capsys.readouterr().out.split("## Provenance")[1]
    assert "| hub commits |" in provenance
    row = next(line for line in provenance.splitlines() if "| ru |" in line)  # one configuration, two seeds
    assert f"| model:{MBERT}@{OLD[:12]}; model:{MBERT}@{NEW[:12]} |" in row, row


# ---- end to end ---------------------------------------------------------------
def tiny_hub_model(folder: Path, tokenizer_dir: str, seed: int) -> Path:
    """A 2-layer BERT with the tiny model's tokenizer, saved as a hub snapshot holds it."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_job_reruns_on_a_new_hub_commit_and_the_report_splits_the_cell(hub, tmp_path, tiny_cache, caplog):
    from xlt.models.encoder import model_path
    from xlt.stages.job import run_job

    overrides = ["model=tiny", "model.source=hub", "model.pretrained=org/tiny-bert", "model.random=null", "data=demo",
                 "lang=ru", "task.train_limit=32", "task.eval_limit=12", "task.epochs=1", "trainer.enable_progress_bar=false",
                 f"paths.cache_dir={tiny_cache}"]
    run = tmp_path / "runs" / "s1"
    cfg = compose([*overrides, f"paths.output_dir={run}"])
    tokenizer = model_path(compose(["model=tiny", "paths.output_dir=/tmp/x"]).model, str(tiny_cache))
    hub.commit("model", "org/tiny-bert", OLD, tiny_hub_model(tmp_path / "old", tokenizer, seed=1))
    first = run_job(cfg)
    assert first["config"]["revisions"] == {"model:org/tiny-bert": OLD}
    record = json.loads((keys.checkpoint_dir(cfg) / keys.TRAINING_RECORD).read_text())
    assert record["revisions"] == {"model:org/tiny-bert": OLD}
    old_checkpoint = keys.checkpoint_dir(cfg)
    with caplog.at_level(logging.INFO):
        assert run_job(cfg)["runtime_s"] == first["runtime_s"]  # the same commit: the finished job is kept
    shutil.copytree(run, tmp_path / "runs" / "s1-old", symlinks=True)

    hub.commit("model", "org/tiny-bert", NEW, tiny_hub_model(tmp_path / "new", tokenizer, seed=2))  # main moved
    caplog.clear()
    with caplog.at_level(logging.INFO):
        second = run_job(cfg)
    assert f"was computed from model:org/tiny-bert at {OLD}, now {NEW}: running the job again" in caplog.text
    assert second["config"]["revisions"] == {"model:org/tiny-bert": NEW}
    assert keys.checkpoint_dir(cfg) != old_checkpoint  # trained again, from the new weights
    assert second["metrics"] != first["metrics"] or second["training"] != first["training"]
    summary = report.summarise(report.collect([tmp_path / "runs"]))
    cells = summary[summary["eval_set"] == "xnli.ru"]
    assert sorted(cells["revision.model:org/tiny-bert"]) == sorted([OLD, NEW]) and list(cells["n_seeds"]) == [1, 1]


@pytest.mark.slow
def test_xlt_analyze_records_the_commit_it_measured(hub, tmp_path, tiny_cache):
    """xlt-analyze's summary.json names the code, the hub commit of the
    model it measured and the environment, as a job's results.json does."""
    from xlt.analysis.cli import main
    from xlt.keys import code_version
    from xlt.models.encoder import model_path

    tokenizer = model_path(compose(["model=tiny", "paths.output_dir=/tmp/x"]).model, str(tiny_cache))
    hub.commit("model", "org/tiny-bert", OLD, tiny_hub_model(tmp_path / "old", tokenizer, seed=1))
    out = tmp_path / "analysis"
    argv = ["model=tiny", "model.source=hub", "model.pretrained=org/tiny-bert", "model.random=null", "lang=ru",
            "corpus=demo", "corpus.size=60", "corpus.heldout=20", f"paths.cache_dir={tiny_cache}",
            "trainer.enable_progress_bar=false", "analysis.states=original", f"--out={out}"]
    assert main(argv) == 0
    summary = json.loads((out / "ru" / "summary.json").read_text())
    assert summary["revisions"] == {"model:org/tiny-bert": OLD} and summary["code_version"] == code_version()
    assert summary["environment"]["packages"]["torch"] == torch.__version__  # where it measured, as results.json
    assert summary["states"]["original"]["related_n"] > 0
