"""End-to-end jobs on the tiny model and real (demo) data, offline.

These run the real pipeline: Hydra composition, Lightning training with
checkpoints, evaluation, results.json and per-example predictions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from xlt.stages import job as pipeline
from xlt.contract import compose

REPO = Path(__file__).resolve().parents[1]
SMALL = ["model=tiny", "data=demo", "task.train_limit=64", "task.eval_limit=12", "task.epochs=2",
         "trainer.enable_progress_bar=false"]

pytestmark = pytest.mark.slow


def compose_job(tmp_path: Path, cache: Path, *overrides: str):
    return compose([*SMALL, f"paths.output_dir={tmp_path}", f"paths.cache_dir={cache}", *overrides])


def xlt(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "XLT_CACHE_DIR": str(REPO / ".cache" / "xlt-test"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "xlt", *args], cwd=cwd, capture_output=True, text=True,
                          env=environment, timeout=600)


def xlt_report(sweep: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from xlt.report import main; raise SystemExit(main())", str(sweep)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_csv(path: Path) -> list[dict]:
    import csv

    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def curve(run: Path) -> list[tuple[str, str]]:
    """(step, training loss) rows of a job's logs/metrics.csv."""
    return [(row["step"], row["train/task_loss"]) for row in read_csv(run / "logs" / "metrics.csv") if row["train/task_loss"]]


def test_job_writes_results_and_predictions(tmp_path, tiny_cache):
    cfg = compose_job(tmp_path / "run", tiny_cache, "lang=hi", "seed=4")  # a fresh cache: this job trains
    results = pipeline.run_job(cfg)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["status"] == "ok" and saved["config"]["lang"] == "hi" and saved["config"]["seed"] == 4
    resolved = saved["config"]["resolved"]  # the whole job config, for xlt-report to compare
    assert resolved["task"]["lr"] == cfg.task.lr and resolved["trainer"] == OmegaConf.to_container(cfg.trainer) and "paths" not in resolved
    assert set(saved["metrics"]) == {"xnli.hi", "xnli_mixed.hi", "xnli_mixed_premise.hi", "xnli_mixed_hypothesis.hi"}
    records = read_jsonl(tmp_path / "run" / "predictions" / "xnli.hi.jsonl")
    assert len(records) == 12
    # The reported accuracy is the hand count over the saved predictions.
    assert results["metrics"]["xnli.hi"]["accuracy"] == pytest.approx(sum(r["correct"] for r in records) / 12)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    # the task's own description, and the states the job produced (what readers use, not a rebuilt config)
    assert saved["report"] == {"title": "XNLI", "significance": "paired_ttest", "headline": ["accuracy"]}
    finetuned = Path(saved["states"]["finetuned"])
    assert finetuned == (tmp_path / "run" / "checkpoints").resolve() / "last.ckpt" and "adjusted" not in saved["states"]
    record = json.loads((finetuned.parent / "training.json").read_text())
    assert record["task"]["name"] == "xnli" and record["lang"] is None and record["seed"] == 4
    # 4 steps, fewer than log_every_n_steps=10: the curve still has its last step, then the evaluation.
    rows = read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    assert [row["step"] for row in rows if row["train/task_loss"]] == ["3"]
    assert float(rows[-1]["eval/xnli.hi/accuracy"]) == pytest.approx(saved["metrics"]["xnli.hi"]["accuracy"])
    assert OmegaConf.load(tmp_path / "run" / "logs" / "hparams.yaml").task.lr == cfg.task.lr


def write_tsv_sentences(source: Path, target: Path, sentences: int) -> None:
    """The first ``sentences`` sentences of a real token<TAB>tag file."""
    blocks = source.read_text(encoding="utf-8").split("\n\n")[:sentences]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")


