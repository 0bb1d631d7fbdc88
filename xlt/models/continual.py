"""Continual learning: the adjustment loss as an auxiliary term of fine-tuning.

    L = L_task + α · R(f(s_i) − f(t_i)) + β · R(f(s_j) − f⁰(s_j))

``R`` is ``continual.reduction`` (:func:`xlt.models.adjust.reduce_squared`).
With ``adjustment.objective=contrastive`` the α term is the contrastive term
(:func:`xlt.models.adjust.contrastive_term`) instead: one objective setting
for the adjustment and the auxiliary loss.
The paper code (``utils_alignment.py`` ``comp_align_loss``) uses
``F.mse_loss`` (``mse``: mean over every element), α = ``align_wght`` = 0.01,
β = ``base_diff_wght`` = 1 (``scripts/*/train_*_multi_task_no_trainer.sh``);
these are the defaults.  With ``sum`` the pair term is Σ‖d‖², about
N·H times larger (H = hidden size, N = vectors in the batch), which swamps
``L_task`` at α = 0.01.

Every training step draws a fresh batch of aligned sentence pairs (with
replacement) from the adjustment sample.  The draw of step k depends only on
``(seed, k)``, and the auxiliary forward runs under a forked RNG, so

* the task side of training (its batches, its dropout) is untouched by the
  auxiliary loss: with α = β = 0 a continual run equals plain fine-tuning
  step for step;
* a resumed run draws the same auxiliary batches as an uninterrupted one,
  and ends with bit-identical weights: the reference vectors cached before
  the interruption are rebuilt exactly as they were computed (``replay``),
  since a sentence's cached vectors depend on the batch that first held it
  (its padding, its partners in the forward pass).

Speed: English and target sentences share one forward pass, sentences keep
their own short length (no padding to the task length), and the frozen
reference's vectors are cached per sentence, since sentences recur.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from xlt.data.words import AlignedExamples
from xlt.models.adjust import AlignmentLoss, Batch, collate_aligned
from xlt.progress import Progress

log = logging.getLogger(__name__)


class ContinualObjective:
    """Draws aligned batches and returns the weighted auxiliary loss."""

    def __init__(
        self,
        examples: list[Any],
        pad_id: int,
        loss: AlignmentLoss,
        alpha: float = 0.01,
        reg_weight: float = 1.0,
        batch_size: int = 16,
        seed: int = 1,
    ):
        if not examples:
            raise ValueError("continual learning needs at least one aligned sentence pair")
        self.examples, self.pad_id, self.loss = examples, pad_id, loss
        self.alpha, self.reg_weight, self.batch_size, self.seed = alpha, reg_weight, batch_size, seed
        self.device = torch.device("cpu")
        self.replayed = False
        if loss.cache is not None:
            log.info("%s", self.cache_line())

    def cache_line(self) -> str:
        """What the frozen reference's vector cache can grow to.  Nothing
        bounds it below every sentence of the sample (a long training draws
        most of them: 24.5K MultiNLI steps x 16 draw 392K times), and it lives
        in CPU memory, in every DDP process: 1.68 GiB at corpus.size=30000
        with mBERT (README, "Fidelity": the continual reference row)."""
        vectors = reference_vectors(self.examples)
        hidden = self.loss.reference.config.hidden_size
        size = vectors * hidden * 2  # fp16
        shown = f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
        return (f"continual: the frozen reference's vectors are cached per sentence drawn, in CPU memory, unbounded: "
                f"{len(self.examples):,} sentences x {vectors / len(self.examples):.1f} vectors x {hidden} x 2 bytes "
                f"(fp16) = {shown} once every sentence has been drawn")

    def to(self, device: torch.device) -> "ContinualObjective":
        self.device = torch.device(device)
        self.loss.to(self.device)
        return self

    def indices(self, step: int) -> list[int]:
        """The examples drawn (with replacement) at training step ``step``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.randint(len(self.examples), (self.batch_size,), generator=generator).tolist()

    def batch(self, step: int) -> Batch:
        """The aligned batch of training step ``step`` (deterministic)."""
        indices = self.indices(step)
        batch = collate_aligned([self.examples[i] for i in indices], self.pad_id, indices)
        return {k: v.to(self.device) for k, v in batch.items()}

    def replay(self, step: int) -> None:
        """Fill the reference-vector cache as steps ``0 .. step-1`` left it.

        The cache keeps a sentence's frozen vectors as first computed, in the
        forward pass over that step's not-yet-cached sentences; rounding
        depends on that batch.  A run resumed at ``step`` recomputes them in
        the same batches, in the same order (under the same autocast, being
        called from a training step), so its later steps see the same values
        as an uninterrupted run.  Costs one frozen forward per distinct
        sentence drawn so far, as the uninterrupted run spent: after a
        requeue late in a long training, minutes inside the first step, so
        it logs progress lines.
        """
        cache = self.loss.cache
        if cache is None or step == 0:
            return
        log.info("continual: resumed at step %d: recomputing the frozen reference's vectors of the sentences "
                 "steps 0-%d drew, in their batches, before the step", step, step - 1)
        bar = Progress("continual: reference vectors of the steps before the resumed one", step, unit="steps")
        for earlier in range(step):
            if any(i not in cache for i in self.indices(earlier)):
                self.loss.reference_vectors(self.batch(earlier))
            bar.update(extra=f"{len(cache):,} sentences")
        bar.close()

    def step_loss(self, encoder: torch.nn.Module, step: int) -> dict[str, torch.Tensor]:
        """``{"pairs", "regularizer", "weighted"}`` for training step ``step``."""
        if not self.replayed:  # the first step of this process: a resumed run rebuilds the cache first
            self.replayed = True
            self.replay(step)
        batch = self.batch(step)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed * 7_919 + step)
            terms = self.loss(encoder, batch)
        terms["weighted"] = self.alpha * terms["pairs"] + self.reg_weight * terms["regularizer"]
        return terms


def reference_vectors(examples: Any) -> int:
    """The English vectors the frozen reference gives the examples (regulariser
    and pair spans): what the cache holds once every one has been drawn."""
    if isinstance(examples, AlignedExamples):
        return int(examples.counts("reg_en").sum() + examples.counts("pair_en").sum())
    return sum(len(e.reg_en) + len(e.pair_en) for e in examples)
