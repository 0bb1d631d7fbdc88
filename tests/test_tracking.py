"""Experiment trackers as researchers use them (xlt/tracking.py): each test
runs real jobs (tiny model, demo data) and reads back what the tracker wrote,
offline: W&B's offline run files, the MLflow store, TensorBoard event files,
the CSV record.  A run must hold the job's resolved config and every
evaluation metric of its results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from xlt.contract import compose as compose_config
from xlt.tracking import CsvRecord, evaluation_scalars

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "data=demo", "task.train_limit=64", "task.eval_limit=12", "task.epochs=2",
        "trainer.enable_progress_bar=false"]
ADJUSTED = ["mode=adjusted", "corpus=demo", "corpus.size=120", "corpus.heldout=30"]


def xlt(cache: Path, *args: str, tmp: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``xlt [-m] TINY args`` offline, in this checkout, with a fresh cache."""
    flags = [a for a in args if a == "-m"]
    env = {**os.environ, "XLT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(tmp / "wandb-config"), "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
           "WANDB_DATA_DIR": str(tmp / "wandb-data"), **(env or {})}
    result = subprocess.run([sys.executable, "-m", "xlt", *flags, *TINY, *(a for a in args if a != "-m")], cwd=REPO, capture_output=True, text=True,
                            env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def stopped(cache: Path, step: int, stage: str, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    """``xlt TINY args`` stopped by SIGTERM (as ``scancel`` or a requeue) at
    ``step`` of ``stage`` (tests/kill_at_step.py): exit 143."""
    env = {**os.environ, "XLT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "XLT_TEST_SIGNAL": "SIGTERM",
           "XLT_TEST_STAGE": stage}
    result = subprocess.run([sys.executable, str(REPO / "tests" / "kill_at_step.py"), str(step), *TINY, *args], cwd=REPO,
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 143, result.stderr[-3000:]
    return result


def job_results(sweep: Path) -> dict[str, dict]:
    """results.json of every job folder, by folder name."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))}


def assert_metrics(logged: dict[str, float], results: dict) -> None:
    """Every evaluation metric of results.json, under eval/<set>/<metric>, with its value."""
    expected = evaluation_scalars(results["metrics"])
    assert len(expected) == 8  # 4 eval sets x (accuracy, n)
    assert {k: pytest.approx(v, rel=1e-6) for k, v in expected.items()} == {k: logged.get(k) for k in expected}


# ---------------------------------------------------------------------------
# Readers of the trackers' own files
# ---------------------------------------------------------------------------
def wandb_records(path: Path):
    """Records of a W&B transaction log (``run-<id>.wandb``): a 7-byte header,
    then LevelDB log blocks of 32 KiB (chunk = crc32, length, type; FULL=1,
    FIRST=2, MIDDLE=3, LAST=4) holding ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, pending = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_runs(sweep: Path) -> list[dict]:
    """Every offline W&B run under ``sweep``: name, group, job type, config, history, summary."""

    def key(item) -> str:  # a name with "/" may come as its nested parts
        return item.key or "/".join(item.nested_key)
    runs = []
    for path in sorted(sweep.glob("*/logs/wandb/offline-run-*/run-*.wandb")):
        run = {"job": path.parents[3].name, "config": {}, "history": [], "summary": {}}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                info = record.run
                run.update(id=info.run_id, name=info.display_name, group=info.run_group, job_type=info.job_type)
                run["config"].update({key(i): json.loads(i.value_json) for i in info.config.update})
            elif kind == "config":
                run["config"].update({key(i): json.loads(i.value_json) for i in record.config.update})
            elif kind == "history":
                run["history"].append({key(i): json.loads(i.value_json) for i in record.history.item})
            elif kind == "summary":
                run["summary"].update({key(i): json.loads(i.value_json) for i in record.summary.update})
        runs.append(run)
    return runs


def overrides(job_dir: Path) -> str:
    """The job's overrides as Hydra names them (its override_dirname)."""
    return ",".join(sorted(OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")))


def tensorboard_hparams(folder: Path) -> dict:
    """The hyperparameters TensorBoard's HParams view shows for the run in
    ``folder`` (its latest session-start record), or {} when it has none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(folder))
    events.Reload()
    try:
        blobs = events.PluginTagToContent("hparams").values()
    except KeyError:  # no hparams record at all
        return {}
    hparams = {}
    for blob in blobs:
        data = plugin_data_pb2.HParamsPluginData.FromString(blob)
        if data.WhichOneof("data") == "session_start_info":
            hparams = dict(data.session_start_info.hparams)
    return hparams


# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_wandb_one_run_per_job_and_adjustment_never_merged(tmp_path, tiny_cache):
    """-m seed=1,2 logger=wandb (offline), adjusted: each job a fine-tuning run
    named after its overrides, grouped by the sweep, holding the resolved
    config and every evaluation metric; each adjustment its own run with its
    loss curve; nothing merged (Lightning alone reuses the first run)."""
    from xlt.tracking import WANDB_CHARS, shortened

    sweep = tmp_path / "sweep"
    xlt(tiny_cache, "-m", "seed=1,2", *ADJUSTED, "logger=wandb", f"hydra.sweep.dir={sweep}", tmp=tmp_path)
    jobs, runs = job_results(sweep), wandb_runs(sweep)
    finetune = {run["job"]: run for run in runs if run["job_type"] == "finetune"}
    adjust = [run for run in runs if run["job_type"] == "adjust"]
    assert sorted(finetune) == sorted(jobs) == ["0", "1"] and len(runs) == 4 and len({run["id"] for run in runs}) == 4
    for job, run in finetune.items():
        assert run["name"] == shortened(overrides(sweep / job), WANDB_CHARS) and run["group"] == str(sweep)  # TINY makes it longer than W&B takes
        resolved = jobs[job]["config"]["resolved"]
        assert {k: v for k, v in run["config"].items() if k != "_wandb"} == json.loads(json.dumps(resolved))
        assert_metrics(run["summary"], jobs[job])
        assert any("train/task_loss" in row for row in run["history"])  # the training curve
    assert sorted(run["name"] for run in adjust) == sorted(shortened(f"{overrides(sweep / job)} [adjust]", WANDB_CHARS) for job in jobs)
    for run in adjust:
        assert any("adjust/loss" in row for row in run["history"]) and not any("train/task_loss" in row for row in run["history"])
        assert run["group"] == str(sweep) and run["config"]["seed"] in (1, 2)


@pytest.mark.slow
def test_mlflow_sweep_is_one_experiment_in_a_sqlite_store(tmp_path, tiny_cache):
    """logger=mlflow with the release pip installs: a sqlite store in the sweep
    folder, experiment = the sweep, one run per job with the resolved config as
    params, every evaluation metric and the training curve."""
    from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
    from mlflow.tracking import MlflowClient

    sweep = tmp_path / "sweep"
    xlt(tiny_cache, "-m", "seed=1,2", "logger=mlflow", f"hydra.sweep.dir={sweep}", tmp=tmp_path)
    jobs = job_results(sweep)
    client = MlflowClient(f"sqlite:///{sweep / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(str(sweep))
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(overrides(sweep / job) for job in jobs) and len(jobs) == 2
    for job, results in jobs.items():
        run = runs[overrides(sweep / job)]
        assert run.info.status == "FINISHED"
        params = {k: str(v)[:250] for k, v in _flatten_dict(_convert_params(results["config"]["resolved"])).items()}
        assert run.data.params == params and run.data.params["seed"] == str(results["config"]["seed"])
        assert_metrics(run.data.metrics, results)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/task_loss")] == [3]  # 4 steps
    assert not (REPO / "mlruns").exists()


@pytest.mark.slow
def test_tensorboard_one_folder_per_job_with_hparams_and_metrics(tmp_path, tiny_cache):
    """logger=tensorboard: logs/tensorboard/<overrides>/ per job; the event files
    hold the training curve, every evaluation metric and the resolved config
    in the HParams view."""
    from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    sweep = tmp_path / "sweep"
    xlt(tiny_cache, "-m", "seed=1,2", "logger=tensorboard", f"hydra.sweep.dir={sweep}", tmp=tmp_path)
    jobs = job_results(sweep)
    assert len(jobs) == 2
    for job, results in jobs.items():
        (folder,) = (sweep / job / "logs" / "tensorboard").iterdir()
        assert folder.name == overrides(sweep / job)
        events = EventAccumulator(str(folder))
        events.Reload()
        assert_metrics({tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}, results)
        assert [e.step for e in events.Scalars("train/task_loss")] == [3]
        hparams = {}
        for blob in events.PluginTagToContent("hparams").values():
            data = plugin_data_pb2.HParamsPluginData.FromString(blob)
            if data.WhichOneof("data") == "session_start_info":
                hparams = dict(data.session_start_info.hparams)
        expected = _flatten_dict(_convert_params(results["config"]["resolved"]))
        assert set(hparams) == set(expected) and hparams["seed"].number_value == results["config"]["seed"]
        assert hparams["task/lr"].number_value == pytest.approx(results["config"]["resolved"]["task"]["lr"])


@pytest.mark.slow
def test_kept_result_logs_to_a_newly_chosen_tracker_once(tmp_path, tiny_cache):
    """A finished job rerun with only the logger changed is kept (not run
    again) and still gives the new tracker its hyperparameters and metrics; a
    third run with the same tracker adds nothing."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    xlt(tiny_cache, f"hydra.run.dir={run}", tmp=tmp_path)
    first = json.loads((run / "results.json").read_text())
    xlt(tiny_cache, "logger=tensorboard", f"hydra.run.dir={run}", tmp=tmp_path)
    assert "already holds this job's result" in (run / "train.log").read_text()
    assert json.loads((run / "results.json").read_text()) == first
    (folder,) = (run / "logs" / "tensorboard").iterdir()
    events = EventAccumulator(str(folder))
    events.Reload()
    assert_metrics({tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}, first)
    assert events.PluginTagToContent("hparams")
    files = sorted(folder.glob("events.out.tfevents.*"))
    xlt(tiny_cache, "logger=tensorboard", f"hydra.run.dir={run}", tmp=tmp_path)
    assert sorted(folder.glob("events.out.tfevents.*")) == files


def train_rows(run: Path) -> list[tuple[str, str]]:
    """(step, training loss) rows of a job's logs/metrics.csv."""
    return [(row["step"], row["train/task_loss"]) for row in read_csv(run / "logs" / "metrics.csv") if row.get("train/task_loss")]


@pytest.mark.slow
def test_a_job_stopped_during_evaluation_keeps_its_curve_when_rerun(tmp_path, tiny_cache):
    """SIGTERM at the first evaluation batch, after training finished, then a
    rerun in place (a requeue): the rerun reuses the finished training and
    logs/metrics.csv keeps the curve the first run wrote (it was rewound to
    step 0: every row gone), with the evaluation once.  A sibling job that
    reuses the training has no curve of it."""
    run, sibling = tmp_path / "run", tmp_path / "sibling"
    stopped(tiny_cache, 0, "evaluation", "trainer.log_every_n_steps=1", f"hydra.run.dir={run}", tmp=tmp_path)
    curve = train_rows(run)
    assert [step for step, _ in curve] == ["0", "1", "2", "3"]  # 2 epochs of 2 steps
    xlt(tiny_cache, "trainer.log_every_n_steps=1", f"hydra.run.dir={run}", tmp=tmp_path)
    training = json.loads((run / "results.json").read_text())["training"]
    assert training["reused_checkpoint"] and training["steps"] == 4
    assert train_rows(run) == curve
    assert [row["step"] for row in read_csv(run / "logs" / "metrics.csv") if row["eval/xnli.ru/accuracy"]] == ["4"]

    xlt(tiny_cache, "trainer.log_every_n_steps=1", "lang=hi", f"hydra.run.dir={sibling}", tmp=tmp_path)
    assert json.loads((sibling / "results.json").read_text())["training"]["reused_checkpoint"]
    assert train_rows(sibling) == [] and [row["step"] for row in read_csv(sibling / "logs" / "metrics.csv")] == ["4"]


@pytest.mark.slow
def test_a_resumed_mlflow_run_takes_changed_bookkeeping_settings(tmp_path, tiny_cache):
    """A job stopped at step 6 and rerun with another checkpoint interval (the
    same job and training: its run continues) failed at start with MLflow's
    "Changing param values is not allowed".  Now it is one run: the curve of
    both executions once each, the param as the run started, the new value
    as the tag xlt.changed/<param>."""
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    args = ["task.train_limit=96", "task.batch_size=8", "trainer.log_every_n_steps=2", "logger=mlflow", f"hydra.run.dir={run}"]
    stopped(tiny_cache, 6, "fine-tuning", *args, "trainer.checkpoint_every_n_steps=4", tmp=tmp_path)
    xlt(tiny_cache, *args, "trainer.checkpoint_every_n_steps=8", tmp=tmp_path)
    results = json.loads((run / "results.json").read_text())
    assert results["training"]["resumed_from_step"] == 6 and results["training"]["steps"] == 24
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    (finetune,) = client.search_runs([client.get_experiment_by_name("xlt").experiment_id])
    assert finetune.info.status == "FINISHED"
    assert finetune.data.params["trainer/checkpoint_every_n_steps"] == "4"
    assert finetune.data.tags["xlt.changed/trainer/checkpoint_every_n_steps"] == "8"
    assert [m.step for m in client.get_metric_history(finetune.info.run_id, "train/task_loss")] == list(range(1, 24, 2))
    assert_metrics(finetune.data.metrics, results)
    assert (run / "train.log").read_text().count("continues with 1 setting(s) changed since it started") == 1


@pytest.mark.slow
def test_tensorboard_takes_a_long_override_list_and_shows_the_adjustments_config(tmp_path, tiny_cache):
    """An override list over 255 bytes (a cluster path) crashed
    logger=tensorboard after training ("File name too long"): the folder name
    is shortened (its start + a hash).  The adjustment's run had no config in
    the HParams view (Lightning writes it only with metrics, which that run
    never gets): every run's session now starts with it."""
    from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

    from xlt.tracking import shortened

    cache = tmp_path / ("cache-on-a-cluster-" + "x" * 200)
    cache.symlink_to(tiny_cache)
    run = tmp_path / "run"
    xlt(tiny_cache, *ADJUSTED, "logger=tensorboard", f"paths.cache_dir={cache}", f"hydra.run.dir={run}", tmp=tmp_path)
    name = overrides(run).replace("/", "_")  # one folder
    (folder,) = (run / "logs" / "tensorboard").iterdir()
    assert len(name.encode()) > 255 and folder.name == shortened(name, size=255) and len(folder.name.encode()) == 255
    assert name.startswith(folder.name[:-9]) and folder.name.startswith("corpus.heldout=30,corpus.size=120,corpus=demo,")
    results = json.loads((run / "results.json").read_text())
    expected = set(_flatten_dict(_convert_params(results["config"]["resolved"])))
    for stage in (folder, folder / "adjust"):
        hparams = tensorboard_hparams(stage)
        assert set(hparams) == expected and hparams["seed"].number_value == 1, stage


@pytest.mark.slow
def test_a_retrieval_job_rerun_in_place_is_a_new_run(tmp_path, tiny_cache):
    """A retrieval job always evaluates again (README: it scores the states
    on disk), so each execution is a run of its own: rerun into its folder it
    logged a second evaluation at step 0 into the same MLflow run (and
    continued the W&B run).  Its progress shows outside a terminal."""
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    args = ["task=retrieval", "task.options.layer=all", "corpus=demo", "corpus.size=120", "corpus.heldout=30",
            f"hydra.run.dir={run}"]
    evaluations = []
    for logger in ("mlflow", "mlflow", "wandb", "wandb"):
        xlt(tiny_cache, *args, f"logger={logger}", tmp=tmp_path, env={"XLT_PROGRESS_S": "0"})
        evaluations.append(json.loads((run / "results.json").read_text()))
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("xlt").experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for mlrun, results in zip(runs, evaluations):
        assert_metrics(mlrun.data.metrics, results)
        for name in evaluation_scalars(results["metrics"]):
            assert [m.step for m in client.get_metric_history(mlrun.info.run_id, name)] == [0]
    wandb = wandb_runs(tmp_path)
    assert len(wandb) == 2 and wandb[0]["id"] != wandb[1]["id"]
    for wandb_run, results in zip(wandb, evaluations[2:]):
        assert_metrics(wandb_run["summary"], results)
    assert "retrieval original: English sentences: 1/1 batches" in (run / "train.log").read_text()


def test_long_names_are_shortened_readably():
    from xlt.tracking import shortened

    assert shortened("lang=ru,mode=adjusted,seed=2", 128, 255) == "lang=ru,mode=adjusted,seed=2"
    long = "corpus.path=/scratch/" + "данные/" * 40  # Cyrillic: 2 bytes a character
    first, second = shortened(long + "a.tsv", 128), shortened(long + "b.tsv", 128)
    assert first != second and first.startswith("corpus.path=/scratch/данные/") and len(first) == len(second) == 128
    assert first[-9:] == shortened(long + "a.tsv", size=255)[-9:]  # one job, one hash in every tracker
    assert len(shortened(long, size=255).encode()) <= 255 < len(long.encode()) and all(n[-9] == "~" for n in (first, second))


def test_tracker_names_fit_and_a_tensorboard_folder_that_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    """W&B fails a run name over 128 characters, MLflow keeps 250 in SQL,
    a folder name has at most 255 bytes: each tracker gets the name shortened
    to its limit.  TensorBoard's folder is made with the logger, so a failure
    is one line before training."""
    import xlt.tracking as tracking
    from xlt.errors import XltError

    long = "paths.cache_dir=/" + "x" * 300
    monkeypatch.setattr(tracking, "run_name", lambda cfg: long)
    monkeypatch.setenv("WANDB_MODE", "offline")
    compose = lambda logger: compose_config([f"paths.output_dir={tmp_path}", f"logger={logger}"])  # noqa: E731
    wandb = tracking.make_tracker(compose("wandb"), "adjust", tmp_path / "logs")
    assert wandb._wandb_init["name"] == tracking.shortened(long + " [adjust]", 128) and len(wandb._wandb_init["name"]) == 128
    mlflow = tracking.make_tracker(compose("mlflow"), "finetune", tmp_path / "logs")
    assert mlflow._run_name == tracking.shortened(long, 250) and len(mlflow._run_name) == 250
    tensorboard = tracking.make_tracker(compose("tensorboard"), "adjust", tmp_path / "logs")
    folder = tracking.shortened(long.replace("/", "_"), size=255)  # one folder: no "/" in its name
    assert Path(tensorboard.log_dir) == tmp_path / "logs" / "tensorboard" / folder / "adjust"
    assert Path(tensorboard.log_dir).is_dir()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(XltError, match=r"^cannot create logger lightning.pytorch.loggers.TensorBoardLogger: .*Not a directory"):
        tracking.make_tracker(compose("tensorboard"), "finetune", blocked)


# ---------------------------------------------------------------------------
# The CSV record
# ---------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict]:
    import csv

    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_record_appends_across_loggers_and_rewinds_to_the_resumed_step(tmp_path):
    """Lightning's CSVLogger deletes metrics.csv when its folder is not empty
    (every resume, DDP rank 0's second Trainer); the record keeps it, drops
    what a resumed training logs again, and starts empty for another training."""
    first = CsvRecord(tmp_path)
    first.resume(0, "training-a")  # a fresh training of checkpoint folder "training-a"
    first.log_hyperparams({"task": {"lr": 5e-5}})
    for step in range(6):
        first.log_metrics({"train/task_loss": 1.0 / (step + 1)}, step=step)  # written at once: a kill loses nothing
    assert [row["step"] for row in read_csv(tmp_path / "metrics.csv")] == ["0", "1", "2", "3", "4", "5"]

    second = CsvRecord(tmp_path)  # a requeued job resuming at step 4 of the same training
    second.resume(4, "training-a")
    second.log_metrics({"train/task_loss": 0.2, "eval/xnli.ru/accuracy": 0.5}, step=4)
    second.finalize("success")
    rows = read_csv(tmp_path / "metrics.csv")
    assert [(row["step"], row["train/task_loss"]) for row in rows] == [
        ("0", "1.0"), ("1", "0.5"), ("2", str(1 / 3)), ("3", "0.25"), ("4", "0.2")]
    assert rows[-1]["eval/xnli.ru/accuracy"] == "0.5" and rows[0]["eval/xnli.ru/accuracy"] == ""
    assert OmegaConf.load(tmp_path / "hparams.yaml").task.lr == 5e-5  # kept with the rows

    other = CsvRecord(tmp_path)  # the folder reused by a different training: no stale curve
    other.resume(2, "training-b")
    assert not (tmp_path / "metrics.csv").exists()


def test_evaluation_scalars_name_each_set_and_metric():
    metrics = {"xnli.ru": {"accuracy": 0.5, "n": 10}, "mlqa.es.es": {"f1": 61.0, "exact_match": 40.0, "n": 3}}
    assert evaluation_scalars(metrics) == {"eval/xnli.ru/accuracy": 0.5, "eval/xnli.ru/n": 10.0,
                                           "eval/mlqa.es.es/f1": 61.0, "eval/mlqa.es.es/exact_match": 40.0,
                                           "eval/mlqa.es.es/n": 3.0}


def test_a_missing_tracker_package_is_one_line(tmp_path, monkeypatch):
    import lightning.pytorch.loggers.mlflow as lightning_mlflow

    from xlt.errors import XltError
    from xlt.tracking import stage_loggers

    monkeypatch.setattr(lightning_mlflow, "_MLFLOW_AVAILABLE", False)
    cfg = compose_config([f"paths.output_dir={tmp_path}", "logger=mlflow"])
    with pytest.raises(XltError, match=r"cannot create logger lightning.pytorch.loggers.MLFlowLogger: .*\.\[tracking\]"):
        stage_loggers(cfg, "finetune", tmp_path)
