"""Stage 2: adjust the encoder with Eq. 1 (or its contrastive variant) on the aligned sample (cached)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from xlt import stopping
from xlt.artifacts import build_once, write_json
from xlt.checkpoints import State, shapes_of, usable_state
from xlt.checkpoints import load as load_checkpoint
from xlt.errors import XltError
from xlt.keys import adjusted_dir, adjustment_checkpoint_dir, corpus_path
from xlt.stages.align import align_stage, aligned_examples
from xlt.stages.trainer import as_rank_zero, fit_resumable, make_trainer, one_device
from xlt.tracking import stage_run

log = logging.getLogger(__name__)


@stopping.in_stage("adjustment")
def adjust_stage(cfg: DictConfig) -> Path:
    """The adjusted encoder's directory (built once per distinct setting).

    Under DDP on Slurm every srun task runs the job: the first to take the
    build lock trains the adjustment on its one device, as rank 0 of its own
    run (``as_rank_zero``: its curve and tracker run are logged whatever its
    rank), and the others wait on the lock and reuse it.  Any task may build
    it: the result does not depend on which (one device, seeded by
    ``cfg.seed``), and reserving it for global rank 0 would leave the others
    waiting all the same, and waiting for nothing if rank 0 failed.  With
    Lightning's own DDP launcher the other ranks start only when rank 0
    fine-tunes, after the adjustment.  The training's checkpoints
    (``adjustment_checkpoint_dir``) go once the encoder is in place."""
    from xlt.models.encoder import load_tokenizer

    target = adjusted_dir(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    built = build_once(target, lambda tmp: train_adjustment(cfg, tokenizer, tmp))
    shutil.rmtree(adjustment_checkpoint_dir(cfg), ignore_errors=True)
    return built


def train_adjustment(cfg: DictConfig, tokenizer, out: Path) -> None:
    """Align (cached), train Eq. 1 (``adjustment.objective``) for the configured epochs, save encoder + evidence.

    The training checkpoints like the fine-tuning (``trainer.checkpoint_every_n_steps``,
    and at the next step when the job is told to stop) into
    ``adjustment_checkpoint_dir``, and a rerun resumes from there, mid-epoch,
    to the weights an uninterrupted run ends with.  Its finished weights are
    kept there too (``done.json``) until the encoder is saved: a stop while
    the held-out distances are measured or the encoder is written (minutes
    at 1,000 held-out pairs on a CPU) costs those minutes, not the training.
    """
    from xlt.evaluation.distances import distance_summary
    from xlt.models.adjust import AdjustModule, AlignmentLoss, freeze_copy
    from xlt.models.encoder import load_encoder

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
    settings = cfg.adjustment
    module = AdjustModule(
        encoder,
        AlignmentLoss(reference, settings.target, reduction=settings.reduction, split=settings.split_batch,
                      objective=settings.objective, temperature=settings.temperature),
        settings.lr,
        settings.reg_weight,
        settings.warmup_ratio,
        dropout=settings.dropout,
        freeze_embeddings=settings.freeze_embeddings,
        warmup_unit=settings.warmup_unit,
        seed=cfg.seed,
    )
    checkpoints = adjustment_checkpoint_dir(cfg)
    state = usable_state(checkpoints, shapes_of(module))
    if state.kind == "finished":
        steps = finished_adjustment(module, state)
    else:
        steps = fit_adjustment(cfg, module, examples, probe, pad, reference, checkpoints, state)
    encoder = module.encoder.cpu()
    after = distance_summary(encoder, probe, pad, reference.cpu()) if probe else {}
    encoder.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if (checkpoints / "logs").is_dir():  # the curve, with the artifact
        shutil.copytree(checkpoints / "logs", out / "logs", dirs_exist_ok=True)
    record = module.record
    evidence = {
        "pairs": len(examples),
        "heldout_pairs": len(probe),
        "steps": steps,
        "resumed_from_step": state.step,  # 0: from the start; = steps: only measured and saved after a stop
        "seconds": round(record["seconds"], 1),  # training, over every run of it
        "original": before,
        "adjusted": after,
        "during": record["trajectory"],
        "alignments": str(corpus.path),
        "objective": module.loss.objective,  # what the loss computed
    }
    if corpus.subword_filter:  # aggregation=subword: the pairs over corpus.max_words subwords the pool dropped
        evidence["subword_filter"] = corpus.subword_filter
    if module.loss.objective == "contrastive":
        evidence.update(temperature=module.loss.temperature, batches_without_negatives=module.loss.without_negatives)
    write_json(out / "evidence.json", evidence)
    log.info("adjustment evidence: %s", json.dumps(evidence))


def fit_adjustment(cfg: DictConfig, module, examples: list, probe: list, pad: int, reference, checkpoints: Path,
                   state: State) -> int:
    """Train ``module`` from ``state`` (fresh, or a checkpoint to resume) to
    the end, keep its finished weights in ``checkpoints``, return the steps."""
    from xlt.models.adjust import collate_aligned
    from xlt.models.finetune import EpochShuffleSampler, ListDataset, SamplerPosition

    settings = cfg.adjustment
    loader = torch.utils.data.DataLoader(
        ListDataset(list(range(len(examples)))),
        batch_size=settings.batch_size,
        sampler=EpochShuffleSampler(len(examples), cfg.seed),
        collate_fn=lambda idx: collate_aligned([examples[i] for i in idx], pad, idx),
    )
    probe_cb = DistanceProbe(probe[:PROBE_PAIRS], pad, reference, every=max(1, len(loader) * settings.epochs // PROBES))
    # The curve: CSV beside the checkpoints (copied into the artifact at the end), and the tracker's own run
    # in the job's logs/ (never the job's run), whichever process of a DDP job builds it.
    with as_rank_zero(), stage_run(cfg, "adjust", checkpoints / "logs", Path(cfg.paths.output_dir) / "logs") as loggers:
        trainer = make_trainer(
            cfg, max_epochs=settings.epochs, checkpoint_dir=checkpoints, log_dir=checkpoints / "logs",
            callbacks=[SamplerPosition(loader), probe_cb], loggers=loggers, stage="adjustment", **adjustment_trainer(),
        )
        fit_resumable(trainer, module, loader, state, checkpoints, loggers, "adjustment",
                      finished="the adjustment had finished training; a rerun measures and saves it")
    return trainer.global_step


def finished_adjustment(module, state: State) -> int:
    """Take up the finished weights (and record) that an earlier run of this
    adjustment kept before it was stopped; return its steps."""
    from xlt.models.adjust import RECORD_KEY

    payload = load_checkpoint(state.path)
    module.load_state_dict(payload["state_dict"])
    if RECORD_KEY in payload:
        module.restore(payload[RECORD_KEY])
    log.info("adjustment: its training had finished (%d steps, %s): measuring and saving it", state.step, state.path)
    return state.step


def adjustment_trainer() -> dict[str, Any]:
    """What the adjustment replaces in ``cfg.trainer`` (``xlt.keys.ADJUSTMENT_TRAINER_FREE``
    leaves these out of its key): one device, as it is small (one epoch over
    <= 250K pairs; DDP ranks wait for it on the build lock), and no gradient
    accumulation (``adjustment.batch_size`` is the batch)."""
    return {"accumulate_grad_batches": 1, **one_device()}


PROBES, PROBE_PAIRS = 4, 100  # distance probes during adjustment, on this many held-out pairs


class DistanceProbe(L.Callback):
    """Records held-out related / unrelated distances and English drift every
    ``every`` steps while adjusting (evidence *during* adjustment), in the
    module's ``trajectory`` (which its checkpoints carry)."""

    def __init__(self, examples: list[Any], pad_id: int, reference, every: int):
        self.examples, self.pad_id, self.reference, self.every = examples, pad_id, reference, every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.examples and trainer.global_step % self.every == 0:
            from xlt.evaluation.distances import distance_summary

            summary = distance_summary(pl_module.encoder, self.examples, self.pad_id, self.reference)
            pl_module.trajectory.append({"step": trainer.global_step, **summary})
            for logger in trainer.loggers:  # beside the loss curve (Lightning's step column: optimizer step - 1)
                logger.log_metrics({f"probe/{k}": v for k, v in summary.items()}, step=trainer.global_step - 1)
