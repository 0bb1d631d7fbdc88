"""One job: align → adjust → fine-tune → evaluate, reusing cached artifacts.

Read top to bottom like a recipe.  Each stage is a function of the config;
alignments and adjusted models are content-addressed artifacts shared by all
jobs of a sweep (``xlt.artifacts``), so a 3-task × 3-mode sweep adjusts once
per (language, corpus setting, seed), not once per job.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from xlt import __version__
from xlt.artifacts import atomic_write_text, build_once, config_hash, file_checksum, write_json, write_jsonl
from xlt.config import TokensConfig
from xlt.errors import XltError

log = logging.getLogger(__name__)

# Keys that identify a configuration in results.json and in reports.
IDENTITY = ("model", "lang", "task", "mode", "corpus", "size", "aggregation", "tokens", "aligner", "seed")


# ---------------------------------------------------------------------------
# Identity and provenance
# ---------------------------------------------------------------------------
def identity(cfg: DictConfig) -> dict[str, Any]:
    """The table-cell coordinates of a job."""
    return {
        "model": cfg.model.name,
        "lang": cfg.lang.code,
        "task": cfg.task.name,
        "mode": cfg.mode.name,
        "corpus": cfg.corpus.name if cfg.mode.adjust else None,
        "size": cfg.corpus.size if cfg.mode.adjust else None,
        "aggregation": cfg.aggregation.name if cfg.mode.adjust else None,
        "tokens": cfg.tokens.name if cfg.mode.adjust else None,
        "aligner": cfg.aligner.name if cfg.mode.adjust else None,
        "seed": cfg.seed,
    }


def code_version() -> str:
    """Package version plus the git commit of the checkout, when there is one."""
    import subprocess

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+git{sha}" if sha else __version__


def job_hash(cfg: DictConfig, with_seed: bool = True) -> str:
    """Hash of everything that changes a job's result (not paths or display)."""
    payload = OmegaConf.to_container(cfg, resolve=True)
    payload.pop("paths", None)
    payload.pop("command", None)
    payload.get("trainer", {}).pop("enable_progress_bar", None)
    if not with_seed:
        payload.pop("seed", None)
    return config_hash(payload)


def training_hash(cfg: DictConfig) -> str:
    """Hash of what changes the *fine-tuned model*.

    Evaluation-only settings are left out, and so is the language when no
    adjustment is involved: English fine-tuning of the original model is the
    same for es, ru, vi and hi, so a sweep over languages trains it once and
    the other jobs reuse its checkpoint.
    """
    payload = OmegaConf.to_container(cfg, resolve=True)
    for key in ("paths", "command"):
        payload.pop(key, None)
    payload["trainer"].pop("enable_progress_bar", None)
    for key in ("eval_limit", "eval_batch_size"):
        payload["task"].pop(key, None)
    payload["data"].pop("skip_missing_eval", None)
    payload["lang"] = payload["lang"]["code"] if cfg.mode.adjust else None
    if not cfg.mode.adjust:
        for key in ("corpus", "aggregation", "tokens", "aligner"):
            payload.pop(key, None)
    return config_hash(payload)


# ---------------------------------------------------------------------------
# Stage 1: sample and align a parallel corpus (cached)
# ---------------------------------------------------------------------------
@dataclass
class AlignedCorpus:
    """Word-tokenised sample and held-out pairs with their word alignments."""

    train: list[Any]
    train_alignments: list[list[tuple[int, int]]]
    heldout: list[Any]
    heldout_alignments: list[list[tuple[int, int]]]
    path: Path


def corpus_path(cfg: DictConfig) -> str:
    from xlt.data import parallel

    return parallel.corpus_path(cfg.corpus, cfg.lang.code, cfg.data.root)


