"""Cross-lingual adjustment (Eq. 1 of the paper, optimiser of Cao et al. 2020).

    L = R_pairs(f(s_i) − f(t_i))  +  λ · R_english(f(s_j) − f⁰(s_j))

or, with ``adjustment.objective=contrastive``, the same English regulariser
after Wu & Dredze's (2020) contrastive pair term (:func:`contrastive_term`)
instead of ``R_pairs``.

``R`` is the reduction (``adjustment.reduction``, see :data:`REDUCTIONS`):
``mse`` is the paper code's ``F.mse_loss`` (mean over every element of the
[N, H] difference; ``alignment/bert_finetuning_alignment.py``
``align_bert_multiple`` and ``utils_alignment.py`` ``comp_align_loss``),
``sum`` is Eq. 1 as printed (Σ‖d‖²), ``vector_mean`` the mean of ‖d‖² over
vectors.  Under Adam the overall scale hardly matters, but the reductions
weight the two terms differently (pairs vs. all English words), which moves
the optimum.

``f`` is the encoder being trained, ``f⁰`` the frozen original.  Word vectors
are span means of last-layer subword vectors (``xlt.models.pooling``), so
every aggregation and token choice is just a different set of spans.

Efficiency choices (measured in bench/):
* English and target sentences of a batch go through the encoder together,
  in a few length-sorted groups padded only to their own longest sentence
  (``bucketed_forward``);
* ``f⁰`` runs once per English sentence, without gradients, on the English
  half only; when sentences are revisited (continual learning samples with
  replacement) its pooled vectors are cached per sentence.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from xlt.config import ADJUSTMENT_TARGETS, OBJECTIVES, REDUCTIONS, WARMUP_UNITS
from xlt.errors import XltError
from xlt.models.pooling import pool_spans

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
RECORD_KEY = "xlt_adjustment"  # AdjustModule.record in a checkpoint


def reduce_squared(diff: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce the squared differences ``diff [N, H]`` of one loss term.

    ``mse``: ``F.mse_loss`` (mean over N·H elements, the paper code);
    ``sum``: Σ_n ‖d_n‖² (Eq. 1 as printed); ``vector_mean``: mean_n ‖d_n‖².
    """
    if reduction == "mse":
        return torch.nn.functional.mse_loss(diff, torch.zeros_like(diff), reduction="mean")
    per_vector = diff.pow(2).sum(dim=1)
    return per_vector.sum() if reduction == "sum" else per_vector.mean()


def reduce_split(diff: torch.Tensor, rows: torch.Tensor, reduction: str, split: int) -> torch.Tensor:
    """:func:`reduce_squared` per group of ``split`` sentences, summed over groups.

    The paper code's adjustment (``align_bert_multiple``) splits each batch of
    32 into ``splitbatch_size=4`` sentences, takes ``F.mse_loss`` per split and
    sums the splits; ``split`` = 0 reduces the whole batch at once.  ``rows``
    gives each vector's sentence.
    """
    if split <= 0:
        return reduce_squared(diff, reduction)
    groups = torch.div(rows, split, rounding_mode="floor")
    return sum(reduce_squared(diff[groups == g], reduction) for g in groups.unique().tolist())


