"""Stages 3 and 4: fine-tune on English (optionally with the continual
objective), evaluate zero-shot, write results.json and per-example predictions.

``run_job`` reads top to bottom like a recipe: align and adjust (cached,
shared by every job of a sweep), fine-tune (checkpoint keyed by the training
hash), evaluate.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
from filelock import FileLock
from omegaconf import DictConfig

from xlt.artifacts import file_checksum, write_json, write_jsonl
from xlt.errors import XltError
from xlt.keys import checkpoint_dir, code_version, corpus_path, identity, job_hash
from xlt.stages.adjust import adjust_stage
from xlt.stages.align import align_stage, aligned_examples
from xlt.stages.trainer import make_trainer

log = logging.getLogger(__name__)


def build_objective(cfg: DictConfig, tokenizer, encoder):
    """The continual-learning auxiliary loss, on the adjustment sample."""
    from xlt.models.adjust import AlignmentLoss, freeze_copy
    from xlt.models.continual import ContinualObjective
    from xlt.models.encoder import load_encoder

    corpus = align_stage(cfg, tokenizer)
    examples = aligned_examples(cfg, tokenizer, corpus)
    if not examples:
        raise XltError(f"mode=continual: no aligned pairs in the sample of {corpus_path(cfg)}")
    continual = cfg.continual
    reference = load_encoder(cfg.model, cfg.paths.cache_dir) if continual.reference == "original" else freeze_copy(encoder)
    loss = AlignmentLoss(freeze_copy(reference), cfg.adjustment.target, cache=True, reduction=cfg.adjustment.reduction)
    return ContinualObjective(
        examples, tokenizer.pad_token_id, loss, continual.alpha, continual.reg_weight, continual.align_batch_size, cfg.seed
    )


def validate(cfg: DictConfig) -> None:
    """Checks that the schema's types cannot express."""
    continual = cfg.continual
    if continual.alpha < 0 or continual.reg_weight < 0 or cfg.adjustment.reg_weight < 0:
        raise XltError("continual.alpha, continual.reg_weight and adjustment.reg_weight must be >= 0")
    if continual.init not in ("adjusted", "original") or continual.reference not in ("original", "init"):
        raise XltError("continual.init must be adjusted|original and continual.reference original|init")
    if cfg.task.name not in cfg.lang.eval_sets:
        raise XltError(f"no {cfg.task.name} evaluation sets for lang={cfg.lang.code}; add them to conf/lang/{cfg.lang.code}.yaml")


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Run one job and write results.json, predictions/ and checkpoints/."""
    from xlt.models.encoder import load_encoder, load_tokenizer
    from xlt.models.finetune import FineTuneModule, task_loader
    from xlt.tasks.base import build_task

    validate(cfg)
    if cfg.task.name == "retrieval":  # evaluation only: xlt/tasks/retrieval.py
        from xlt.tasks.retrieval import run_retrieval

        results = run_retrieval(cfg)
        print(format_metrics(results))
        return results
    out = Path(cfg.paths.output_dir)
    started = time.time()
    task = build_task(cfg.task, cfg.lang.code, cfg.data, list(cfg.lang.eval_sets[cfg.task.name]))
    eval_sets, skipped = load_eval_sets(task, cfg.data.skip_missing_eval)  # early: fail before training
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)

    adjusted = adjust_stage(cfg) if cfg.mode.adjust and not (cfg.mode.continual and cfg.continual.init == "original") else None
    L.seed_everything(cfg.seed, verbose=False)
    encoder = load_encoder(cfg.model, cfg.paths.cache_dir, str(adjusted) if adjusted else None)
    objective = build_objective(cfg, tokenizer, encoder) if cfg.mode.continual else None
    module = FineTuneModule(encoder, task, cfg.task.lr, cfg.task.weight_decay, cfg.task.warmup_ratio, cfg.seed, objective)

    train = task.features(tokenizer, task.train_examples(), train=True)
    micro_batch = max(1, cfg.task.batch_size // cfg.trainer.accumulate_grad_batches)
    loader = task_loader(task, tokenizer, train, micro_batch, cfg.seed, cfg.trainer.num_workers)
    checkpoints = checkpoint_dir(cfg)
    link_checkpoints(out, checkpoints)
    trainer = make_trainer(cfg, cfg.task.epochs, checkpoints, out / "logs")
    resume = checkpoints / "last.ckpt"
    with FileLock(str(checkpoints / "train.lock")):  # concurrent twins wait, then reuse
        if resume.exists():
            log.info("resuming from %s", resume)
        trainer.fit(module, loader, ckpt_path=str(resume) if resume.exists() else None)
    if trainer.world_size > 1:  # DDP: rank 0 evaluates every example on one device
        if trainer.global_rank != 0:
            return {}
        trainer = make_trainer(cfg, cfg.task.epochs, None, out / "logs", devices=1, strategy="auto", num_nodes=1)

    metrics = evaluate(trainer, module, task, tokenizer, eval_sets, cfg.task.eval_batch_size, out / "predictions")
    results = {
        "config": {**identity(cfg), "config_hash": job_hash(cfg, with_seed=False), "code_version": code_version(),
                   "data_checksums": data_checksums(cfg)},
        "metrics": metrics,
        "status": "ok",
        "runtime_s": round(time.time() - started, 1),
    }
    if skipped:
        results["skipped_eval_sets"] = skipped
    if adjusted:
        results["adjustment"] = json.loads((adjusted / "evidence.json").read_text())
    if cfg.mode.adjust:  # does fine-tuning undo the adjustment? (the paper's "forgetting")
        results["finetuned_distances"] = finetuned_distances(cfg, tokenizer, module.encoder)
    write_json(out / "results.json", results)
    print(format_metrics(results))
    return results


def format_metrics(results: dict[str, Any]) -> str:
    """A short, human-readable table of one job's metrics."""
    c = results["config"]
    lines = [f"{c['task']} | model={c['model']} lang={c['lang']} mode={c['mode']} seed={c['seed']}"]
    for name, values in results["metrics"].items():
        shown = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        lines.append(f"  {name:<28} {shown}")
    return "\n".join(lines)