def align_stage(cfg: DictConfig, tokenizer=None) -> AlignedCorpus:
    """Sample ``corpus.size`` pairs with the job's seed and align them, once.

    With ``aggregation=subword`` the aligner runs on subword tokens of the
    model's tokenizer, so the artifact is keyed by the model too.
    """
    from xlt.data.align import align_corpus, read_pharaoh, write_pharaoh
    from xlt.data.parallel import prepare_corpus
    from xlt.data.words import subword_pairs

    subword = cfg.aggregation.name == "subword"
    key = {
        "corpus": OmegaConf.to_container(cfg.corpus, resolve=True),
        "resolved_path": corpus_path(cfg),
        "lang": cfg.lang.code,
        "seed": cfg.seed,
        "aligner": OmegaConf.to_container(cfg.aligner, resolve=True),
        "subword_model": cfg.model.name if subword else None,
        "joint_heldout_alignment": True,
    }
    name = f"{cfg.lang.code}-{cfg.corpus.name}-{cfg.corpus.size}-{cfg.aligner.name}{'-subword' if subword else ''}-s{cfg.seed}"
    target = Path(cfg.paths.cache_dir) / "alignments" / f"{name}-{config_hash(key)}"

    def build(tmp: Path) -> None:
        train, heldout = prepare_corpus(cfg.corpus, cfg.lang.code, cfg.data.root, cfg.seed)
        if not train:
            raise XltError(f"the parallel corpus sample is empty: {corpus_path(cfg)}")
        if subword:
            train, heldout = subword_pairs(tokenizer, train), subword_pairs(tokenizer, heldout)
        # One unsupervised alignment model for both parts: the held-out pairs
        # are never trained on by the *encoder*, but aligning 100 sentences
        # on their own would give fast_align too little data.
        log.info("aligning %d + %d held-out pairs with %s", len(train), len(heldout), cfg.aligner.name)
        alignments = align_corpus(train + heldout, cfg.aligner)
        for split, pairs, links in (("train", train, alignments[: len(train)]), ("heldout", heldout, alignments[len(train) :])):
            write_pairs(tmp / f"{split}.tsv", pairs)
            write_pharaoh(tmp / f"{split}.align", links)
        write_json(tmp / "key.json", key)

    path = build_once(target, build)
    train, heldout = read_pairs(path / "train.tsv"), read_pairs(path / "heldout.tsv")
    return AlignedCorpus(
        train, read_pharaoh(path / "train.align", len(train)), heldout, read_pharaoh(path / "heldout.align", len(heldout)), path
    )


def write_pairs(path: Path, pairs: list[Any]) -> None:
    atomic_write_text(path, "".join(" ".join(p.english) + "\t" + " ".join(p.target) + "\n" for p in pairs))


def read_pairs(path: Path) -> list[Any]:
    from xlt.data.parallel import SentencePair

    with open(path, encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    return [SentencePair(english.split(" "), target.split(" ")) for english, target in rows]


def aligned_examples(cfg: DictConfig, tokenizer, corpus: AlignedCorpus, heldout: bool = False):
    """Span examples for the adjustment loss (or, held out, for distance probes
    on words only)."""
    from xlt.data.words import build_aligned_examples

    tokens = TokensConfig(name="words", use_words=True, use_cls=False, use_sep=False) if heldout else cfg.tokens
    pairs, alignments = (corpus.heldout, corpus.heldout_alignments) if heldout else (corpus.train, corpus.train_alignments)
    return build_aligned_examples(
        tokenizer, pairs, alignments, cfg.aggregation.name, tokens, max_length=128, drop_identical=cfg.aligner.drop_identical
    )


# ---------------------------------------------------------------------------
# Stage 2: adjust the encoder (cached)
# ---------------------------------------------------------------------------
# The mode settings that change an adjusted model (continual-only ones do not).
ADJUST_KEYS = ("lr", "batch_size", "epochs", "warmup_ratio", "reg_weight", "target", "reduction", "dropout", "freeze_embeddings")


def adjusted_key(cfg: DictConfig) -> dict[str, Any]:
    """What an adjusted model depends on (its cache key)."""
    keys = ("model", "corpus", "aggregation", "tokens", "aligner")
    key = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys}
    mode = cfg.mode
    key.update(lang=cfg.lang.code, seed=cfg.seed, data_root=cfg.data.root)
    key.update({k: mode[k] for k in ADJUST_KEYS})
    return key


