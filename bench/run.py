"""Throughput benchmarks for continual learning and cross-lingual adjustment.

``make bench`` runs this script.  Eleven measurements, all on real data:

1. **Continual overhead** -- seconds per training step of continual
   fine-tuning (task batch 32 + aligned en-ru batch 16, alpha = 0.01, the
   frozen-vector cache on, as ``xlt.stages.job.build_objective`` wires it) against
   plain fine-tuning: same model, same task batches, same number of steps.
   NLI uses the English XNLI dev pairs of ``data/demo``; NER the English
   WikiANN training sentences of the shared data folder (skipped with a
   message when it is absent).
2. **Frozen reference cost** -- the same continual step with the frozen
   reference's vector cache off, and with the cache already holding every
   sentence of the timed steps (the steady state once sentences recur).
3. **Adjustment throughput** -- aligned pairs per second of xlt's
   adjustment step (``AdjustModule.training_step`` with ``AlignmentLoss``:
   English + target sentences in length-bucketed groups, the frozen reference
   on the English rows only with padding trimmed, fused Adam) against a naive
   reference implemented here (English and target batches in two separate
   forwards, each padded to 128, the frozen model on the English batch, padded
   to 128, every step, plain Adam): same loss terms, weights, batches (batch
   ``adjustment.batch_size`` = 32 pairs), interleaved.  Before timing, both losses
   are computed on one batch in eval mode and must agree to 1e-3 relative.
4. **Lightning cost** -- an xlt step against a plain ``transformers.Trainer``
   step (``bench/peer.py``).
5. **Evaluation order** -- predicting in length-sorted batches against file
   order (``bench/eval_order.py``).
6. **Align scale** -- ``xlt-align`` on WikiMatrix-sized pools (about 250K
   and 1M pairs) against the reference fast_align: wall, CPU, peak memory
   (``bench/align_scale.py``; ``--align-sizes`` selects the sizes).
7. **Train scale** -- MultiNLI- and SQuAD-size training sets (392,702 pairs,
   87,599 questions) tokenised into features as a job does, against plain lists: time, peak and held
   memory (``bench/train_scale.py``; ``--train-sizes`` and ``--qa-sizes`` select the sizes).
8.-11. **Scale of what grows with the paper's data** (``bench/scale.py``) --
   reading a 1.6M-line WikiMatrix file into a 250K pool and one job's draw
   from it, the adjustment examples of 250K pairs, the continual reference
   cache of 30K mBERT sentences, ``xlt-report`` on a 60-job sweep
   (``--pool-lines``, ``--examples-sizes``, ``--cache-sentences``,
   ``--report-jobs`` select the sizes).

How steps are timed: a plain Python loop drives the real
``LightningModule.training_step`` (so the task loss, the auxiliary loss and
the RNG fork run exactly as in a job), then ``loss.backward()``, the
optimiser step, the LR-scheduler step and ``zero_grad`` -- what Lightning's
automatic optimisation does, without the Trainer's bookkeeping (progress bar,
``self.log`` aggregation; ``self.log`` is a no-op without a Trainer).  The
step counter that ``ContinualObjective`` sees (``global_step``) advances as
in a Trainer, so every step draws a fresh aligned batch.  Fetching the task
batch from the real ``task_loader`` (collation included) is inside the timed
step.

The variants of one task are measured *interleaved*: step i of every variant
runs before step i+1 of any, in an order that rotates every step, so a busy
shared machine slows all variants alike.  The first ``--warmup`` steps of
every variant are discarded; reported are medians of the timed steps.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from xlt.stages import align as pipeline  # noqa: E402
from xlt.contract import compose as compose_config  # noqa: E402
from xlt.models.adjust import AdjustModule, AlignmentLoss, Batch, collate_aligned, constant_after_warmup, freeze_copy, reduce_squared  # noqa: E402
from xlt.models.continual import ContinualObjective  # noqa: E402
from xlt.stages.job import continual_objective  # noqa: E402
from xlt.models.encoder import load_encoder, load_tokenizer  # noqa: E402
from xlt.models.finetune import EpochShuffleSampler, FineTuneModule, task_loader  # noqa: E402
from xlt.models.pooling import pool_spans  # noqa: E402
from xlt.tasks.registry import build_task  # noqa: E402
from bench.align_scale import bench_align_scale, print_align_scale, sizes_from  # noqa: E402
from bench import scale, train_scale  # noqa: E402

TASK_NAMES = {"nli": "xnli", "ner": "ner"}  # bench name -> conf/task name
PAPER_SLOWDOWN = {"nli": 2.4, "ner": 5.0}  # the paper's code: continual vs plain fine-tuning
TARGET_SLOWDOWN = 1.25
TARGET_ADJUST_SPEEDUP = 1.5  # xlt's adjustment step vs the naive reference (pairs/s)


# ---------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------
class Stopwatch:
    """Accumulates wall time of wrapped calls (reset per step)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