def test_a_made_up_language_is_one_yaml_file(tmp_path, tiny_cache, shared_data):
    """A language xlt has never heard of: conf/lang/xx.yaml in a folder on the
    search path (and its data) is all it takes to run a job; the YAML names
    its own NER file, as es.yaml does.  No other file is touched."""
    conf, data = tmp_path / "conf", tmp_path / "data"
    (conf / "lang").mkdir(parents=True)
    (conf / "lang" / "xx.yaml").write_text("code: xx\nname: Testish\nlocal:\n  ner: {eval: ner/wikiann/xx/dev.tsv}\n")
    write_tsv_sentences(shared_data / "ner/wikiann/en/train.tsv", data / "ner/wikiann/en/train.tsv", 64)
    write_tsv_sentences(shared_data / "ner/wikiann/vi/test.tsv", data / "ner/wikiann/xx/dev.tsv", 20)  # real rows
    cfg = compose_job(tmp_path / "run", tiny_cache, f"hydra.searchpath=[file://{conf}]", "lang=xx", "task=ner",
                      f"data.root={data}", "task.epochs=1")
    results = pipeline.run_job(cfg)
    assert results["status"] == "ok" and results["config"]["lang"] == "xx"
    assert results["metrics"]["wikiann.xx"]["n"] == 12  # task.eval_limit of SMALL
    assert len(read_jsonl(tmp_path / "run" / "predictions" / "wikiann.xx.jsonl")) == 12


def test_ner_evaluates_whole_sentences_and_records_the_words_left_out(tmp_path, tiny_cache, shared_data):
    """NER evaluation reads each sentence up to the model's limit (training: task.max_length=128),
    results.json's eval_notes counts the words left out of gold and prediction, and a job
    that changes only task.options.eval_max_length reuses the fine-tuned model."""
    from xlt.errors import XltError
    from xlt.models.encoder import load_tokenizer
    from xlt.tasks.ner import first_subword_positions

    data = tmp_path / "data"
    write_tsv_sentences(shared_data / "ner/wikiann/en/train.tsv", data / "ner/wikiann/en/train.tsv", 64)
    ru = (shared_data / "ner/wikiann/ru/dev.tsv").read_text(encoding="utf-8").split("\n\n")
    # 10 sentences and the two of ru dev over 128 e5 subwords (real rows; conf/lang/ru.yaml reads dev.tsv)
    (data / "ner/wikiann/ru").mkdir()
    (data / "ner/wikiann/ru/dev.tsv").write_text("\n\n".join(ru[:10] + [ru[278], ru[1032]]) + "\n", encoding="utf-8")

    def job(name: str, *overrides: str):
        return compose_job(tmp_path / name, tiny_cache, "task=ner", "lang=ru", f"data.root={data}", "task.epochs=1",
                           *overrides)

    whole = pipeline.run_job(job("whole"))
    records = read_jsonl(tmp_path / "whole" / "predictions" / "wikiann.ru.jsonl")
    assert [len(r["gold"]) for r in records[-2:]] == [61, 40]  # every word of the long sentences, predicted
    assert all(len(r["prediction"]) == len(r["gold"]) and r["left_out"] == [] for r in records)
    words = sum(len(r["gold"]) for r in records)
    assert whole["eval_notes"] == {"wikiann.ru": {"words": words, "words_left_out": 0}}

    tokenizer = load_tokenizer(job("whole").model, str(tiny_cache))
    sentences = [[line.split("\t")[0] for line in block.strip().splitlines()] for block in ru[:10] + [ru[278], ru[1032]]]
    encoded = tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=128)
    cut = [[w for w, p in enumerate(first_subword_positions(encoded.word_ids(i), len(s))) if p < 0]
           for i, s in enumerate(sentences)]
    assert sum(map(len, cut)) > 0
    short = pipeline.run_job(job("short", "task.options.eval_max_length=128"))
    assert short["training"]["reused_checkpoint"]  # an evaluation setting: the same fine-tuned model
    assert short["config"]["config_hash"] != whole["config"]["config_hash"]  # ... but another result
    assert short["eval_notes"] == {"wikiann.ru": {"words": words, "words_left_out": sum(map(len, cut))}}
    records = read_jsonl(tmp_path / "short" / "predictions" / "wikiann.ru.jsonl")
    assert [r["left_out"] for r in records] == cut
    assert all(len(r["gold"]) + len(r["left_out"]) == len(s) for r, s in zip(records, sentences))

    with pytest.raises(XltError, match=r"^task.options.eval_max_length=1000 is longer than model=tiny can read "
                                       r"\(512 positions\); set task.options.eval_max_length=512 or less$"):
        pipeline.run_job(job("long", "task.options.eval_max_length=1000"))