def adjust_stage(cfg: DictConfig) -> Path:
    """The adjusted encoder's directory (built once per distinct setting)."""
    from xlt.models.encoder import load_tokenizer

    key = adjusted_key(cfg)
    name = f"{cfg.model.name}-{cfg.lang.code}-{cfg.corpus.name}-{cfg.corpus.size}-{cfg.aggregation.name}-{cfg.tokens.name}-s{cfg.seed}"
    target = Path(cfg.paths.cache_dir) / "adjusted" / f"{name}-{config_hash(key)}"
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    return build_once(target, lambda tmp: train_adjustment(cfg, tokenizer, tmp))


def train_adjustment(cfg: DictConfig, tokenizer, out: Path) -> None:
    """Align (cached), train Eq. 1 for one epoch, save encoder + evidence."""
    from xlt.analysis.distances import distance_summary
    from xlt.models.adjust import AdjustModule, AlignmentLoss, collate_aligned, freeze_copy
    from xlt.models.encoder import load_encoder
    from xlt.models.finetune import EpochShuffleSampler, ListDataset

    corpus = align_stage(cfg, tokenizer)
    examples = aligned_examples(cfg, tokenizer, corpus)
    probe = aligned_examples(cfg, tokenizer, corpus, heldout=True)
    if not examples:
        raise XltError(f"no aligned word pairs in the sample of {corpus_path(cfg)}")
    L.seed_everything(cfg.seed, verbose=False)
    encoder = load_encoder(cfg.model, cfg.paths.cache_dir)
    reference = freeze_copy(encoder)
    pad = tokenizer.pad_token_id
    before = distance_summary(encoder, probe, pad, reference) if probe else {}
    mode = cfg.mode
    module = AdjustModule(
        encoder,
        AlignmentLoss(reference, mode.target, reduction=mode.reduction),
        mode.lr,
        mode.reg_weight,
        mode.warmup_ratio,
        dropout=mode.dropout,
        freeze_embeddings=mode.freeze_embeddings,
    )
    loader = torch.utils.data.DataLoader(
        ListDataset(list(range(len(examples)))),
        batch_size=cfg.mode.batch_size,
        sampler=EpochShuffleSampler(len(examples), cfg.seed),
        collate_fn=lambda idx: collate_aligned([examples[i] for i in idx], pad, idx),
    )
    probe_cb = DistanceProbe(probe[:PROBE_PAIRS], pad, reference, every=max(1, len(loader) * mode.epochs // PROBES))
    trainer = make_trainer(
        cfg, max_epochs=mode.epochs, checkpoint_dir=None, log_dir=out / "logs", callbacks=[probe_cb], accumulate_grad_batches=1
    )
    started = time.time()
    trainer.fit(module, loader)
    encoder = module.encoder.cpu()
    after = distance_summary(encoder, probe, pad, reference.cpu()) if probe else {}
    encoder.save_pretrained(out)
    tokenizer.save_pretrained(out)
    evidence = {
        "pairs": len(examples),
        "heldout_pairs": len(probe),
        "steps": trainer.global_step,
        "seconds": round(time.time() - started, 1),
        "original": before,
        "adjusted": after,
        "during": probe_cb.trajectory,
        "alignments": str(corpus.path),
    }
    write_json(out / "evidence.json", evidence)
    log.info("adjustment evidence: %s", json.dumps(evidence))


PROBES, PROBE_PAIRS = 4, 100  # distance probes during adjustment, on this many held-out pairs


class DistanceProbe(L.Callback):
    """Records held-out related / unrelated distances and English drift every
    ``every`` steps while adjusting (evidence *during* adjustment)."""

    def __init__(self, examples: list[Any], pad_id: int, reference, every: int):
        self.examples, self.pad_id, self.reference, self.every = examples, pad_id, reference, every
        self.trajectory: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.examples and trainer.global_step % self.every == 0:
            from xlt.analysis.distances import distance_summary

            summary = distance_summary(pl_module.encoder, self.examples, self.pad_id, self.reference)
            self.trajectory.append({"step": trainer.global_step, **summary})


# ---------------------------------------------------------------------------
# Stage 3 + 4: fine-tune on English, evaluate zero-shot
# ---------------------------------------------------------------------------
def make_trainer(
    cfg: DictConfig, max_epochs: float, checkpoint_dir: Path | None, log_dir: Path, callbacks=(), **override: Any
) -> L.Trainer:
    """A Lightning Trainer from ``cfg.trainer`` (``override`` replaces its values)."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    callbacks = list(callbacks)
    if checkpoint_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=0, every_n_epochs=1))
    t = {**OmegaConf.to_container(cfg.trainer), **override}
    epochs = int(max_epochs) if float(max_epochs).is_integer() else max(1, int(max_epochs + 0.999))
    return L.Trainer(
        accelerator=t["accelerator"],
        devices=t["devices"],
        strategy=t["strategy"],
        precision=t["precision"],
        num_nodes=t["num_nodes"],
        max_epochs=epochs,
        max_steps=t["max_steps"],
        accumulate_grad_batches=t["accumulate_grad_batches"],
        log_every_n_steps=t["log_every_n_steps"],
        enable_progress_bar=t["enable_progress_bar"],
        enable_checkpointing=checkpoint_dir is not None,
        enable_model_summary=False,
        callbacks=callbacks,
        logger=CSVLogger(str(log_dir), name="", version=""),
        deterministic=False,
    )


def build_objective(cfg: DictConfig, tokenizer, encoder):
    """The continual-learning auxiliary loss, on the adjustment sample."""
    from xlt.models.adjust import AlignmentLoss, freeze_copy
    from xlt.models.continual import ContinualObjective
    from xlt.models.encoder import load_encoder

    corpus = align_stage(cfg, tokenizer)
    examples = aligned_examples(cfg, tokenizer, corpus)
    if not examples:
        raise XltError(f"mode=continual: no aligned pairs in the sample of {corpus_path(cfg)}")
    reference = load_encoder(cfg.model, cfg.paths.cache_dir) if cfg.mode.reference == "original" else freeze_copy(encoder)
    loss = AlignmentLoss(freeze_copy(reference), cfg.mode.target, cache=True, reduction=cfg.mode.reduction)
    return ContinualObjective(
        examples, tokenizer.pad_token_id, loss, cfg.mode.alpha, cfg.mode.continual_reg_weight, cfg.mode.align_batch_size, cfg.seed
    )


def validate(cfg: DictConfig) -> None:
    """Checks that the schema's types cannot express."""
    mode = cfg.mode
    if mode.alpha < 0 or mode.continual_reg_weight < 0 or mode.reg_weight < 0:
        raise XltError("mode.alpha, mode.reg_weight and mode.continual_reg_weight must be >= 0")
    if mode.init not in ("adjusted", "original") or mode.reference not in ("original", "init"):
        raise XltError("mode.init must be adjusted|original and mode.reference original|init")
    if cfg.task.name not in cfg.lang.eval_sets:
        raise XltError(f"no {cfg.task.name} evaluation sets for lang={cfg.lang.code}; add them to conf/lang/{cfg.lang.code}.yaml")


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Run one job and write results.json, predictions/ and checkpoints/."""
    from xlt.models.encoder import load_encoder, load_tokenizer
    from xlt.models.finetune import FineTuneModule, task_loader
    from xlt.tasks.base import build_task

    validate(cfg)
    out = Path(cfg.paths.output_dir)
    started = time.time()
    task = build_task(cfg.task, cfg.lang.code, cfg.data, list(cfg.lang.eval_sets[cfg.task.name]))
    eval_sets, skipped = load_eval_sets(task, cfg.data.skip_missing_eval)  # early: fail before training
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)

    adjusted = adjust_stage(cfg) if cfg.mode.adjust and not (cfg.mode.continual and cfg.mode.init == "original") else None
    L.seed_everything(cfg.seed, verbose=False)
    encoder = load_encoder(cfg.model, cfg.paths.cache_dir, str(adjusted) if adjusted else None)
    objective = build_objective(cfg, tokenizer, encoder) if cfg.mode.continual else None
    module = FineTuneModule(encoder, task, cfg.task.lr, cfg.task.weight_decay, cfg.task.warmup_ratio, cfg.seed, objective)

    train = task.features(tokenizer, task.train_examples(), train=True)
    micro_batch = max(1, cfg.task.batch_size // cfg.trainer.accumulate_grad_batches)
    loader = task_loader(task, tokenizer, train, micro_batch, cfg.seed, cfg.trainer.num_workers)
    checkpoints = Path(cfg.paths.cache_dir) / "checkpoints" / training_hash(cfg)
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