class SteppedFineTune(FineTuneModule):
    """``FineTuneModule`` whose ``global_step`` advances without a Trainer.

    Only the step counter is replaced; ``training_step`` is the real one.
    """

    bench_step: int = 0

    @property
    def global_step(self) -> int:  # type: ignore[override]
        return self.bench_step


@dataclass
class Variant:
    """One way of training, stepped by :func:`run_interleaved`."""

    name: str
    step: Callable[[int], dict[str, float]]
    times: list[dict[str, float]] = field(default_factory=list)


def summarize(times: list[dict[str, float]]) -> dict[str, float]:
    """Median of every phase over the timed steps (seconds)."""
    return {phase: statistics.median(t[phase] for t in times) for phase in times[0]}


def run_interleaved(variants: list[Variant], warmup: int, steps: int, label: str) -> None:
    """Step all variants in turn, rotating the order each step; keep timed steps."""
    for i in range(warmup + steps):
        shift = i % len(variants)
        last: dict[str, float] = {}
        for variant in variants[shift:] + variants[:shift]:
            timing = variant.step(i)
            last[variant.name] = timing["total"]
            if i >= warmup:
                variant.times.append(timing)
        shown = "  ".join(f"{v.name}={last[v.name]:.3f}s" for v in variants)
        print(f"  [{label}] step {i + 1}/{warmup + steps}{' (warm-up)' if i < warmup else ''}: {shown}", flush=True)


# ---------------------------------------------------------------------------
# Fine-tuning variants
# ---------------------------------------------------------------------------
def real_optimizer(module, total_steps: int):
    """The optimiser and LR schedule of the module's own ``configure_optimizers``
    (what a job trains with), which reads only ``estimated_stepping_batches``
    from its Trainer: a stand-in provides that."""
    from types import SimpleNamespace

    module._trainer = SimpleNamespace(estimated_stepping_batches=total_steps)
    try:
        config = module.configure_optimizers()
    finally:
        module._trainer = None
    return config["optimizer"], config["lr_scheduler"]["scheduler"]


def cycle(loader) -> Iterator[dict[str, torch.Tensor]]:
    """Endless iteration over a DataLoader (a new epoch when it runs out)."""
    while True:
        yield from loader


def finetune_variant(
    name: str, encoder, task, features, tokenizer, cfg, objective: Optional[ContinualObjective], total_steps: int
) -> Variant:
    """A FineTuneModule (own copy of ``encoder``) stepped by hand."""
    module = SteppedFineTune(copy.deepcopy(encoder), task, cfg.task.lr, cfg.task.weight_decay, 0.0, cfg.seed, objective)
    module.train()
    optimizer, schedule = real_optimizer(module, total_steps)
    batches = cycle(task_loader(task, tokenizer, features, cfg.task.batch_size, cfg.seed))
    aux, reference = Stopwatch(), Stopwatch()
    if objective is not None:  # instance-level wrappers: time the auxiliary parts
        objective.step_loss = aux.wrap(objective.step_loss)  # type: ignore[method-assign]
        objective.loss.reference_vectors = reference.wrap(objective.loss.reference_vectors)  # type: ignore[method-assign]

    def step(i: int) -> dict[str, float]:
        aux.seconds = reference.seconds = 0.0
        module.bench_step = i
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        loss = module.training_step(batch, i)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        return {
            "total": t4 - t0,
            "data": t1 - t0,
            "task_forward": t2 - t1 - aux.seconds,
            "aux_forward": aux.seconds - reference.seconds,
            "reference_forward": reference.seconds,
            "backward": t3 - t2,
            "optimizer": t4 - t3,
        }

    return Variant(name, step)


def make_objective(examples, pad_id: int, reference, cfg, cache: bool) -> ContinualObjective:
    """The continual objective as ``xlt.stages.job.build_objective`` builds it
    (its own builder), with the cache switch exposed.  The frozen ``reference``
    is shared by all variants (the pipeline gives each job a private copy; the
    compute is the same, the memory of one e5_small copy per variant is not)."""
    return continual_objective(cfg, examples, pad_id, reference, cache=cache)


