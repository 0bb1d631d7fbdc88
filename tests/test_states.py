"""Model states (xlt.stages.states): found where the pipeline left them, by
the training config a checkpoint folder records, never by a config rebuilt
by hand (issue 24 point 2: retrieval missed mBERT-configured checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xlt.contract import compose
from xlt.errors import XltError
from xlt.keys import TRAINING_RECORD, checkpoint_dir
from xlt.stages.states import encoder_state_dict, find_states

# A model YAML that writes into the task node, as conf/model/mbert.yaml does
# (head: bert, adam_eps: 1e-6), on the tiny random encoder.
TINY_BERT = """# @package _global_
model:
  name: tiny
  source: random
  pretrained: tiny
  random: {hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}
task:
  head: bert
  adam_eps: 1e-6
"""


def job(tmp_path: Path, cache: Path, *overrides: str):
    return compose(["model=tiny", "lang=ru", f"paths.cache_dir={cache}", f"paths.output_dir={tmp_path / 'out'}",
                    "corpus.size=60", "corpus.heldout=40", *overrides])


def finish_training(cfg, out: Path) -> Path:
    """What run_job leaves in the cache when a fine-tuning finishes: the
    folder (with its training record, written by the job's own
    ``link_checkpoints``), the weights in ``last.ckpt`` and ``done.json``."""
    from xlt.models.encoder import load_encoder
    from xlt.stages.job import link_checkpoints

    folder = checkpoint_dir(cfg)
    link_checkpoints(out, folder, cfg)
    encoder = load_encoder(cfg.model, cfg.paths.cache_dir)
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}, "global_step": 3},
               folder / "last.ckpt")
    (folder / "done.json").write_text(json.dumps({"global_step": 3}))
    return folder / "last.ckpt"


def test_missing_states_are_skipped_and_none_is_an_error(tiny_cache, tmp_path):
    cfg = job(tmp_path, tiny_cache)
    warnings: list[str] = []
    states = find_states(cfg, ["original", "original_ft", "continual"], None, None, warnings.append)
    assert [s.name for s in states] == ["original"]
    assert len(warnings) == 2 and all("skipped" in w for w in warnings)
    assert f"no finished xnli fine-tuning in mode=original with these settings under {tiny_cache}/checkpoints" in warnings[0]
    with pytest.raises(XltError, match="no model state"):
        find_states(cfg, ["original_ft"], None, None, warnings.append)
    with pytest.raises(XltError, match="unknown state"):
        find_states(cfg, ["bogus"], None, None, warnings.append)


def test_finetuned_state_loads_encoder_weights_from_checkpoint(tiny_cache, tmp_path):
    cfg = job(tmp_path, tiny_cache)
    checkpoint = finish_training(cfg, tmp_path / "run")
    assert json.loads((checkpoint.parent / TRAINING_RECORD).read_text())["task"]["name"] == "xnli"
    torch.save({"state_dict": {"head.weight": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    states = find_states(cfg, ["original_ft"], {"mine": str(checkpoint)}, None, pytest.fail)
    assert states[0].source == str(checkpoint)
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    loaded = states[0].load().state_dict()
    assert saved and all(torch.equal(loaded[name.removeprefix("encoder.")], value) for name, value in saved.items())
    assert [state.source for state in states] == [str(checkpoint)] * 2  # a checkpoint given by path: the same weights
    with pytest.raises(XltError, match="no 'encoder"):  # before any state is loaded (it was when its turn came)
        find_states(cfg, ["original_ft"], {"bad": str(tmp_path / "bad.ckpt")}, None, pytest.fail)


def test_retrieval_finds_mbert_configured_checkpoints(tiny_cache, tmp_path):
    """The model YAML writes task.head=bert and task.adam_eps=1e-6 into the
    fine-tuning job's task; the retrieval job (another task) finds that
    checkpoint by its record.  The old lookup rebuilt the xnli task from its
    YAML (head linear, eps 1e-8), hashed that, and found nothing."""
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "tiny_bert.yaml").write_text(TINY_BERT)
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    finetuning = job(tmp_path, tiny_cache, searchpath, "model=tiny_bert")
    assert (finetuning.task.head, finetuning.task.adam_eps) == ("bert", 1e-6)
    checkpoint = finish_training(finetuning, tmp_path / "run")
    retrieval = job(tmp_path, tiny_cache, searchpath, "model=tiny_bert", "task=retrieval")
    (state,) = find_states(retrieval, ["original_ft"], None, "xnli", pytest.fail)
    assert state.source == str(checkpoint)


def test_a_job_folder_gives_the_state_its_results_json_records(tiny_cache, tmp_path):
    """states.<name>=<job folder>: the path the job recorded, not one rebuilt."""
    from xlt import results

    cfg = job(tmp_path, tiny_cache)
    checkpoint = finish_training(cfg, tmp_path / "run")
    results.write(tmp_path / "run", {"config": {"seed": 1}, "status": "ok", "metrics": {},
                                     "states": {"finetuned": str(checkpoint.resolve())}})
    (state,) = find_states(cfg, [], {"original_ft": str(tmp_path / "run")}, None, pytest.fail)
    assert state.source == str(checkpoint.resolve()) and state.load() is not None
    with pytest.raises(XltError, match="records no adjusted state"):
        find_states(cfg, [], {"adjusted": str(tmp_path / "run")}, None, pytest.fail)


def test_several_matching_fine_tunings_are_named_not_guessed(tiny_cache, tmp_path):
    """Two finished fine-tunings that differ only in the task's settings: a
    job of that task finds its own; a retrieval job (which cannot tell them
    apart) is told to choose one by path."""
    low = job(tmp_path, tiny_cache, "task.lr=1e-5")
    finish_training(low, tmp_path / "low")
    high = finish_training(job(tmp_path, tiny_cache, "task.lr=1e-3"), tmp_path / "high")
    (state,) = find_states(job(tmp_path, tiny_cache, "task.lr=1e-3"), ["original_ft"], None, None, pytest.fail)
    assert state.source == str(high)
    with pytest.raises(XltError, match=r"2 finished xnli fine-tunings in mode=original match this job .*choose one"):
        find_states(job(tmp_path, tiny_cache, "task=retrieval"), ["original_ft"], None, "xnli", pytest.fail)


class _Touch:
    """Unpickling this runs ``Path(marker).touch()``: what a malicious file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_with_a_side_effect_is_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"encoder.x": torch.zeros(1)}, "payload": _Touch(marker)}, evil)
    with pytest.raises(XltError, match="not loadable as weights only") as err:
        encoder_state_dict(evil)
    assert not marker.exists()
    assert "\n" not in str(err.value)