def collate_aligned(examples: list[Any], pad_id: int, indices: list[int] | None = None) -> Batch:
    """Pad English + target sentences into one batch and flatten all spans.

    Target sentence b sits at row ``B + b``.  ``pair_*`` rows pair up; ``reg``
    rows are the English vectors of the regularizer; ``index`` identifies the
    sentence in its corpus (for the frozen-vector cache).
    """
    size = len(examples)
    sequences = [e.en_ids for e in examples] + [e.tgt_ids for e in examples]
    length = max(len(s) for s in sequences)
    ids = torch.full((2 * size, length), pad_id, dtype=torch.long)
    mask = torch.zeros((2 * size, length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1

    def flat(name: str, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [(b + offset, s, e) for b, ex in enumerate(examples) for s, e in getattr(ex, name)]
        table = torch.tensor(rows, dtype=torch.long).reshape(-1, 3)
        return table[:, 0], table[:, 1:]

    pair_en_row, pair_en = flat("pair_en")
    pair_tgt_row, pair_tgt = flat("pair_tgt", offset=size)
    reg_row, reg = flat("reg_en")
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pair_en_row": pair_en_row,
        "pair_en": pair_en,
        "pair_tgt_row": pair_tgt_row,
        "pair_tgt": pair_tgt,
        "reg_row": reg_row,
        "reg": reg,
        "index": torch.tensor(indices if indices is not None else list(range(size))),
        "size": torch.tensor(size),
    }


def contrastive_term(anchor: torch.Tensor, target: torch.Tensor, shared: torch.Tensor, temperature: float) -> torch.Tensor:
    """Wu & Dredze's weak contrastive alignment term for ``N`` aligned pairs
    (shijie-wu/crosslingual-nlp ``src/model/aligner.py`` ``cntrstv_loss``,
    with ``aligner_normalize=True``).

    ``S = cos(anchor_i, target_j) / temperature``; each English vector picks
    its target among the batch's ``N`` target vectors and each target vector
    its English one: ``(CE(S, arange N) + CE(Sᵀ, arange N)) / 2``, the mean
    over pairs.  Negatives are the other pairs' vectors, except those of
    pairs in ``shared`` ([N, N], true where pair j shares a vector with pair
    i: the same word of the same sentence, drawn twice into one batch), whose
    logits are left out (Wu & Dredze's code leaves them in: an identical
    vector as its own negative).  Computed in fp32, outside autocast.
    Callers handle batches where no pair has a negative (:meth:`AlignmentLoss.pair_term`).
    """
    size = len(anchor)
    with torch.autocast(anchor.device.type, enabled=False):
        sim = F.normalize(anchor.float(), dim=1) @ F.normalize(target.float(), dim=1).T / temperature
        sim = sim.masked_fill(shared & ~torch.eye(size, dtype=torch.bool, device=sim.device), float("-inf"))
        goal = torch.arange(size, device=sim.device)
        return (F.cross_entropy(sim, goal) + F.cross_entropy(sim.T, goal)) / 2


def shared_vectors(batch: Batch) -> torch.Tensor:
    """``[N, N]``: whether aligned pairs i and j share a vector, i.e. the
    same English span or the same target span of the same corpus sentence
    (``batch["index"]``).  Links are one-to-one, so off the diagonal this
    happens only when a sentence is drawn twice into a batch (continual
    learning samples with replacement)."""
    sentence = batch["index"].to(batch["pair_en_row"].device)[batch["pair_en_row"]].unsqueeze(1)

    def same(spans: torch.Tensor) -> torch.Tensor:
        key = torch.cat([sentence, spans], dim=1)
        return (key.unsqueeze(1) == key.unsqueeze(0)).all(dim=2)

    return same(batch["pair_en"]) | same(batch["pair_tgt"])


class AlignmentLoss:
    """Eq. 1 on a collated batch, with a frozen reference model.

    ``target``: ``current`` pulls target words toward the English vectors of
    the model being trained (gradient through both sides, the paper's code);
    ``frozen`` pulls them toward the reference's English vectors (Cao et al.).
    ``cache``: keep the reference's pooled English vectors per sentence (worth
    it only when sentences are revisited).
    ``reduction``: how each term's squared differences are reduced, one of
    :data:`REDUCTIONS` (see :func:`reduce_squared`), per group of ``split``
    sentences and summed over the groups (:func:`reduce_split`; 0: one group).
    ``buckets``: the batch's sentences run through the encoder in this many
    length-sorted groups, each padded only to its own longest sentence.
    ``objective``: the pair term, one of :data:`OBJECTIVES`: ``l2`` is Eq. 1's
    (reduced as above); ``contrastive`` is :func:`contrastive_term` at
    ``temperature`` over the whole batch (``split`` and ``reduction`` then
    apply to the regulariser only).  A batch in which no pair has a negative
    (fewer than two pairs, or only copies of one) gives a contrastive term of
    exactly 0 (no gradient from it; the regulariser still applies); such
    batches are counted (``without_negatives``) and reported once, at the end
    of the stage (:meth:`warn_without_negatives`).
    """

    def __init__(
        self,
        reference: PreTrainedModel,
        target: str = "current",
        cache: bool = False,
        reduction: str = "mse",
        buckets: int = 4,
        split: int = 0,
        objective: str = "l2",
        temperature: float = 0.1,
    ):
        if target not in ADJUSTMENT_TARGETS or reduction not in REDUCTIONS:
            raise ValueError(f"target must be one of {ADJUSTMENT_TARGETS} and reduction one of {REDUCTIONS}, "
                             f"got {target!r}, {reduction!r}")
        if objective not in OBJECTIVES or not temperature > 0:
            raise ValueError(f"objective must be one of {OBJECTIVES} and temperature > 0, got {objective!r}, {temperature!r}")
        self.reference = reference.eval().requires_grad_(False)
        self.target = target
        self.reduction = reduction
        self.split = split
        self.buckets = buckets
        self.objective, self.temperature = objective, temperature
        self.batches = self.without_negatives = 0  # contrastive batches seen / with a zero term for want of negatives
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache else None

    def to(self, device: torch.device) -> "AlignmentLoss":
        self.reference.to(device)
        return self

    def __call__(self, encoder: PreTrainedModel, batch: Batch) -> dict[str, torch.Tensor]:
        """Returns the ``pairs`` term (of ``objective``) and the ``regularizer`` term of Eq. 1."""
        hidden = bucketed_forward(encoder, batch["input_ids"], batch["attention_mask"], self.buckets)
        english = pool_spans(hidden, batch["pair_en_row"], batch["pair_en"])
        target = pool_spans(hidden, batch["pair_tgt_row"], batch["pair_tgt"])
        frozen_reg, frozen_pairs = self.reference_vectors(batch)
        anchor = frozen_pairs if self.target == "frozen" else english
        current_reg = pool_spans(hidden, batch["reg_row"], batch["reg"])
        return {
            "pairs": self.pair_term(anchor, target, batch),
            "regularizer": reduce_split(current_reg - frozen_reg, batch["reg_row"], self.reduction, self.split),
        }

    def pair_term(self, anchor: torch.Tensor, target: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Eq. 1's pair term, or the contrastive term; 0 (kept in the graph,
        so every parameter gets a zero gradient) for a contrastive batch
        without negatives."""
        if self.objective == "l2":
            return reduce_split(anchor - target, batch["pair_en_row"], self.reduction, self.split)
        self.batches += 1
        shared = shared_vectors(batch)
        if bool(shared.all()):  # fewer than two pairs, or copies of one pair: no negatives
            self.without_negatives += 1
            return (anchor.sum() + target.sum()) * 0.0
        return contrastive_term(anchor, target, shared, self.temperature)

    def warn_without_negatives(self, stage: str) -> None:
        """One warning at the end of ``stage`` if some batches had no negatives."""
        if self.without_negatives:
            log.warning("%s: %d of %d aligned batches had no negatives (fewer than two word pairs, or copies of one); "
                        "their contrastive term was 0 and only the regulariser trained on them",
                        stage, self.without_negatives, self.batches)

    @torch.no_grad()
    def reference_vectors(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen English vectors of the regularizer spans and of the pair spans,
        in the batch's span order (spans are grouped by sentence)."""
        size = int(batch["size"])
        if self.cache is None:
            (reg, _), (pairs, _) = self._reference_forward(batch, list(range(size)))
            return reg, pairs
        indices = batch["index"].tolist()
        missing = [b for b, i in enumerate(indices) if i not in self.cache]
        if missing:
            pooled = self._reference_forward(batch, missing)
            for b in missing:
                self.cache[indices[b]] = tuple(v[owner == b].half().cpu() for v, owner in pooled)
        device = batch["input_ids"].device
        reg = torch.cat([self.cache[i][0] for i in indices]).to(device)
        pairs = torch.cat([self.cache[i][1] for i in indices]).to(device)
        return reg.float(), pairs.float()

    def _reference_forward(self, batch: Batch, rows: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Run f⁰ on the English sentences ``rows`` only, with padding trimmed.

        Returns ``[(reg vectors, their rows), (pair vectors, their rows)]``.
        """
        device = batch["input_ids"].device
        rows_t = torch.tensor(rows, device=device)
        mask = batch["attention_mask"][rows_t]
        length = int(mask.sum(dim=1).max())
        hidden = self.reference(input_ids=batch["input_ids"][rows_t, :length], attention_mask=mask[:, :length]).last_hidden_state
        remap = torch.full((int(batch["size"]),), -1, dtype=torch.long, device=device)
        remap[rows_t] = torch.arange(len(rows), device=device)
        pooled = []
        for row_key, span_key in (("reg_row", "reg"), ("pair_en_row", "pair_en")):
            owner = batch[row_key][torch.isin(batch[row_key], rows_t)]
            spans = batch[span_key][torch.isin(batch[row_key], rows_t)]
            pooled.append((pool_spans(hidden, remap[owner], spans).float(), owner))
        return pooled


def bucketed_forward(encoder: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, buckets: int) -> torch.Tensor:
    """Last hidden states of ``[N, T]`` inputs, computed in length-sorted groups.

    Sentences of a parallel batch vary a lot in length; one padded forward
    spends about half its compute on padding.  Groups of similar length cut
    that, and the result (placed back into an ``[N, T, H]`` tensor) is the
    same up to float rounding, since BERT-style encoders mask padded keys.
    """
    lengths = mask.sum(dim=1)
    if buckets <= 1 or len(ids) <= buckets:
        return encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    order = torch.argsort(lengths)
    hidden = None
    for rows in torch.tensor_split(order, buckets):
        length = int(lengths[rows].max())
        part = encoder(input_ids=ids[rows, :length], attention_mask=mask[rows, :length]).last_hidden_state
        if hidden is None:
            hidden = part.new_zeros(ids.shape[0], ids.shape[1], part.shape[-1])
        hidden = hidden.index_put((rows,), torch.nn.functional.pad(part, (0, 0, 0, ids.shape[1] - length)))
    return hidden


def check_warmup_unit(unit: str, where: str = "adjustment.warmup_unit") -> str:
    """``unit`` if valid, else a one-line error naming the config key."""
    if unit not in WARMUP_UNITS:
        raise XltError(f"{where} must be one of {' | '.join(WARMUP_UNITS)}, got {unit!r}")
    return unit


def constant_after_warmup(warmup_steps: int):
    """Linear warm-up over optimizer steps to the base learning rate, then
    constant (Cao et al.; ``warmup_unit=steps``)."""

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / max(1, warmup_steps))

    return factor


def paper_warmup(warmup_sentences: int, batch_size: int):
    """The paper code's warm-up, counted in sentences (``warmup_unit=sentences``).

    ``alignment/bert_finetuning_alignment.py`` ``align_bert_multiple``: W =
    ``int(num_sentences * 0.1)``; before each optimizer step, with k sentences
    processed so far, it sets ``lr = (k + 1) / W * lr`` while ``k + 1 <= W``
    and never again, so the rate stays at the last value set:
    ``(B * floor((W - 1) / B) + 1) / W`` of the base rate (0.962 at 5K pairs,
    batch 32), never the base rate itself.  Step 0 gets ``lr / W`` (1.7e-8 at
    30K pairs, where 10% of the optimizer steps would give 5.4e-7).  W = 0
    (under 10 sentences; the paper code divides by zero there): no warm-up.
    """
    if warmup_sentences <= 0:
        return lambda step: 1.0
    last = batch_size * ((warmup_sentences - 1) // batch_size) + 1

    def factor(step: int) -> float:
        return min(batch_size * step + 1, last) / warmup_sentences

    return factor


class AdjustModule(L.LightningModule):
    """Trains the encoder with Eq. 1 (or its contrastive variant: ``loss.objective``);
    the adjusted encoder is ``self.encoder``.

    ``seed``: each batch's dropout is seeded from (seed, epoch, batch), as the
    fine-tuning's is (``xlt.models.finetune.batch_seed``), so an adjustment
    resumed from a checkpoint trains exactly as an uninterrupted one.
    ``record`` is what the adjustment's evidence gathers while it trains
    (the held-out probes' trajectory, the contrastive counters, the seconds
    spent training); it travels in every checkpoint, the finished weights'
    included, so a resumed adjustment reports its whole run."""

    def __init__(
        self,
        encoder: PreTrainedModel,
        loss: AlignmentLoss,
        lr: float = 5e-5,
        reg_weight: float = 1.0,
        warmup_ratio: float = 0.1,
        dropout: bool = True,
        freeze_embeddings: bool = False,
        warmup_unit: str = "steps",
        seed: int | None = None,
    ):
        super().__init__()
        self.encoder = encoder.train()
        self.loss = loss  # plain attribute: the frozen reference is not trained or checkpointed
        self.lr, self.reg_weight, self.warmup_ratio, self.dropout = lr, reg_weight, warmup_ratio, dropout
        self.warmup_unit = check_warmup_unit(warmup_unit)
        self.seed = seed
        self.trajectory: list[dict[str, Any]] = []
        self.seconds_before, self.started = 0.0, None
        if freeze_embeddings:
            encoder.get_input_embeddings().weight.requires_grad_(False)

    def on_fit_start(self) -> None:
        self.loss.to(self.device)

    def on_train_start(self) -> None:
        # Without dropout f equals f0 at step 0, so the regularizer is exact.
        self.encoder.train(self.dropout)
        self.started = time.monotonic()

    def on_train_end(self) -> None:
        self.loss.warn_without_negatives("adjustment")

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self.seed is not None:
            from xlt.models.finetune import batch_seed

            torch.manual_seed(batch_seed(self.seed, self.current_epoch, batch_idx, 0))
        terms = self.loss(self.encoder, batch)
        total = terms["pairs"] + self.reg_weight * terms["regularizer"]
        size = int(batch["size"])
        self.log("adjust/loss", total, prog_bar=True, batch_size=size)
        self.log("adjust/pairs", terms["pairs"], batch_size=size)
        self.log("adjust/regularizer", terms["regularizer"], batch_size=size)
        return total

    @property
    def seconds(self) -> float:
        """Seconds spent training, over every run of this adjustment."""
        return self.seconds_before + (time.monotonic() - self.started if self.started is not None else 0.0)

    @property
    def record(self) -> dict[str, Any]:
        return {"trajectory": self.trajectory, "batches": self.loss.batches,
                "without_negatives": self.loss.without_negatives, "seconds": self.seconds}

    def restore(self, record: dict[str, Any]) -> None:
        """Take up the ``record`` of a checkpoint (an earlier run of this adjustment)."""
        self.trajectory = list(record["trajectory"])
        self.loss.batches, self.loss.without_negatives = record["batches"], record["without_negatives"]
        self.seconds_before, self.started = float(record["seconds"]), None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RECORD_KEY] = self.record

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if RECORD_KEY in checkpoint:
            self.restore(checkpoint[RECORD_KEY])

    def configure_optimizers(self):
        trainable = [p for p in self.encoder.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=self.lr, betas=(0.9, 0.98), eps=1e-9, fused=True)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self.warmup(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def warmup(self, total_steps: int):
        """The LambdaLR factor of ``warmup_unit``: a share of the optimizer
        steps, or of one epoch's sentences (the training loader's dataset,
        in batches of its batch size) as the paper's code counts."""
        if self.warmup_unit == "steps":
            return constant_after_warmup(int(self.warmup_ratio * total_steps))
        loader = self.trainer.train_dataloader  # set up by estimated_stepping_batches
        return paper_warmup(int(len(loader.dataset) * self.warmup_ratio), loader.batch_size)


def freeze_copy(encoder: nn.Module) -> nn.Module:
    """A frozen deep copy of ``encoder`` to serve as f⁰."""
    import copy

    return copy.deepcopy(encoder).eval().requires_grad_(False)