def test_pawsx_runs_from_its_yaml_file(tmp_path, tiny_cache):
    """conf/task/pawsx.yaml on the sentence-pair task kind, on the fixture's rows."""
    fixtures = REPO / "tests" / "fixtures"
    cfg = compose_job(tmp_path / "run", tiny_cache, "task=pawsx", "lang=es", f"data.root={fixtures}",
                      "task.epochs=1", "task.batch_size=4")
    results = pipeline.run_job(cfg)
    assert set(results["metrics"]) == {"pawsx.es", "pawsx_mixed.es", "pawsx_mixed_sentence1.es", "pawsx_mixed_sentence2.es"}
    assert results["metrics"]["pawsx.es"]["n"] == 6 and 0.0 <= results["metrics"]["pawsx.es"]["accuracy"] <= 1.0
    assert results["report"]["title"] == "PAWS-X"


def test_rerun_skips_a_finished_job_unless_config_code_or_data_changed(tmp_path, tiny_cache, monkeypatch):
    """Rerunning a sweep (after a crash, a preemption, a new seed added) must
    not evaluate its finished jobs again, but a job whose config, code or data
    differ from what its results.json was computed from must run."""
    from xlt import keys, results as results_file

    run = tmp_path / "run"
    cfg = compose_job(run, tiny_cache)
    first = pipeline.run_job(cfg)
    written = (run / "results.json").read_bytes()
    evaluated: list[int] = []
    real_evaluate = pipeline.evaluate
    monkeypatch.setattr(pipeline, "evaluate", lambda *a, **k: evaluated.append(1) or real_evaluate(*a, **k))

    def reruns(job_cfg) -> bool:
        evaluated.clear()
        pipeline.run_job(job_cfg)
        return bool(evaluated)

    assert pipeline.run_job(cfg) == first and not evaluated
    assert (run / "results.json").read_bytes() == written  # kept, not rewritten

    assert reruns(compose_job(run, tiny_cache, "seed=2"))  # another job in the same folder
    assert reruns(cfg)  # ... and back
    with monkeypatch.context() as patch:  # an edit of the package
        patch.setattr(keys, "code_version", lambda: "0.0.0+srcedited")
        assert reruns(cfg)
    assert reruns(cfg)
    with monkeypatch.context() as patch:  # a data file edited in place
        patch.setattr(pipeline, "data_checksums", lambda c: {"data/xnli/dev-en.tsv": "edited"})
        assert reruns(cfg)
    assert reruns(cfg)
    (run / "predictions" / "xnli_mixed.ru.jsonl").unlink()
    assert reruns(cfg)
    results_file.write(run, {**first, "status": "failed", "error": "killed"})
    assert reruns(cfg)
    assert not reruns(cfg)


def test_results_name_the_code_the_job_started_with(tmp_path, tiny_cache, monkeypatch):
    """An edit of the package while a job runs (hours of a sweep, a developer
    at work in the same checkout) is not attributed to that job."""
    from xlt import keys

    source = {"hash": "atstart"}
    monkeypatch.setattr(keys, "source_hash", lambda root, length=10: source["hash"])
    real_evaluate = pipeline.evaluate

    def edit_then_evaluate(*args, **kwargs):
        source["hash"] = "editedmidjob"
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(pipeline, "evaluate", edit_then_evaluate)
    keys.code_version.cache_clear()
    try:
        results = pipeline.run_job(compose_job(tmp_path / "run", tiny_cache))
    finally:
        keys.code_version.cache_clear()  # the next test hashes the real source
    assert source["hash"] == "editedmidjob" and results["config"]["code_version"].endswith("+srcatstart")


def test_gradient_accumulation_keeps_the_effective_batch(tmp_path, cache_dir):

    pipeline.run_job(compose_job(tmp_path / "run", cache_dir, "trainer.accumulate_grad_batches=2"))
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4  # 64 examples / batch 32 x 2 epochs, in micro-batches of 16