def test_a_fine_tuning_built_otherwise_is_never_used_silently(tiny_cache, tmp_path, monkeypatch):
    """A checkpoint folder matching a job's settings is skipped, with a
    warning naming why, when its training file was edited since, when another
    stage version built it, or when its record predates both."""
    import shutil

    from xlt import keys

    root = tmp_path / "data"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "demo" / "nli", root / "nli")
    cfg = job(tmp_path, tiny_cache, "data=demo", f"data.root={root}")
    checkpoint = finish_training(cfg, tmp_path / "run")
    record = json.loads((checkpoint.parent / TRAINING_RECORD).read_text())
    assert record["stage_version"] == {"finetune": keys.STAGE_VERSION["finetune"]} and record["inputs"]
    (state,) = find_states(cfg, ["original_ft"], None, None, pytest.fail)
    assert state.source == str(checkpoint)

    def lookup() -> list[str]:
        warnings: list[str] = []
        with pytest.raises(XltError, match="no model state"):
            find_states(cfg, ["original_ft"], None, None, warnings.append)
        return warnings

    monkeypatch.setitem(keys.STAGE_VERSION, "finetune", keys.STAGE_VERSION["finetune"] + 1)
    assert "not used: it was built by stage versions" in caplog_of(lookup)
    monkeypatch.undo()
    train = root / "nli" / "xnli" / "dev-en.tsv"
    train.write_text(train.read_text(encoding="utf-8"), encoding="utf-8")  # rewritten, same content: still used
    assert find_states(cfg, ["original_ft"], None, None, pytest.fail)[0].source == str(checkpoint)
    lines = train.read_text(encoding="utf-8").splitlines(keepends=True)
    train.write_text("".join(lines[:-1]), encoding="utf-8")  # one training pair fewer
    assert f"its input {train} has changed since it was trained" in caplog_of(lookup)
    legacy = {k: v for k, v in record.items() if k not in keys.BUILD_FIELDS}
    (checkpoint.parent / TRAINING_RECORD).write_text(json.dumps(legacy))
    assert "its record predates stage versions" in caplog_of(lookup)