def bench_task(task_name: str, args: argparse.Namespace, ctx: dict[str, Any], section: str) -> dict[str, Any]:
    """Section 1 (``overhead``: plain vs continual as the pipeline wires it, cache
    starting empty) or section 2 (``cache``: continual with the cache off vs
    warm) for one task."""
    cfg = compose(args, f"task={task_name}", *ctx["data_overrides"][task_name])
    task = build_task(cfg)
    tokenizer = ctx["tokenizer"]
    examples = task.train_examples()
    features = task.features(tokenizer, examples, train=True)
    lengths = [len(f["input_ids"]) for f in features]
    steps, warmup = (args.steps, args.warmup) if section == "overhead" else (args.cache_steps, args.warmup)
    total = warmup + steps
    encoder, reference, aligned = ctx["encoder"], ctx["reference"], ctx["aligned"]
    pad = tokenizer.pad_token_id

    if section == "overhead":
        variants = [
            finetune_variant("plain", encoder, task, features, tokenizer, cfg, None, total),
            finetune_variant("continual", encoder, task, features, tokenizer, cfg,
                             make_objective(aligned, pad, reference, cfg, True), total),
        ]
    else:
        warm = make_objective(aligned, pad, reference, cfg, True)
        for i in range(total):  # pre-fill: every sentence of these steps was seen before
            warm.loss.reference_vectors(warm.batch(i))
        variants = [
            finetune_variant("continual_nocache", encoder, task, features, tokenizer, cfg,
                             make_objective(aligned, pad, reference, cfg, False), total),
            finetune_variant("continual_warmcache", encoder, task, features, tokenizer, cfg, warm, total),
        ]

    print(f"\n== {section}/{task_name}: {len(features)} training sentences, {len(aligned)} aligned en-{cfg.lang.code} pairs",
          flush=True)
    run_interleaved(variants, warmup, steps, f"{section}/{task_name}")
    result: dict[str, Any] = {
        "train_file": task.local_path("train"),
        "train_sentences": len(features),
        "mean_task_tokens": round(statistics.mean(lengths), 1),
        "task_batch_size": cfg.task.batch_size,
        "align_batch_size": cfg.continual.align_batch_size,
        "alpha": cfg.continual.alpha,
        "continual_reg_weight": cfg.continual.reg_weight,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "variants": {},
    }
    base = summarize(variants[0].times)["total"]
    for variant in variants:
        medians = summarize(variant.times)
        result["variants"][variant.name] = {
            "median_step_s": medians["total"],
            "steps_per_s": 1.0 / medians["total"],
            f"ratio_vs_{variants[0].name}": medians["total"] / base,
            "median_phases_s": medians,
            "step_s": [t["total"] for t in variant.times],
        }
    return result


# ---------------------------------------------------------------------------
# Adjustment throughput: xlt's step against a naive reference
# ---------------------------------------------------------------------------
NAIVE_LENGTH = 128  # the fixed padding of simple published code (pad_to_max_length=128)


def naive_length(aligned: list[Any]) -> int:
    """The naive reference's fixed padding: 128, or the longest sentence of the
    aligned set when one is longer (the adjustment encodes sentences whole)."""
    return max(NAIVE_LENGTH, *(max(len(e.en_ids), len(e.tgt_ids)) for e in aligned))


