"""Stages 3 and 4: fine-tune on English (optionally with the continual
objective), evaluate zero-shot, write results.json and per-example predictions.

``run_job`` reads top to bottom like a recipe: align and adjust (cached,
shared by every job of a sweep), fine-tune (checkpoint keyed by the training
hash), evaluate.  An evaluation-only task (``Task.trains`` false: sentence
retrieval) takes the other branch, ``evaluate_states``: it scores the model
states the cache holds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from xlt import results as results_file
from xlt import stopping
from xlt.artifacts import lock_unless_read_only, write_json, write_jsonl
from xlt.checkpoints import State, shapes_of, usable_state
from xlt.checkpoints import load as load_checkpoint
from xlt.contract import validate
from xlt.errors import XltError
from xlt.keys import TRAINING_RECORD, checkpoint_dir, corpus_path, data_checksums, pin_code, starts_adjusted, training_record
from xlt.models.inputs import model_inputs
from xlt.revisions import start_job
from xlt.stages.adjust import adjust_stage
from xlt.stages.align import align_stage, aligned_examples, heldout_sentences
from xlt.stages.trainer import check_hardware, ddp_job, describe_progress, fit_resumable, make_trainer, one_device
from xlt.tracking import log_kept, log_results, mark_tracked, rewind_curve, stage_run

log = logging.getLogger(__name__)


def build_objective(cfg: DictConfig, tokenizer, encoder):
    """The continual-learning auxiliary loss, on the adjustment sample."""
    from xlt.models.adjust import freeze_copy
    from xlt.models.encoder import load_encoder

    corpus = align_stage(cfg, tokenizer)
    examples = aligned_examples(cfg, tokenizer, corpus)
    if not examples:
        raise XltError(f"mode=continual: no aligned pairs in the sample of {corpus_path(cfg)}")
    reference = load_encoder(cfg.model, cfg.paths.cache_dir) if cfg.continual.reference == "original" else encoder
    return continual_objective(cfg, examples, tokenizer.pad_token_id, freeze_copy(reference))


def continual_objective(cfg: DictConfig, examples, pad_id: int, reference, cache: bool = True):
    """``ContinualObjective`` from ``cfg.continual`` / ``cfg.adjustment`` and a
    frozen ``reference`` (``bench/`` calls this too, with the cache switch)."""
    from xlt.models.adjust import AlignmentLoss
    from xlt.models.continual import ContinualObjective

    continual, settings = cfg.continual, cfg.adjustment
    loss = AlignmentLoss(reference, settings.target, cache=cache, reduction=continual.reduction,
                         objective=settings.objective, temperature=settings.temperature)
    return ContinualObjective(examples, pad_id, loss, continual.alpha, continual.reg_weight, continual.align_batch_size, cfg.seed)


def report_info(task) -> dict[str, Any]:
    """What the task declares about its tables (results.json's ``report``)."""
    return {"title": task.cfg.title or task.cfg.name, "significance": task.significance, "headline": list(task.headline)}


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Run one job and write results.json, predictions/ and checkpoints/."""
    from xlt.models.encoder import load_encoder, load_pooler, load_tokenizer, local_model
    from xlt.models.finetune import FineTuneModule
    from xlt.tasks.registry import build_task

    validate(cfg)
    check_hardware(cfg)  # here, where the job runs (a sweep may be submitted from a machine without a GPU)
    local_model(cfg.model)  # ... and so is a model folder (model.pretrained=/path) checked
    pin_code()  # results.json names the source this job starts with
    start_job()  # ... and the hub commits this job loads, not an earlier job's of this process
    task = build_task(cfg)
    if not task.trains:
        return evaluate_states(cfg, task)
    out = Path(cfg.paths.output_dir)
    if (done := results_file.finished(out, cfg, data_checksums(cfg))) is not None:  # a rerun of a sweep
        log_kept(cfg, out, done)  # a tracker chosen since gets its hyperparameters and metrics
        print(format_metrics(done))
        return done
    started = time.time()
    eval_sets, skipped = load_eval_sets(task, cfg.data.skip_missing_eval)  # early: fail before training
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)

    adjusted = adjust_stage(cfg) if starts_adjusted(cfg) else None
    L.seed_everything(cfg.seed, verbose=False)
    encoder = load_encoder(cfg.model, cfg.paths.cache_dir, str(adjusted) if adjusted else None)
    check_max_length(cfg, task, tokenizer, encoder)
    objective = build_objective(cfg, tokenizer, encoder) if cfg.mode.continual else None
    pooler = load_pooler(cfg.model, cfg.paths.cache_dir) if cfg.task.head == "bert" else None
    module = FineTuneModule(encoder, task, cfg.task.lr, cfg.task.weight_decay, cfg.task.warmup_ratio, cfg.seed, objective,
                            adam_eps=cfg.task.adam_eps, pooler=pooler)

    train = task.features(tokenizer, task.train_examples(), train=True)
    inputs = data_checksums(cfg)  # provenance: the content just read (and that keys the checkpoint)
    checkpoints = checkpoint_dir(cfg)
    link_checkpoints(out, checkpoints, cfg)
    with stage_run(cfg, "finetune", out / "logs") as loggers:  # after the adjustment's run has ended
        trainer, training = fine_tune(cfg, module, task, tokenizer, train, checkpoints, out, loggers)
        if trainer.world_size > 1:  # DDP: rank 0 evaluates every example on one device
            if trainer.global_rank != 0:
                return {}
            trainer = make_trainer(cfg, cfg.task.epochs, None, out / "logs", loggers=loggers, **one_device())
        notes: dict[str, dict] = {}
        metrics = evaluate(trainer, module, task, tokenizer, eval_sets, cfg.task.eval_batch_size, out / "predictions", notes)
        log_results(loggers, cfg, metrics, training["steps"])

    results = results_file.ok_results(cfg, metrics, started, inputs, report_info(task))
    results["training"] = training
    results["states"] = {**({"adjusted": str(adjusted.resolve())} if adjusted else {}),
                         "finetuned": str((checkpoints / "last.ckpt").resolve())}
    if skipped:
        results["skipped_eval_sets"] = skipped
    if notes:
        results["eval_notes"] = notes
    if adjusted:
        results["adjustment"] = json.loads((adjusted / "evidence.json").read_text())
    if cfg.mode.adjust:  # does fine-tuning undo the adjustment? (the paper's "forgetting")
        results["finetuned_distances"] = finetuned_distances(cfg, tokenizer, module.encoder)
    results_file.write(out, results)
    mark_tracked(cfg, out, fresh=True)
    print(format_metrics(results))
    return results


@stopping.in_stage("fine-tuning")
def fine_tune(cfg: DictConfig, module, task, tokenizer, train: list, checkpoints: Path, out: Path, loggers: list):
    """Fine-tune, resuming from the newest usable checkpoint when an earlier run
    of the same training left one (mid-epoch included), and return the trainer
    and the ``training`` record of results.json.  The job's CSV curve is
    rewound to the step the training resumes from (``xlt.tracking.rewind_curve``).

    Each process gets ``task.batch_size / (accumulate_grad_batches x world
    size)`` examples per micro-batch, so the effective batch is the task's
    (the paper's 32) on any number of GPUs.  Only rank 0 of a job takes the
    lock that makes concurrent twins (same training hash) wait: under DDP
    the other ranks are started by Lightning or srun and must reach the
    rendezvous, not the lock.  A finished training keeps the weights only
    (``done.json`` marks it); the optimizer state is needed only to resume.
    Checkpoints are read as data and checked first (``xlt.checkpoints``): an
    unusable one is set aside and the training goes on from the last good state.
    A stop signal writes the checkpoint at the next step boundary, then stops.
    """
    from xlt.models.finetune import SamplerPosition, task_loader

    trainer = make_trainer(cfg, cfg.task.epochs, checkpoints, out / "logs", loggers=loggers, use_distributed_sampler=False)
    micro_batch = micro_batch_size(cfg, trainer.world_size)
    loader = task_loader(task, tokenizer, train, micro_batch, cfg.seed, cfg.trainer.num_workers)
    trainer.callbacks.insert(0, SamplerPosition(loader))
    lock = lock_unless_read_only(checkpoints / "train.lock", f"the training in {checkpoints}")
    with lock if trainer.global_rank == 0 else nullcontext():
        state = usable_state(checkpoints, shapes_of(module))
        if state.kind == "finished":  # a twin (or an earlier run) finished this training: reuse its weights
            # This job's own curve of that training (it was stopped after training) stays, its evaluation rows go
            # (they are logged again); a job that reuses another's training has no curve of it.
            rewind_curve(loggers, state.step, checkpoints.name)
            return trainer, {**load_finished(module, state), "processes": trainer.world_size, "micro_batch": micro_batch}
        with ddp_job(out):
            fit_resumable(trainer, module, loader, state, checkpoints, loggers, "training")
    return trainer, {"resumed_from_step": state.step, "steps": trainer.global_step, "reused_checkpoint": False,
                     "processes": trainer.world_size, "micro_batch": micro_batch}


def check_max_length(cfg: DictConfig, task, tokenizer, encoder) -> None:
    """A feature longer than the encoder's position embeddings would fail
    deep inside the model on the first long input (an IndexError, a CUDA
    assert): one line before any work instead, naming the setting
    (``task.max_length``, NER's ``task.options.eval_max_length``)."""
    from xlt.models.encoder import max_positions

    limit = max_positions(encoder)
    for setting, length in task.input_lengths(tokenizer).items():
        if limit is not None and length > limit:
            value = OmegaConf.select(cfg, setting)
            shown = value if value is not None else f"null ({length} for this model)"
            raise XltError(f"{setting}={shown} is longer than model={cfg.model.name} can read "
                           f"({limit} positions); set {setting}={limit} or less")


def micro_batch_size(cfg: DictConfig, world_size: int) -> int:
    """Examples per process and micro-batch that keep the effective batch."""
    parts = cfg.trainer.accumulate_grad_batches * world_size
    if cfg.task.batch_size % parts:
        raise XltError(f"task.batch_size={cfg.task.batch_size} is not divisible by trainer.accumulate_grad_batches "
                       f"({cfg.trainer.accumulate_grad_batches}) x processes ({world_size})")
    return cfg.task.batch_size // parts


def load_finished(module, state: State) -> dict[str, Any]:
    """Load the weights of a finished training into ``module`` (as data only;
    ``usable_state`` checked that they fit)."""
    module.load_state_dict(load_checkpoint(state.path)["state_dict"])
    log.info("training: reusing the finished checkpoint %s (%d steps)", state.path, state.step)
    return {"resumed_from_step": state.step, "steps": state.step, "reused_checkpoint": True}


def format_metrics(results: dict[str, Any]) -> str:
    """A short, human-readable table of one job's metrics."""
    c = results["config"]
    lines = [f"{c['task']} | model={c['model']} lang={c['lang']} mode={c['mode']} seed={c['seed']}"]
    for name, values in results["metrics"].items():
        shown = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        lines.append(f"  {name:<28} {shown}")
    return "\n".join(lines)


@stopping.in_stage("evaluation")
def finetuned_distances(cfg: DictConfig, tokenizer, encoder) -> dict[str, float]:
    """Held-out related / unrelated distances of the fine-tuned encoder."""
    from xlt.evaluation.distances import distance_summary

    probe = aligned_examples(cfg, tokenizer, align_stage(cfg, tokenizer), heldout=True)
    return distance_summary(encoder, probe, tokenizer.pad_token_id) if probe else {}


def load_eval_sets(task, skip_missing: bool) -> tuple[list, dict[str, str]]:
    """The task's evaluation sets; with ``skip_missing`` a set whose local file
    is absent is left out with a warning (and reported) instead of failing."""
    from xlt.errors import MissingFileError

    names, sets, skipped = list(task.eval_set_names), [], {}
    for name in names:
        task.eval_set_names = [name]
        try:
            sets += task.eval_sets()
        except MissingFileError as err:
            if not skip_missing:
                raise
            skipped[name] = str(err)
            log.warning("skipping evaluation set %s: %s", name, err)
    task.eval_set_names = names
    if not sets:
        raise XltError(f"no evaluation set available for {task.cfg.name} lang={task.lang}: " + "; ".join(dict.fromkeys(skipped.values())))
    return sets, skipped


@stopping.in_stage("evaluation")
def evaluate(trainer, module, task, tokenizer, eval_sets, batch_size: int, out: Path,
             notes: dict[str, dict] | None = None) -> dict[str, dict[str, float]]:
    """Predict every evaluation set, score it, write per-example records;
    ``notes`` (when given) gets the task's ``eval_note`` of each set that has one.

    Each distinct model input is predicted once per job: the mixed-XNLI parts
    (premise / hypothesis replaced) repeat inputs of the mixed set (all of them
    without ``task.eval_limit``), so they cost few forward passes of their own.
    """
    from xlt.models.finetune import task_loader

    out.mkdir(parents=True, exist_ok=True)
    metrics = {}
    known: dict[tuple, Any] = {}  # model input -> output, shared by the sets of this job
    for eval_set in eval_sets:
        features = task.features(tokenizer, eval_set.examples, train=False)
        keys = [model_input(f) for f in features]
        new = first_occurrences(keys, known)
        order = [new[i] for i in length_order([features[i] for i in new])]
        describe_progress(trainer, f"evaluation {eval_set.name}")
        batches = trainer.predict(module, task_loader(task, tokenizer, [features[i] for i in order], batch_size, seed=None)) if order else []
        predicted = [row.numpy() for batch in batches for row in batch]
        if len(predicted) != len(order):
            raise RuntimeError(f"{len(predicted)} predictions for {len(order)} features of {eval_set.name}")
        known.update((keys[i], output) for i, output in zip(order, predicted))
        metrics[eval_set.name], records = task.score(eval_set, features, [known[key] for key in keys])
        write_jsonl(out / f"{eval_set.name}.jsonl", records)
        if notes is not None and (note := task.eval_note(records)):
            notes[eval_set.name] = note
        log.info("%s: %s", eval_set.name, metrics[eval_set.name])
    return metrics


def model_input(feature: dict) -> tuple:
    """What the encoder sees of a feature (equal inputs, equal outputs in eval mode)."""
    return tuple(tuple(feature[k]) for k in model_inputs(feature))


def first_occurrences(keys: list[tuple], known: dict[tuple, Any]) -> list[int]:
    """Indices of the first feature of every input not predicted yet."""
    seen: set[tuple] = set()
    first = []
    for index, key in enumerate(keys):
        if key not in known and key not in seen:
            seen.add(key)
            first.append(index)
    return first


def length_order(features: list[dict]) -> list[int]:
    """Feature indices by input length: batches of similar lengths pad little
    (XNLI ru test: 1.8x fewer token positions than in file order)."""
    return sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))


def link_checkpoints(out: Path, checkpoints: Path, cfg: DictConfig) -> None:
    """``<run dir>/checkpoints`` points at the stable, config-keyed checkpoint
    folder, so a rerun or a requeued Slurm job resumes instead of restarting.
    The folder records the training config it holds (``keys.TRAINING_RECORD``),
    which is how ``xlt.stages.states`` finds it for another job."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    record = checkpoints / TRAINING_RECORD
    if not record.exists():
        try:
            write_json(record, training_record(cfg))
        except PermissionError:  # a read-only cache: readers cannot find this state by its record
            log.warning("cannot write %s (read-only cache): other jobs will not find this checkpoint by its settings", record)
    out.mkdir(parents=True, exist_ok=True)
    point_link(out / "checkpoints", checkpoints.resolve())


def point_link(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target``, replacing a link to anything else
    (a rerun into the folder with another config must not leave it at the
    earlier run's checkpoint) in one atomic rename, so a reader never finds
    it missing.  Something that is not a symlink is the user's: left as it
    is, with one warning."""
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return
    elif link.exists():
        log.warning("%s is not a symlink: left as it is (this run's checkpoints are in %s)", link, target)
        return
    temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary, target_is_directory=True)
    os.replace(temporary, link)


def evaluate_states(cfg: DictConfig, task) -> dict[str, Any]:
    """The job of an evaluation-only task: find the model states it
    evaluates (``task.state_names``, or ``task.options.checkpoints``), let
    the task score them, write results.json.  Always run (the states on
    disk may have changed since a previous run)."""
    from xlt.stages.states import find_states

    started = time.time()
    out = Path(cfg.paths.output_dir)
    states = find_states(cfg, task.state_names(cfg.mode), task.state_paths(), task.finetuned_task, log.warning,
                         setting="task.options.checkpoints")
    metrics, extras = task.run(cfg, states, lambda: heldout_sentences(cfg), out)
    with stage_run(cfg, "evaluate", out / "logs") as loggers:  # every job in the tracker, this one too
        log_results(loggers, cfg, metrics, step=0)
    results = results_file.ok_results(cfg, metrics, started, extras.pop("data_checksums", {}), report_info(task))
    results.update(extras)
    results_file.write(out, results)
    mark_tracked(cfg, out, fresh=True)
    print(format_metrics(results))
    return results