def caplog_of(lookup) -> str:
    """The log of ``xlt.stages.states`` while ``lookup`` runs."""
    import logging

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("xlt.stages.states")
    logger.addHandler(handler)
    try:
        lookup()
    finally:
        logger.removeHandler(handler)
    return "\n".join(records)


# ---- the adjusted state follows the fine-tuning it is compared with (walkthrough audit) ----
@pytest.fixture
def built_adjustments(monkeypatch) -> list:
    """``adjust_stage`` answering with the directory of the config it is
    given (what it would build or reuse), recording each config."""
    from xlt.keys import adjusted_dir
    from xlt.stages import adjust

    configs: list = []
    monkeypatch.setattr(adjust, "adjust_stage", lambda cfg: configs.append(cfg) or adjusted_dir(cfg))
    return configs


def test_the_adjusted_state_is_the_one_its_fine_tuning_started_from(tiny_cache, tmp_path, built_adjustments):
    """A bf16 adjusted fine-tuning (on a GPU), then a retrieval job with the
    default fp32 trainer (on a CPU): the old lookup built a new fp32
    adjustment for "adjusted" and compared it with the fine-tuning of the
    bf16 one, silently.  Now "adjusted" is the fine-tuning's encoder, and a
    warning and the state's note say it is not the job's own."""
    from xlt.keys import adjusted_dir

    finetuning = job(tmp_path, tiny_cache, "mode=adjusted", "trainer.precision=bf16-mixed")
    checkpoint = finish_training(finetuning, tmp_path / "ft")
    retrieval = job(tmp_path, tiny_cache, "mode=adjusted", "task=retrieval")
    assert adjusted_dir(retrieval) != adjusted_dir(finetuning)
    warnings: list[str] = []
    adjusted, adjusted_ft = find_states(retrieval, ["adjusted", "adjusted_ft"], None, "xnli", warnings.append)
    assert (adjusted.name, adjusted_ft.source) == ("adjusted", str(checkpoint))
    assert adjusted.source == str(adjusted_dir(finetuning))
    assert [adjusted_dir(c) for c in built_adjustments] == [adjusted_dir(finetuning)]  # no second adjustment
    assert built_adjustments[0].trainer.precision == "bf16-mixed" and built_adjustments[0].trainer.accelerator == "cpu"
    assert warnings == ["state adjusted: the encoder adjusted_ft was fine-tuned from "
                        "(trainer.precision=bf16-mixed, this job: 32-true), not this job's own adjustment"]
    assert adjusted.note == warnings[0].removeprefix("state adjusted: ")
    # the same trainer: the job's own adjustment, nothing to say
    same = job(tmp_path, tiny_cache, "mode=adjusted", "task=retrieval", "trainer.precision=bf16-mixed")
    (adjusted, _) = find_states(same, ["adjusted", "adjusted_ft"], None, "xnli", pytest.fail)
    assert adjusted.source == str(adjusted_dir(finetuning)) and adjusted.note == ""


def test_without_a_fine_tuning_the_adjusted_state_is_the_jobs_own(tiny_cache, tmp_path, built_adjustments):
    from xlt.keys import adjusted_dir

    retrieval = job(tmp_path, tiny_cache, "mode=adjusted", "task=retrieval")
    warnings: list[str] = []
    (adjusted,) = find_states(retrieval, ["adjusted", "adjusted_ft"], None, "xnli", warnings.append)
    assert adjusted.source == str(adjusted_dir(retrieval)) and adjusted.note == ""
    assert len(warnings) == 1 and "state adjusted_ft: no finished xnli fine-tuning in mode=adjusted" in warnings[0]