def collate_fixed(examples: list[Any], pad_id: int, length: int = NAIVE_LENGTH) -> Batch:
    """The naive collation: English and target sentences in two separate
    batches, each padded to a fixed ``length``; spans flattened as in
    ``collate_aligned`` but every row index counts within its own batch."""

    def pad(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return ids, mask

    def flat(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        table = torch.tensor([(b, s, e) for b, ex in enumerate(examples) for s, e in getattr(ex, name)],
                             dtype=torch.long).reshape(-1, 3)
        return table[:, 0], table[:, 1:]

    en_ids, en_mask = pad([e.en_ids for e in examples])
    tgt_ids, tgt_mask = pad([e.tgt_ids for e in examples])
    batch = {"en_ids": en_ids, "en_mask": en_mask, "tgt_ids": tgt_ids, "tgt_mask": tgt_mask}
    for name, key in (("pair_en", "pair_en"), ("pair_tgt", "pair_tgt"), ("reg_en", "reg")):
        batch[f"{key}_row"], batch[key] = flat(name)
    return batch


class NaiveAlignmentLoss:
    """Eq. 1 as simple published code computes it: the English batch and the
    target batch in two separate forwards, each padded to 128, and the frozen
    model on the English batch (padded to 128) every step.  Same terms, same
    span pooling (``pool_spans``) and reduction as ``AlignmentLoss``."""

    def __init__(self, reference, target: str = "current", reduction: str = "sum"):
        self.reference, self.target, self.reduction = reference, target, reduction
        self.reference_seconds = 0.0

    def __call__(self, encoder, batch: Batch) -> dict[str, torch.Tensor]:
        en = encoder(input_ids=batch["en_ids"], attention_mask=batch["en_mask"]).last_hidden_state
        tgt = encoder(input_ids=batch["tgt_ids"], attention_mask=batch["tgt_mask"]).last_hidden_state
        started = time.perf_counter()
        with torch.no_grad():
            frozen = self.reference(input_ids=batch["en_ids"], attention_mask=batch["en_mask"]).last_hidden_state
        self.reference_seconds += time.perf_counter() - started
        english = pool_spans(en, batch["pair_en_row"], batch["pair_en"])
        target = pool_spans(tgt, batch["pair_tgt_row"], batch["pair_tgt"])
        anchor = pool_spans(frozen, batch["pair_en_row"], batch["pair_en"]) if self.target == "frozen" else english
        english_reg = pool_spans(en, batch["reg_row"], batch["reg"]) - pool_spans(frozen, batch["reg_row"], batch["reg"])
        return {
            "pairs": reduce_squared(anchor - target, self.reduction),
            "regularizer": reduce_squared(english_reg, self.reduction),
        }


def xlt_positions(batch: Batch, buckets: int) -> tuple[int, int]:
    """Token positions xlt computes for one collated batch: (encoder, reference)."""
    lengths = batch["attention_mask"].sum(dim=1)
    size = int(batch["size"])
    reference = size * int(lengths[:size].max())
    if buckets <= 1 or len(lengths) <= buckets:
        return len(lengths) * int(lengths.max()), reference
    order = torch.argsort(lengths)
    return sum(len(rows) * int(lengths[rows].max()) for rows in torch.tensor_split(order, buckets)), reference


def check_same_loss(encoder, reference, aligned, pad: int, cfg, indices: list[int]) -> dict[str, Any]:
    """Sanity check: on one batch, in eval mode, xlt's ``AlignmentLoss`` and the
    naive loss agree (within 1e-3 relative).  The weights are perturbed a little
    so that f differs from f0 and the regularizer term is not zero."""
    model = copy.deepcopy(encoder).eval()
    generator = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(1 + 0.01 * torch.randn(param.shape, generator=generator))
    examples = [aligned[j] for j in indices]
    with torch.no_grad():
        ours = AlignmentLoss(reference, cfg.adjustment.target, reduction=cfg.adjustment.reduction)(
            model, collate_aligned(examples, pad, indices))
        naive = NaiveAlignmentLoss(reference, cfg.adjustment.target, cfg.adjustment.reduction)(
            model, collate_fixed(examples, pad, naive_length(aligned)))
    values: dict[str, Any] = {}
    for name in ("pairs", "regularizer", "total"):
        if name == "total":
            a = float(ours["pairs"] + cfg.adjustment.reg_weight * ours["regularizer"])
            b = float(naive["pairs"] + cfg.adjustment.reg_weight * naive["regularizer"])
        else:
            a, b = float(ours[name]), float(naive[name])
        rel = abs(a - b) / max(abs(a), abs(b), 1e-12)
        values[name] = {"xlt": a, "naive": b, "rel_diff": rel}
        assert rel < 1e-3, f"adjustment loss differs between xlt and the naive reference: {name} {a} vs {b}"
    print("  loss check (eval mode, one batch): " + "  ".join(
        f"{k} xlt={v['xlt']:.6g} naive={v['naive']:.6g} (rel {v['rel_diff']:.1e})" for k, v in values.items()), flush=True)
    return values


def bench_adjust(args: argparse.Namespace, ctx: dict[str, Any], cfg) -> dict[str, Any]:
    """Section 3: adjustment steps, xlt (``AdjustModule`` + ``AlignmentLoss``,
    fused Adam) against the naive reference, interleaved, same batches."""
    aligned, pad, mode = ctx["aligned"], ctx["tokenizer"].pad_token_id, cfg.adjustment
    size = mode.batch_size
    total = args.adjust_warmup + args.adjust_steps
    order = list(EpochShuffleSampler(len(aligned), cfg.seed))  # the adjustment loader's order

    def batch_indices(i: int) -> list[int]:
        return [order[(i * size + k) % len(order)] for k in range(size)]

    length = naive_length(aligned)
    print(f"\n== adjustment: batch {size} pairs, {len(aligned)} aligned pairs; xlt vs naive (padded to {length})",
          flush=True)
    check = check_same_loss(ctx["encoder"], ctx["reference"], aligned, pad, cfg, batch_indices(0))

    # xlt: AdjustModule as train_adjustment builds it; its own configure_optimizers (fused Adam).
    module = AdjustModule(copy.deepcopy(ctx["encoder"]), AlignmentLoss(ctx["reference"], mode.target, reduction=mode.reduction),
                          mode.lr, mode.reg_weight, mode.warmup_ratio, dropout=mode.dropout,
                          freeze_embeddings=mode.freeze_embeddings)
    module.encoder.train(mode.dropout)  # on_train_start
    xlt_opt, xlt_sched = real_optimizer(module, total)
    reference = Stopwatch()
    module.loss.reference_vectors = reference.wrap(module.loss.reference_vectors)  # type: ignore[method-assign]
    positions: dict[str, list[tuple[int, int]]] = {"xlt": [], "naive": []}
    real_tokens: list[int] = []

    def xlt_step(i: int) -> dict[str, float]:
        reference.seconds = 0.0
        indices = batch_indices(i)
        t0 = time.perf_counter()
        batch = collate_aligned([aligned[j] for j in indices], pad, indices)
        t1 = time.perf_counter()
        loss = module.training_step(batch, i)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        xlt_opt.step()
        xlt_sched.step()
        xlt_opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if i >= args.adjust_warmup:
            positions["xlt"].append(xlt_positions(batch, module.loss.buckets))
            real_tokens.append(int(batch["attention_mask"].sum()))
        return {"total": t4 - t0, "collate": t1 - t0, "forward": t2 - t1 - reference.seconds,
                "reference_forward": reference.seconds, "backward": t3 - t2, "optimizer": t4 - t3}

    # naive: own copy of the same weights, plain (for-loop) Adam as simple code has it.
    naive_encoder = copy.deepcopy(ctx["encoder"]).train(mode.dropout)
    if mode.freeze_embeddings:
        naive_encoder.get_input_embeddings().weight.requires_grad_(False)
    naive_loss = NaiveAlignmentLoss(ctx["reference"], mode.target, mode.reduction)
    naive_opt = torch.optim.Adam([p for p in naive_encoder.parameters() if p.requires_grad], lr=mode.lr, betas=(0.9, 0.98), eps=1e-9)
    naive_sched = torch.optim.lr_scheduler.LambdaLR(naive_opt, constant_after_warmup(int(mode.warmup_ratio * total)))

    def naive_step(i: int) -> dict[str, float]:
        naive_loss.reference_seconds = 0.0
        t0 = time.perf_counter()
        batch = collate_fixed([aligned[j] for j in batch_indices(i)], pad, length)
        t1 = time.perf_counter()
        terms = naive_loss(naive_encoder, batch)
        loss = terms["pairs"] + mode.reg_weight * terms["regularizer"]
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        naive_opt.step()
        naive_sched.step()
        naive_opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if i >= args.adjust_warmup:
            positions["naive"].append((2 * size * length, size * length))
        return {"total": t4 - t0, "collate": t1 - t0, "forward": t2 - t1 - naive_loss.reference_seconds,
                "reference_forward": naive_loss.reference_seconds, "backward": t3 - t2, "optimizer": t4 - t3}

    variants = [Variant("naive", naive_step), Variant("xlt", xlt_step)]
    run_interleaved(variants, args.adjust_warmup, args.adjust_steps, "adjust")
    result: dict[str, Any] = {
        "batch_pairs": size,
        "naive_padding": length,
        "timed_steps": args.adjust_steps,
        "warmup_steps": args.adjust_warmup,
        "mean_real_tokens_per_batch": round(statistics.mean(real_tokens), 1),
        "loss_check": check,
        "variants": {},
    }
    base = summarize(variants[0].times)["total"]
    for variant in variants:
        medians = summarize(variant.times)
        pos = positions[variant.name]
        result["variants"][variant.name] = {
            "median_step_s": medians["total"],
            "pairs_per_s": size / medians["total"],
            "sentences_per_s": 2 * size / medians["total"],
            "speedup_vs_naive": base / medians["total"],
            "mean_encoder_positions": round(statistics.mean(p[0] for p in pos), 1),
            "mean_reference_positions": round(statistics.mean(p[1] for p in pos), 1),
            "median_phases_s": medians,
            "step_s": [t["total"] for t in variant.times],
        }
    result["speedup"] = result["variants"]["xlt"]["speedup_vs_naive"]
    return result


# ---------------------------------------------------------------------------
# Setup, report
# ---------------------------------------------------------------------------
def compose(args: argparse.Namespace, *overrides: str):
    """The job config the benchmark mirrors: continual en->ru on the demo corpus."""
    return compose_config(
        [
            f"model={args.model}",
            "lang=ru",
            "mode=continual",
            "data=demo",
            "corpus=demo",
            f"seed={args.seed}",
            f"paths.cache_dir={args.cache_dir}",
            f"paths.output_dir={args.tmp}",
            *overrides,
        ]
    )


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import lightning
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        "load_average_start": os.getloadavg(),
    }


PHASES = ("data", "task_forward", "aux_forward", "reference_forward", "backward", "optimizer")


def print_variants(section: dict[str, dict[str, Any]], title: str, base: str, note: Callable[[str, dict], str]) -> None:
    """One block of the table: one row per (task, variant)."""
    print(f"\n{title} (ratio: median s/step / that of {base})")
    print(f"{'task':<5} {'variant':<20} {'s/step':>7} {'steps/s':>8} {'ratio':>9}   "
          "median phases (s): data | task fwd | aux fwd | f0 fwd | backward | optimizer")
    print("-" * 118)
    for task_name, res in section.items():
        if "skipped" in res:
            print(f"{task_name:<5} skipped: {res['skipped']}")
            continue
        for name, v in res["variants"].items():
            p = v["median_phases_s"]
            phases = " | ".join(f"{p[k]:.3f}" for k in PHASES)
            print(f"{task_name:<5} {name:<20} {v['median_step_s']:>7.3f} {v['steps_per_s']:>8.3f} "
                  f"{v['ratio_vs_' + base]:>8.2f}x   {phases}")
        print(f"{'':<5} {note(task_name, res)}")


def print_table(results: dict[str, Any]) -> None:
    """The human-readable summary."""
    print("\n" + "=" * 118)
    m = results["machine"]
    load = lambda key: tuple(round(x, 2) for x in m[key])  # noqa: E731
    print(f"model={results['model']}  torch {m['torch']}  threads={m['torch_threads']}  cpus={m['cpu_count']}  "
          f"cpu={m['cpu']}  load avg start={load('load_average_start')} end={load('load_average_end')}")
    print_variants(
        results["overhead"], "1. Continual overhead: task batch 32 + aligned batch 16, alpha=0.01, cache on (empty at start); "
        "interleaved", "plain",
        lambda t, r: f"{r['timed_steps']} timed steps after {r['warmup_steps']} warm-up; mean task length "
        f"{r['mean_task_tokens']} tokens; paper's code {PAPER_SLOWDOWN[t]}x, target <= {TARGET_SLOWDOWN}x")
    if results.get("cache"):
        print_variants(
            results["cache"], "2. Frozen reference cost: continual step, cache off vs cache holding every sentence; "
            "interleaved", "continual_nocache",
            lambda t, r: f"{r['timed_steps']} timed steps after {r['warmup_steps']} warm-up")
    if "adjust" in results:
        a = results["adjust"]
        print(f"\n3. Adjustment throughput: batch {a['batch_pairs']} pairs, xlt (bucketed en+tgt forward, f0 on English "
              f"only, fused Adam) vs naive (en / tgt / f0 each padded to {a.get('naive_padding', NAIVE_LENGTH)}); interleaved, "
              f"{a['timed_steps']} timed steps after {a['warmup_steps']} warm-up")
        print(f"{'variant':<8} {'s/step':>7} {'pairs/s':>8} {'sent/s':>7} {'speedup':>8}  {'positions enc|f0':>17}   "
              "median phases (s): collate | forward | f0 fwd | backward | optimizer")
        print("-" * 118)
        for name, v in a["variants"].items():
            p = v["median_phases_s"]
            phases = " | ".join(f"{p[k]:.3f}" for k in ("collate", "forward", "reference_forward", "backward", "optimizer"))
            print(f"{name:<8} {v['median_step_s']:>7.3f} {v['pairs_per_s']:>8.2f} {v['sentences_per_s']:>7.2f} "
                  f"{v['speedup_vs_naive']:>7.2f}x  {v['mean_encoder_positions']:>8.0f}|{v['mean_reference_positions']:<8.0f}   {phases}")
        c = a["loss_check"]["total"]
        print(f"      xlt vs naive: {a['speedup']:.2f}x pairs/s (target >= {TARGET_ADJUST_SPEEDUP}x); "
              f"{a['mean_real_tokens_per_batch']:.0f} real tokens per batch; "
              f"same loss in eval mode: {c['xlt']:.6g} vs {c['naive']:.6g} (rel diff {c['rel_diff']:.1e})")
    if "peer" in results and "skipped" not in results["peer"]:
        p = results["peer"]
        print(f"\n4. Lightning cost: xlt step {p['xlt_s_per_step']:.3f} s vs HF Trainer step {p['hf_trainer_s_per_step']:.3f} s "
              f"(batch {p['batch']}, {p['timed_steps_each']} timed steps each): ratio {p['ratio_xlt_over_hf']:.2f}x")
    if "eval_order" in results:
        e = results["eval_order"]
        print(f"\n5. Evaluation order ({e['eval_set']}, {e['examples']} pairs, batch {e['batch']}): file order {e['file_order_s']:.2f} s "
              f"vs length-sorted {e['sorted_s']:.2f} s = {e['speedup']:.2f}x; token positions {e['file_order_positions']} vs "
              f"{e['sorted_positions']}; max |logit diff| {e['max_abs_logit_diff']:.1e}")
    if results.get("align_scale", {}).get("sizes"):
        print_align_scale(results["align_scale"])
    if results.get("train_scale", {}).get("tasks"):
        train_scale.print_train_scale(results["train_scale"])
    if "scale" in results:
        scale.print_scale(results["scale"])
    print("=" * 118)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See bench/README.md for what is measured and how.")
    parser.add_argument("--model", default="e5_small", choices=["e5_small", "tiny"], help="encoder (tiny: a quick smoke run)")
    parser.add_argument("--tasks", nargs="+", default=["nli", "ner"], choices=["nli", "ner"], help="tasks to benchmark")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per variant in section 1 (default: 4 for e5_small, 20 for tiny)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant before timing (sections 1, 2)")
    parser.add_argument("--cache-task", default="ner", choices=["nli", "ner", "none"],
                        help="task of section 2 (cache off vs warm); none skips it (falls back to nli without NER data)")
    parser.add_argument("--cache-steps", type=int, default=None,
                        help="timed steps per variant in section 2 (default: 2 for e5_small, 20 for tiny)")
    parser.add_argument("--adjust-steps", type=int, default=None,
                        help="timed adjustment steps per variant (xlt, naive), 0 skips section 3 (default: 3 for e5_small, 10 for tiny)")
    parser.add_argument("--peer-steps", type=int, default=3, help="timed steps per round of section 4 (xlt vs HF Trainer); 0 skips it")
    parser.add_argument("--eval-rounds", type=int, default=3, help="rounds of section 5 (evaluation order); 0 skips it")
    parser.add_argument("--adjust-warmup", type=int, default=1, help="untimed adjustment steps first")
    parser.add_argument("--align-sizes", default=os.environ.get("XLT_BENCH_ALIGN_SIZES"),
                        help="section 6: comma-separated pool sizes (default 250000,1000000: ~30 min on 2 cores with "
                             "the reference; $XLT_BENCH_ALIGN_SIZES); none skips it")
    parser.add_argument("--fast-align", default=None,
                        help="section 6: the reference fast_align binary (default $XLT_FAST_ALIGN or fast_align on PATH)")
    parser.add_argument("--train-sizes", default=os.environ.get("XLT_BENCH_TRAIN_SIZES"),
                        help="section 7: comma-separated NLI training-set sizes (default 392702, MultiNLI: ~10 min on 2 cores; "
                             "$XLT_BENCH_TRAIN_SIZES); none skips it")
    parser.add_argument("--qa-sizes", default=os.environ.get("XLT_BENCH_QA_SIZES"),
                        help="section 7: comma-separated QA training-set sizes (default 87599, SQuAD v1.1; "
                             "$XLT_BENCH_QA_SIZES); none skips it")
    parser.add_argument("--train-rounds", type=int, default=2, help="section 7: alternating rounds per size")
    scale.add_arguments(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", default=os.environ.get("XLT_DATA_DIR", str(REPO.parent / "shared" / "data")),
                        help="shared data folder with ner/wikiann/en/train.tsv (default: $XLT_DATA_DIR or ../shared/data)")
    parser.add_argument("--cache-dir", default=os.environ.get("XLT_CACHE_DIR", str(REPO / ".cache" / "xlt")),
                        help="model/alignment cache (default: $XLT_CACHE_DIR or .cache/xlt)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results.json"), help="where to write the JSON results")
    args = parser.parse_args(argv)
    small = args.model == "e5_small"  # defaults keep `make bench` under ~12 minutes on 2 busy cores
    args.steps = args.steps if args.steps is not None else (4 if small else 20)
    args.cache_steps = args.cache_steps if args.cache_steps is not None else (2 if small else 20)
    args.adjust_steps = args.adjust_steps if args.adjust_steps is not None else (3 if small else 10)
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*self.log.*")  # self.log is a no-op without a Trainer
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="xlt-bench-") as tmp:
        args.tmp = tmp
        results: dict[str, Any] = {"model": args.model, "machine": machine_info(), "method": (
            "hand-driven loop: next(task_loader) + FineTuneModule.training_step + backward + optimizer/scheduler step "
            "+ zero_grad; variants interleaved step by step (rotating order); medians of timed steps after warm-up")}
        cfg = compose(args)
        tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
        torch.manual_seed(args.seed)
        encoder = load_encoder(cfg.model, cfg.paths.cache_dir)
        corpus = pipeline.align_stage(cfg, tokenizer)
        aligned = pipeline.aligned_examples(cfg, tokenizer, corpus)
        ctx = {"tokenizer": tokenizer, "encoder": encoder, "reference": freeze_copy(encoder), "aligned": aligned,
               "data_overrides": {"xnli": [], "ner": [f"data.root={args.data_dir}"]}}
        results["aligned_pairs"] = len(aligned)
        results["aligned_corpus"] = cfg.corpus.path.format(lang=cfg.lang.code)
        ner_file = Path(args.data_dir) / "ner" / "wikiann" / "en" / "train.tsv"
        results["overhead"], results["cache"] = {}, {}
        for task_name in args.tasks:
            if task_name == "ner" and not ner_file.is_file():
                message = f"{ner_file} not found (set XLT_DATA_DIR or --data-dir)"
                print(f"\n== ner: skipped, {message}")
                results["overhead"]["ner"] = {"skipped": message}
                continue
            results["overhead"][task_name] = bench_task(TASK_NAMES[task_name], args, ctx, "overhead")
            gc.collect()
        cache_task = args.cache_task
        if cache_task == "ner" and not ner_file.is_file():
            print("\n== section 2 runs on nli: no NER data")
            cache_task = "nli"
        if cache_task != "none":
            results["cache"][cache_task] = bench_task(TASK_NAMES[cache_task], args, ctx, "cache")
            gc.collect()
        if args.adjust_steps > 0:
            results["adjust"] = bench_adjust(args, ctx, cfg)
        if args.peer_steps > 0:
            from bench.peer import bench_peer

            print("\n== 4. xlt (Lightning) step vs a plain HuggingFace Trainer step, NLI")
            results["peer"] = bench_peer(compose(args, "mode=original"), encoder, tokenizer, args.peer_steps)
        if args.eval_rounds > 0:
            from bench.eval_order import bench_eval_order

            print("\n== 5. evaluation: length-sorted batches vs file order, XNLI ru test")
            results["eval_order"] = bench_eval_order(compose(args, "mode=original"), encoder, tokenizer, args.eval_rounds)
        sizes = sizes_from(args.align_sizes)
        if sizes:
            del encoder, ctx
            gc.collect()
            results["align_scale"] = bench_align_scale(sizes, Path(args.data_dir), args.fast_align)
        train_sizes = train_scale.task_sizes(args.train_sizes, args.qa_sizes)
        if train_sizes:
            print("\n== 7. paper-size training sets: features in memory")
            results["train_scale"] = train_scale.bench_train_scale(train_sizes, args.cache_dir, args.data_dir,
                                                                   args.train_rounds)
        results["scale"] = scale.bench_scale(args)
    results["machine"]["load_average_end"] = os.getloadavg()
    results["runtime_s"] = round(time.time() - started, 1)
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out} ({results['runtime_s']} s)")
    return results


if __name__ == "__main__":
    main()
