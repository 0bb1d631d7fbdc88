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


def xlt(cache: Path, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    """``xlt [-m] TINY args`` offline, in this checkout, with a fresh cache."""
    flags = [a for a in args if a == "-m"]
    env = {**os.environ, "XLT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(tmp / "wandb-config"), "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
           "WANDB_DATA_DIR": str(tmp / "wandb-data")}
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


# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_wandb_one_run_per_job_and_adjustment_never_merged(tmp_path, tiny_cache):
    """-m seed=1,2 logger=wandb (offline), adjusted: each job a fine-tuning run
    named after its overrides, grouped by the sweep, holding the resolved
    config and every evaluation metric; each adjustment its own run with its
    loss curve; nothing merged (Lightning alone reuses the first run)."""
    sweep = tmp_path / "sweep"
    xlt(tiny_cache, "-m", "seed=1,2", *ADJUSTED, "logger=wandb", f"hydra.sweep.dir={sweep}", tmp=tmp_path)
    jobs, runs = job_results(sweep), wandb_runs(sweep)
    finetune = {run["job"]: run for run in runs if run["job_type"] == "finetune"}
    adjust = [run for run in runs if run["job_type"] == "adjust"]
    assert sorted(finetune) == sorted(jobs) == ["0", "1"] and len(runs) == 4 and len({run["id"] for run in runs}) == 4
    for job, run in finetune.items():
        assert run["name"] == overrides(sweep / job) and run["group"] == str(sweep)
        resolved = jobs[job]["config"]["resolved"]
        assert {k: v for k, v in run["config"].items() if k != "_wandb"} == json.loads(json.dumps(resolved))
        assert_metrics(run["summary"], jobs[job])
        assert any("train/task_loss" in row for row in run["history"])  # the training curve
    assert sorted(run["name"] for run in adjust) == sorted(f"{run['name']} [adjust]" for run in finetune.values())
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