def test_fine_tunings_from_other_adjustments_are_named(tiny_cache, tmp_path, built_adjustments):
    """A continual state trained with another precision than adjusted_ft, and
    an adjusted_ft given by path with another seed: no one adjusted state can
    match both, so a warning names each mismatch."""
    from xlt.keys import adjusted_dir

    finish_training(job(tmp_path, tiny_cache, "mode=adjusted"), tmp_path / "ft")
    finish_training(job(tmp_path, tiny_cache, "mode=continual", "trainer.precision=bf16-mixed"), tmp_path / "cl")
    analysis = job(tmp_path, tiny_cache)  # xlt-analyze's config: mode=original, every state
    warnings: list[str] = []
    states = find_states(analysis, ["adjusted", "adjusted_ft", "continual"], None, None, warnings.append)
    assert states[0].source == str(adjusted_dir(analysis))  # adjusted_ft's, this job's own
    assert warnings == ["state adjusted: continual was fine-tuned from another adjusted encoder than adjusted_ft "
                        "(trainer.precision=bf16-mixed, adjusted_ft: 32-true); adjusted is adjusted_ft's"]
    other_seed = finish_training(job(tmp_path, tiny_cache, "mode=adjusted", "seed=2"), tmp_path / "s2")
    warnings.clear()
    states = find_states(analysis, ["adjusted"], {"adjusted_ft": str(other_seed)}, None, warnings.append)
    assert [s.name for s in states] == ["adjusted", "adjusted_ft"]
    assert states[0].source == str(adjusted_dir(analysis))
    assert warnings == [f"state adjusted: not the encoder adjusted_ft was fine-tuned from ({other_seed}: other seed); "
                        "comparisons of adjusted with adjusted_ft mix two adjustments"]


def test_a_state_path_that_does_not_exist_is_an_error_before_any_work(tiny_cache, tmp_path, built_adjustments):
    """A typo in a path the user gave is not "not trained yet": one error
    naming the setting, before anything is looked for or built."""
    cfg = job(tmp_path, tiny_cache)
    with pytest.raises(XltError, match=rf"^states.mine={tmp_path}/nope: no such file$"):
        find_states(cfg, ["adjusted"], {"mine": str(tmp_path / "nope")}, None, pytest.fail)
    with pytest.raises(XltError, match=r"^task.options.checkpoints.original_ft=/typo.ckpt: no such file$"):
        find_states(cfg, ["adjusted"], {"original_ft": "/typo.ckpt"}, None, pytest.fail, setting="task.options.checkpoints")
    assert built_adjustments == []


def bad_state_paths(tmp_path: Path, checkpoint: Path) -> dict[str, tuple[str, str]]:
    """Paths that exist (or are empty) but hold no model state: value -> what the error says."""
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    untyped = tmp_path / "untyped"
    untyped.mkdir()
    (untyped / "config.json").write_text('{"hidden_size": 32}')
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text('{"model_type": "bert"}')
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    no_encoder = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"head.weight": torch.zeros(1)}}, no_encoder)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"config": {"seed": 1}, "status": "ok", "metrics": {},
                                                  "states": {"finetuned": str(tmp_path / "deleted.ckpt")}}))
    return {"": ("", "is empty"), "sweep": (str(sweep), "holds no model (no config.json"),
            "untyped": (str(untyped), "has a config.json without model_type"),
            "weightless": (str(weightless), "holds no weights"),
            "text": (str(text), "is not a checkpoint"), "no_encoder": (str(no_encoder), "no 'encoder.*' weights"),
            "run": (str(run), f"records {tmp_path / 'deleted.ckpt'}, which does not exist")}


def test_a_path_that_holds_no_model_state_is_one_line_before_any_work(tiny_cache, tmp_path, built_adjustments,
                                                                      monkeypatch):
    """A folder that is no model (a sweep folder; ``states.x=`` read as ``.``)
    reached AutoModel.from_pretrained only when its state's turn came: a
    ValueError traceback after the states before it were measured.  Now each
    kind of path is checked for what loading it needs, before any state is
    found, built or loaded; a model folder, a checkpoint and a job folder
    recording one pass."""
    from transformers import BertConfig, BertModel

    from xlt.models import encoder as encoder_module

    cfg = job(tmp_path, tiny_cache)
    checkpoint = finish_training(cfg, tmp_path / "finished")
    monkeypatch.setattr(encoder_module, "load_encoder", lambda *a, **k: pytest.fail("loaded a model before checking"))
    for value, message in bad_state_paths(tmp_path, checkpoint).values():
        with pytest.raises(XltError) as err:
            find_states(cfg, ["original", "adjusted"], {"mine": value}, None, pytest.fail,
                        setting="task.options.checkpoints")
        assert str(err.value).startswith(f"task.options.checkpoints.mine={value}") and message in str(err.value)
        assert "\n" not in str(err.value)
    assert built_adjustments == []
    model = tmp_path / "model"
    BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(model)
    run = tmp_path / "good_run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"config": {"seed": 1}, "status": "ok", "metrics": {},
                                                  "states": {"finetuned": str(checkpoint), "adjusted": str(model)}}))
    from xlt.stages.states import state_path_problem

    for path in (model, checkpoint, run):
        assert state_path_problem("states.mine", "mine", str(path)) is None