def finetuned_distances(cfg: DictConfig, tokenizer, encoder) -> dict[str, float]:
    """Held-out related / unrelated distances of the fine-tuned encoder."""
    from xlt.analysis.distances import distance_summary

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
        raise XltError(f"no evaluation set available for {task.name} lang={task.lang}: " + "; ".join(dict.fromkeys(skipped.values())))
    return sets, skipped


def evaluate(trainer, module, task, tokenizer, eval_sets, batch_size: int, out: Path) -> dict[str, dict[str, float]]:
    """Predict every evaluation set, score it, write per-example records."""
    from xlt.models.finetune import task_loader

    out.mkdir(parents=True, exist_ok=True)
    metrics = {}
    for eval_set in eval_sets:
        features = task.features(tokenizer, eval_set.examples, train=False)
        batches = trainer.predict(module, task_loader(task, tokenizer, features, batch_size, seed=None))
        outputs = [row.numpy() for batch in batches for row in batch]
        metrics[eval_set.name], records = task.score(eval_set, features, outputs)
        write_jsonl(out / f"{eval_set.name}.jsonl", records)
        log.info("%s: %s", eval_set.name, metrics[eval_set.name])
    return metrics


def link_checkpoints(out: Path, checkpoints: Path) -> None:
    """``<run dir>/checkpoints`` points at the stable, config-keyed checkpoint
    folder, so a rerun or a requeued Slurm job resumes instead of restarting."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    link = out / "checkpoints"
    if not link.exists() and not link.is_symlink():
        os.symlink(checkpoints.resolve(), link, target_is_directory=True)


def data_checksums(cfg: DictConfig) -> dict[str, str]:
    """Checksums of the local data files a job read (provenance)."""
    if cfg.data.source != "local":
        return {}
    files: list[str] = []
    for value in cfg.task.local.values():
        templates = value.values() if isinstance(value, DictConfig) else value if not isinstance(value, str) else [value]
        files += [os.path.join(cfg.data.root, str(t).format_map(_Fill(lang=cfg.lang.code))) for t in templates]
    if cfg.mode.adjust:
        files.append(corpus_path(cfg))
    return {f: file_checksum(f) for f in sorted(set(files)) if os.path.isfile(f)}


class _Fill(dict):
    """``str.format_map`` filler that leaves unknown placeholders as they are."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