# 96 examples in batches of 8: 12 optimizer steps per epoch, a checkpoint every 4.
RESUMABLE = ["task.train_limit=96", "task.batch_size=8", "trainer.checkpoint_every_n_steps=4"]


@pytest.mark.parametrize("mode", [
    [],
    ["mode=continual", "corpus=demo", "corpus.size=120", "corpus.heldout=30", "continual.align_batch_size=4"],
], ids=["original", "continual"])
def test_killed_job_resumes_mid_epoch_to_the_same_result(tmp_path, mode):
    """SIGKILL at step 18 (epoch 2 of 2, after the step-16 checkpoint): the rerun
    resumes at step 16 with the sampler, the RNG, the optimizer, the schedule
    and the continual sampler where they were, and ends exactly like an
    uninterrupted run."""
    cache = tmp_path / "cache"
    overrides = [*SMALL, *RESUMABLE, *mode, f"paths.cache_dir={cache}"]
    killed = subprocess.run([sys.executable, str(REPO / "tests" / "kill_at_step.py"), "18", *overrides,
                             f"hydra.run.dir={tmp_path / 'b'}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "b" / "results.json").exists()  # nothing half-written
    checkpoint = torch.load(cache / "checkpoints" / os.listdir(cache / "checkpoints")[0] / "last.ckpt",
                            map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 16 and checkpoint["xlt_sampler"] == {"epoch": 1, "batches": 4}

    resumed = xlt(*overrides, f"hydra.run.dir={tmp_path / 'b'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "training: resumed from step 16" in (tmp_path / "b" / "train.log").read_text()
    assert "not resumable" not in resumed.stderr  # Lightning's warning: the sampler's position is restored
    resumed = json.loads((tmp_path / "b" / "results.json").read_text())
    assert resumed["training"] == {"resumed_from_step": 16, "steps": 24, "reused_checkpoint": False,
                                   "processes": 1, "micro_batch": 8}

    uninterrupted = pipeline.run_job(compose_job(tmp_path / "a", tmp_path / "cache_a", *RESUMABLE, *mode))
    assert uninterrupted["training"]["resumed_from_step"] == 0 and uninterrupted["training"]["steps"] == 24
    assert resumed["metrics"] == uninterrupted["metrics"]
    for name in resumed["metrics"]:
        assert read_jsonl(tmp_path / "b" / "predictions" / f"{name}.jsonl") == read_jsonl(
            tmp_path / "a" / "predictions" / f"{name}.jsonl"
        )
    final = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "optimizer_states" not in final and final["global_step"] == 24  # finished: weights only
    weights = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    differ = [k for k in final["state_dict"] if not torch.equal(final["state_dict"][k], weights[k])]
    assert differ == [] and len(weights) == len(final["state_dict"])  # bit-identical, not only the same predictions
    # The training curve survives the kill: the step-10 row from before it, then the resumed steps, once each.
    assert [step for step, _ in curve(tmp_path / "b")] == ["9", "19", "23"]
    assert curve(tmp_path / "b") == curve(tmp_path / "a")


@pytest.mark.parametrize("twice", [None, "SIGINT"], ids=["once", "sigterm-then-forwarded-sigint"])
def test_sigterm_checkpoints_the_current_step_and_exits(tmp_path, twice):
    """SIGTERM (scancel, a plain kill) after step 18: the job writes last.ckpt
    at step 18 (not only the step-16 one), records that it stopped, exits 143.
    Also when the stop arrives twice at once (a scheduler signals every
    process of the job and ``xlt_local_gpus`` forwards SIGINT to its jobs): that
    is one stop, not "send it again to stop at once", which lost the steps
    since the last step checkpoint (study 2: two continual jobs lost 20 steps)."""
    cache = tmp_path / "cache"
    env = {**os.environ, "XLT_TEST_SIGNAL": "SIGTERM", **({"XLT_TEST_SIGNAL_TWICE": twice} if twice else {})}
    stopped = subprocess.run([sys.executable, str(REPO / "tests" / "kill_at_step.py"), "18", *SMALL, *RESUMABLE,
                              f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, text=True,
                             capture_output=True, timeout=600, env=env)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    (last,) = cache.glob("checkpoints/*/last.ckpt")
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 18 and "optimizer_states" in checkpoint
    assert checkpoint["xlt_sampler"] == {"epoch": 1, "batches": 6}
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "stopped" and record["stage"] == "fine-tuning" and "metrics" not in record
    assert record["error"] == f"stopped at fine-tuning by SIGTERM (checkpoint at step 18 in {last})"
    assert stopped.stderr.strip().splitlines()[-1].startswith("xlt: error: stopped at fine-tuning by SIGTERM")


def test_a_job_stopped_before_its_first_step_checkpoint_keeps_one_last_ckpt(tmp_path):
    """SIGTERM at step 2, before the first step checkpoint (every 4 steps):
    the stop writes last.ckpt with no step checkpoint before it.  The rerun's
    step checkpoints must replace that file, not go beside it: Lightning's
    version counter wrote them to last-v1.ckpt, which no resume reads (a
    second kill lost every step since the signal) and which doubled the
    checkpoints' disk (a 1.4 GB e5_small job filled the study's disk)."""
    cache = tmp_path / "cache"
    overrides = [*SMALL, *RESUMABLE, f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"]
    kill = [sys.executable, str(REPO / "tests" / "kill_at_step.py")]
    stopped = subprocess.run([*kill, "2", *overrides], cwd=REPO, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "XLT_TEST_SIGNAL": "SIGTERM"})
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    killed = subprocess.run([*kill, "10", *overrides], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert "training: resumed from step 2" in (tmp_path / "run" / "train.log").read_text()
    (folder,) = (cache / "checkpoints").iterdir()
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["last.ckpt"]
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 8

    (folder / "last.ckpt").rename(folder / "last-v1.ckpt")  # what an older xlt left: resumed, then removed at the end
    finished = xlt(*overrides)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert f"training: resumed from step 8 ({folder / 'last-v1.ckpt'})" in (tmp_path / "run" / "train.log").read_text()
    assert sorted(p.name for p in folder.iterdir() if p.suffix != ".lock") == ["done.json", "last.ckpt", "training.json"]


def test_unknown_choice_is_one_line():
    result = xlt("lang=xx")
    assert result.returncode == 2
    shipped = ", ".join(sorted(p.stem for p in (REPO / "conf" / "lang").glob("*.yaml")))  # whatever languages ship
    assert result.stderr.strip() == f"xlt: error: unknown lang 'xx'; valid: {shipped}"
    result = xlt("model=foo")
    assert result.returncode == 2 and result.stderr.strip().startswith("xlt: error: unknown model 'foo'; valid: e5_small")


def test_missing_data_file_is_one_line(tmp_path):
    result = xlt(*SMALL, f"data.root={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"xlt: error: no evaluation set available for xnli lang=ru: sentence-pair file not found: {tmp_path}/nli/xnli/test-ru.tsv"
    ]
    failed = json.loads((tmp_path / "run" / "results.json").read_text())
    assert failed["status"] == "failed" and "metrics" not in failed


def test_sweep_survives_a_failing_job_and_reports(tmp_path):
    partial = tmp_path / "data" / "nli" / "xnli"
    partial.mkdir(parents=True)
    for name in ("dev-en.tsv", "test-en.tsv", "test-ru.tsv"):  # no test-hi.tsv: the hi job fails
        (partial / name).write_text((REPO / "data/demo/nli/xnli" / name).read_text())
    sweep = tmp_path / "sweep"
    result = xlt("-m", *SMALL, "lang=ru,hi", f"data.root={tmp_path / 'data'}", f"hydra.sweep.dir={sweep}")
    # Both jobs ran; then the sweep exits non-zero with one line naming the failure.
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("xlt: error: 1 job(s) of the sweep did not finish ok") and "test-hi.tsv" in last
    statuses = {json.loads(p.read_text())["config"]["lang"]: json.loads(p.read_text())["status"]
                for p in sweep.glob("*/results.json")}
    assert statuses == {"ru": "ok", "hi": "failed"}
    report = xlt_report(sweep)
    assert report.returncode == 0, report.stderr
    assert "Failed jobs (1)" in report.stdout and (sweep / "report.md").exists()

    # The missing file restored, the same sweep again: the finished ru job is kept (not
    # evaluated again, and not taken for killed because its results.json predates this
    # run's config), the hi job runs, and the sweep succeeds.
    (partial / "test-hi.tsv").write_text((REPO / "data/demo/nli/xnli/test-hi.tsv").read_text())
    ru_results = next(p for p in sweep.glob("*/results.json") if json.loads(p.read_text())["config"]["lang"] == "ru")
    kept = ru_results.read_bytes()
    again = xlt("-m", *SMALL, "lang=ru,hi", f"data.root={tmp_path / 'data'}", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert ru_results.read_bytes() == kept and "already holds this job's result" in (ru_results.parent / "train.log").read_text()
    assert {json.loads(p.read_text())["status"] for p in sweep.glob("*/results.json")} == {"ok"}


def test_demo_sweep_basic_launcher_and_report(tmp_path, e5_dir):
    """The demo sweep (original/adjusted/continual x ru,hi), tiny model: every
    job finishes, adjustment runs once per language (not per mode), the
    report has the table."""
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(Path(e5_dir).parent)  # reuse the converted tokenizer
    result = xlt("-m", "experiment=demo_sweep", "model=tiny", "seed=1", "trainer.enable_progress_bar=false",
                 f"hydra.sweep.dir={sweep}", env={"XLT_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr[-2000:]
    results = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert sorted((r["config"]["mode"], r["config"]["lang"]) for r in results) == sorted(
        (m, lang) for m in ("original", "adjusted", "continual") for lang in ("ru", "hi"))
    assert all(r["status"] == "ok" for r in results)
    assert len(list((cache / "adjusted").glob("*/evidence.json"))) == 2  # 6 jobs, 2 adjustments
    assert len(list((cache / "checkpoints").glob("*/last.ckpt"))) == 5  # original trains once for both langs
    report = xlt_report(sweep)
    assert report.returncode == 0, report.stderr
    assert "| continual |" in report.stdout and "| original |" in report.stdout


def test_demo_sweep_submitit_local_launcher(tmp_path):
    sweep = tmp_path / "sweep"
    result = xlt("-m", "experiment=demo_sweep", "model=tiny", "lang=ru", "seed=1", "hydra/launcher=submitit_local",
                 "hydra.launcher.timeout_min=20", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-2000:]
    results = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert sorted(r["config"]["mode"] for r in results) == ["adjusted", "continual", "original"]
    assert all(r["status"] == "ok" for r in results)


def test_adjusted_and_continual_share_one_adjustment(tmp_path):
    cache = tmp_path / "cache"
    adjust = ["corpus=demo", "corpus.size=120", "corpus.heldout=30", "lang=hi", "task.epochs=1"]
    adjusted = pipeline.run_job(compose_job(tmp_path / "a", cache, "mode=adjusted", *adjust))
    continual = pipeline.run_job(compose_job(tmp_path / "c", cache, "mode=continual", *adjust))
    assert len(list((cache / "adjusted").glob("*/evidence.json"))) == 1  # built once, reused
    assert len([p for p in (cache / "alignments").iterdir() if p.is_dir()]) == 1
    evidence = adjusted["adjustment"]
    assert 100 < evidence["pairs"] <= 120 and 20 < evidence["heldout_pairs"] <= 30  # pairs with >= 1 link
    assert evidence["adjusted"]["english_drift_mean"] > 0 == evidence["original"]["english_drift_mean"]
    assert continual["adjustment"] == evidence
    assert [p["step"] for p in evidence["during"]] == sorted(p["step"] for p in evidence["during"]) and evidence["during"]
    assert adjusted["config"]["mode"] == "adjusted" and continual["config"]["mode"] == "continual"
    for results in (adjusted, continual):
        assert results["finetuned_distances"]["pairs"] == evidence["adjusted"]["pairs"]  # same held-out probe


@pytest.mark.parametrize(
    "task, lang, extra, sets",
    [
        ("ner", "hi", [], {"wikiann.hi"}),
        # TyDi QA ru is not in the offline folder: skipped with a note in results.json.
        ("qa", "ru", ["task.max_length=128", "task.options.doc_stride=32"],
         {"xquad.ru", "xquad.q-ru.c-en", "xquad.q-en.c-ru"}),
    ],
)
def test_ner_and_qa_jobs(tmp_path, cache_dir, shared_data, task, lang, extra, sets):
    cfg = compose_job(tmp_path / "run", cache_dir, f"task={task}", f"lang={lang}", "data=shared",
                      f"data.root={shared_data}", "task.epochs=1", "task.train_limit=48", "task.eval_limit=16", *extra)
    results = pipeline.run_job(cfg)
    assert set(results["metrics"]) == sets
    assert set(results.get("skipped_eval_sets", {})) == ({"tydiqa"} if task == "qa" else set())
    for name in sets:
        records = read_jsonl(tmp_path / "run" / "predictions" / f"{name}.jsonl")
        assert len(records) == 16 and all("id" in r for r in records)


def test_slurm_launcher_without_partition_is_one_line():
    result = xlt("-m", "hydra/launcher=slurm", "lang=ru")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "xlt: error: hydra/launcher=slurm needs hydra.launcher.partition "
        "(pass it, or set it in conf/hydra/launcher/slurm.yaml)"
    )


def test_slurm_launcher_config_composes():
    """With a partition the submitit Slurm launcher config is complete (not submitted here)."""
    from hydra import compose, initialize_config_dir

    from xlt.config import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.max_num_timeout == 3


def test_evaluation_predicts_each_input_once_in_length_sorted_batches(tmp_path):
    """Evaluation predicts length-sorted batches (little padding), predicts an
    input another set of the job already had only once (the mixed-XNLI halves
    are subsets of the mixed set), and hands the task its outputs in feature
    order: each output is its own feature's."""
    lengths = [9, 2, 7, 2, 5, 11, 3, 8]
    features = [{"input_ids": [100 + i] * n, "attention_mask": [1] * n, "labels": i} for i, n in enumerate(lengths)]
    subset = [features[5], features[1], features[1]]  # a half: inputs seen before, one twice
    widths: list[int] = []

    class Trainer:
        callbacks: list = []  # no ProgressLines to name the prediction

        def predict(self, module, loader):
            out = []
            for batch in loader:
                widths.append(batch["input_ids"].shape[1])
                out.append([ids[:1].float() for ids in batch["input_ids"]])  # identifies the feature
            return out

    class Task:
        collate = staticmethod(lambda tokenizer, batch: {"input_ids": torch.tensor([f["input_ids"] + [0] * (
            max(len(g["input_ids"]) for g in batch) - len(f["input_ids"])) for f in batch])})

        def features(self, tokenizer, examples, train):
            return examples

        def score(self, eval_set, feats, outputs):
            return {"accuracy": 1.0}, [{"id": f["labels"], "output": int(o[0])} for f, o in zip(feats, outputs)]

    sets = [type("EvalSet", (), {"name": name, "examples": examples})() for name, examples in (("all", features), ("half", subset))]
    pipeline.evaluate(Trainer(), None, Task(), None, sets, 3, tmp_path)
    assert widths == [3, 8, 11]  # sorted by length: [2,2,3] [5,7,8] [9,11] (file order: 9, 11, 8); the half: none
    assert [r["output"] for r in read_jsonl(tmp_path / "all.jsonl")] == [100 + i for i in range(len(lengths))]
    assert [r["output"] for r in read_jsonl(tmp_path / "half.jsonl")] == [105, 101, 101]


def test_a_planted_pickle_in_the_cache_never_runs(tmp_path, tiny_cache):
    """A crafted pickle written as a cached last.ckpt (with a done.json) and as
    Lightning's hpc_ckpt_*.ckpt: the job refuses them, sets them aside, trains
    from the last good state (none here: from step 0), and the payload never runs."""
    from xlt.keys import checkpoint_dir

    marker = tmp_path / "PAYLOAD_RAN"
    cfg = compose_job(tmp_path / "run", tiny_cache, "seed=3")
    folder = checkpoint_dir(cfg)
    folder.mkdir(parents=True)
    evil = ("import os, torch\nclass P:\n    def __reduce__(self):\n        return (os.system, ('touch {marker}',))\n"
            "torch.save({{'global_step': {step}, 'state_dict': {{}}, 'optimizer_states': [], 'loops': {{}}, 'p': P()}}, '{path}')")
    for name, step in (("last.ckpt", 4), ("hpc_ckpt_9.ckpt", 9)):
        subprocess.run([sys.executable, "-c", evil.format(marker=marker, step=step, path=folder / name)], check=True)
    (folder / "done.json").write_text(json.dumps({"global_step": 4}))
    results = pipeline.run_job(cfg)
    assert not marker.exists()
    assert results["status"] == "ok" and results["training"]["resumed_from_step"] == 0 and results["training"]["steps"] == 4
    assert sorted(p.name.split(".corrupt-")[0] for p in folder.glob("*.corrupt-*")) == ["done.json", "hpc_ckpt_9.ckpt", "last.ckpt"]


def test_a_kill_before_done_json_reuses_the_finished_training(tmp_path, tiny_cache):
    """SIGKILL between the weights-only save of a finished training and its
    done.json used to fail every rerun (resuming from weights only)."""
    overrides = [*SMALL, f"paths.cache_dir={tiny_cache}", f"hydra.run.dir={tmp_path / 'run'}"]
    killed = subprocess.run([sys.executable, str(REPO / "tests" / "kill_at_step.py"), "0", *overrides], cwd=REPO,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "XLT_TEST_STAGE": "done-json"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    (folder,) = tiny_cache.glob("checkpoints/*")
    assert not (folder / "done.json").exists() and "optimizer_states" not in torch.load(folder / "last.ckpt", weights_only=True)
    rerun = xlt(*overrides)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    training = json.loads((tmp_path / "run" / "results.json").read_text())["training"]
    assert training["reused_checkpoint"] and training["steps"] == 4
    assert json.loads((folder / "done.json").read_text()) == {"global_step": 4}


def test_max_length_beyond_the_position_embeddings_is_one_line(tmp_path):
    """A 1,000-word premise with task.max_length=100000 failed deep in the
    embedding layer (a 129-line traceback); now one line before any training."""
    data = tmp_path / "data"
    train = data / "nli" / "xnli" / "dev-en.tsv"
    train.parent.mkdir(parents=True)
    real = (REPO / "data" / "demo" / "nli" / "xnli" / "dev-en.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    _, hypothesis, label = real[0].rstrip("\n").split("\t")
    train.write_text(" ".join(["word"] * 1000) + f"\t{hypothesis}\t{label}\n" + "".join(real[1:40]), encoding="utf-8")
    for name in ("test-ru.tsv", "test-en.tsv"):
        (train.parent / name).write_text((REPO / "data" / "demo" / "nli" / "xnli" / name).read_text(encoding="utf-8"))
    result = xlt(*SMALL, f"data.root={data}", "task.max_length=100000", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == ("xlt: error: task.max_length=100000 is longer than model=tiny "
                                                      "can read (512 positions); set task.max_length=512 or less")


def test_a_full_disk_is_one_line_and_leaves_no_truncated_checkpoint(tmp_path, tiny_cache, monkeypatch):
    import shutil
    from collections import namedtuple

    from xlt.errors import XltError
    from xlt.keys import checkpoint_dir

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    cfg = compose_job(tmp_path / "run", tiny_cache, "trainer.checkpoint_every_n_steps=1", "seed=5")
    with pytest.raises(XltError) as err:
        pipeline.run_job(cfg)
    folder = checkpoint_dir(cfg)
    assert str(err.value).startswith(f"no space left on device writing {folder}/last.ckpt: needs ")
    assert str(err.value).endswith("1.0 MB free there; free some space (or set paths.cache_dir / hydra.run.dir "
                                   "elsewhere) and rerun the same command")
    # no checkpoint, no temporary file: the lock and the folder's training record (written before training)
    assert sorted(p.name for p in folder.iterdir()) == ["train.lock", "training.json"]
