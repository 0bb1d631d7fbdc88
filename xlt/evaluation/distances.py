"""L2 distances between last-layer vectors of related and unrelated word pairs.

*Related* pairs are aligned words of a parallel sentence pair; *unrelated*
pairs take the English words of sentence i and target words of sentence
i+1 (an unpaired sentence), position by position.  *Drift* is the distance
of an English word's vector from the frozen original model's vector.
These are the paper's evidence that adjustment pulls translations together
and that fine-tuning undoes it.

On top of the raw distances this module measures how *separable* the two
populations are (ROC AUC and histogram overlap) and how *concentrated* a
distance is in a few coordinates (top-k dimension share), so that five model
states can be compared with a handful of numbers (:func:`state_summary`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from xlt.models.adjust import collate_aligned
from xlt.models.pooling import pool_spans

Vectors = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def pair_vectors(encoder, examples: list[Any], pad_id: int, batch_size: int = 32, desc: str | None = None) -> Vectors:
    """Per example: (English pair vectors, target pair vectors, English regularizer vectors).

    Runs in eval mode (no dropout) and then restores the encoder's mode, since
    probes run in the middle of training (``xlt.stages.adjust.DistanceProbe``).
    Batches are formed in order of sentence length (less padding, which is
    most of the cost on CPU); the result is in the order of ``examples``.
    With ``desc``, progress is shown (``xlt.progress``: a line every
    ``$XLT_PROGRESS_S`` seconds outside a terminal); the probes, which run
    inside a training, show none.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        return _pair_vectors(encoder, examples, pad_id, batch_size, desc)
    finally:
        encoder.train(was_training)


@torch.no_grad()
def _pair_vectors(encoder, examples: list[Any], pad_id: int, batch_size: int, desc: str | None) -> Vectors:
    from xlt.progress import progress

    device = next(encoder.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: max(len(examples[i].en_ids), len(examples[i].tgt_ids)))
    out: list[Any] = [None] * len(examples)
    starts = range(0, len(order), batch_size)
    for start in progress(starts, desc, unit="batches") if desc else starts:
        chunk = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_aligned([examples[i] for i in chunk], pad_id).items()}
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state.float()
        pooled = {
            name: (pool_spans(hidden, batch[f"{name}_row"], batch[name]).cpu(), batch[f"{name}_row"].cpu())
            for name in ("pair_en", "pair_tgt", "reg")
        }
        size = len(chunk)
        for b, index in enumerate(chunk):
            out[index] = tuple(vectors[rows == (b + size if name == "pair_tgt" else b)] for name, (vectors, rows) in pooled.items())
    return out


def pair_differences(vectors: Vectors) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate differences ``en - tgt`` of related and unrelated pairs, ``[N, H]``.

    Distances and top-k shares are both computed from these, so the two always
    describe exactly the same pairs.  Unrelated: English words of sentence i
    against target words of sentence i+1 (cyclically), matched by position,
    as many as the shorter side has.
    """
    hidden = next((v.shape[1] for triple in vectors for v in triple[:2] if v.ndim == 2), 0)
    related = [en - tgt for en, tgt, _ in vectors]
    unrelated = []
    if len(vectors) > 1:
        for i, (en, _, _) in enumerate(vectors):
            other = vectors[(i + 1) % len(vectors)][1]
            k = min(len(en), len(other))
            if k:
                unrelated.append(en[:k] - other[:k])
    cat = lambda parts: torch.cat(parts).float() if parts else torch.zeros(0, hidden)  # noqa: E731
    return cat(related), cat(unrelated)


def related_unrelated(vectors: Vectors) -> tuple[np.ndarray, np.ndarray]:
    """Distances of aligned pairs, and of position-matched pairs across sentences."""
    related, unrelated = pair_differences(vectors)
    return norms(related), norms(unrelated)


def norms(diffs: torch.Tensor) -> np.ndarray:
    """Row-wise L2 norms of ``[N, H]`` differences as a float64 array."""
    return torch.linalg.vector_norm(diffs.double(), dim=1).numpy() if len(diffs) else np.zeros(0)


def drift(vectors, reference_vectors) -> np.ndarray:
    """‖f(s_j) − f⁰(s_j)‖ for every English regularizer vector."""
    parts = [torch.linalg.vector_norm(a[2] - b[2], dim=1) for a, b in zip(vectors, reference_vectors)]
    return torch.cat(parts).numpy() if parts else np.zeros(0)


def distance_summary(encoder, examples: list[Any], pad_id: int, reference=None) -> dict[str, float]:
    """Mean related / unrelated distance (and English drift against ``reference``)."""
    vectors = pair_vectors(encoder, examples, pad_id)
    related, unrelated = related_unrelated(vectors)
    summary = {
        "related_mean": float(related.mean()) if related.size else float("nan"),
        "unrelated_mean": float(unrelated.mean()) if unrelated.size else float("nan"),
        "pairs": int(related.size),
    }
    if reference is not None:
        summary["english_drift_mean"] = float(drift(vectors, pair_vectors(reference, examples, pad_id)).mean())
    return summary


# ---------------------------------------------------------------------------
# Where a distance lives: top-k dimension shares
# ---------------------------------------------------------------------------
def topk_share(diffs: torch.Tensor, k: int) -> float:
    """Share of the squared distance held by a pair's k largest coordinates.

    Definition (per pair, then averaged): for each pair ``d = u - v`` sort the
    squared coordinate differences ``d_h**2`` in decreasing order and take
    ``sum(top k) / sum(all)``; return the mean of that ratio over pairs (pairs
    at distance 0 are left out).  The k dimensions may differ from pair to
    pair.  This is the paper's "share of the distance held by the top-10 /
    top-100 dimensions": with H equal coordinates it is ``k / H`` (2.6% and
    26% for H=384), so values far above that mean a few coordinates dominate.
    See :func:`fixed_topk_share` for the variant with one set of dimensions.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    squared = diffs.double().pow(2)
    total = squared.sum(dim=1)
    keep = total > 0
    if not bool(keep.any()):
        return float("nan")
    top = squared[keep].topk(min(k, squared.shape[1]), dim=1).values.sum(dim=1)
    return float((top / total[keep]).mean())


def fixed_topk_share(diffs: torch.Tensor, k: int) -> float:
    """Share of the *total* squared distance of all pairs held by the k
    dimensions that contribute most over all pairs (one fixed set).

    Close to :func:`topk_share` when the same "rogue" dimensions dominate
    every pair; much lower when each pair's largest coordinates differ.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    per_dim = diffs.double().pow(2).sum(dim=0)
    total = float(per_dim.sum())
    if total == 0:
        return float("nan")
    return float(per_dim.topk(min(k, len(per_dim))).values.sum()) / total


# ---------------------------------------------------------------------------
# How well distance separates related from unrelated pairs
# ---------------------------------------------------------------------------
def separation_auc(related: np.ndarray, unrelated: np.ndarray) -> float:
    """ROC AUC of "smaller distance => related": P(d_unrelated > d_related),
    ties counting one half (the Mann-Whitney U statistic over n1 * n2).

    1.0: every related pair is closer than every unrelated pair; 0.5: distance
    says nothing.  Rank-based, so it is unaffected by the scale of the space,
    which differs between model states.
    """
    related, unrelated = np.asarray(related, float), np.asarray(unrelated, float)
    if not related.size or not unrelated.size:
        return float("nan")
    ranks = rankdata(np.concatenate([related, unrelated]))
    n_rel, n_unrel = related.size, unrelated.size
    u_unrelated = ranks[n_rel:].sum() - n_unrel * (n_unrel + 1) / 2
    return float(u_unrelated / (n_rel * n_unrel))


def histogram_overlap(related: np.ndarray, unrelated: np.ndarray, bins: int = 50) -> float:
    """Overlap of the two normalised histograms on shared bins: sum of the
    bin-wise minimum of the two probability masses.

    1.0: identical histograms, 0.0: disjoint.  Unlike the AUC it sees the
    shape the reader sees in the figure (bins spanning both samples' range).
    """
    related, unrelated = np.asarray(related, float), np.asarray(unrelated, float)
    if not related.size or not unrelated.size:
        return float("nan")
    edges = shared_bins([related, unrelated], bins)
    p = np.histogram(related, edges)[0] / related.size
    q = np.histogram(unrelated, edges)[0] / unrelated.size
    return float(np.minimum(p, q).sum())


def shared_bins(samples: Sequence[np.ndarray], bins: int = 50) -> np.ndarray:
    """Equal-width bin edges spanning all samples (one x axis for a figure)."""
    values = [np.asarray(s, float) for s in samples if len(s)]
    low = min((float(v.min()) for v in values), default=0.0)
    high = max((float(v.max()) for v in values), default=1.0)
    if high <= low:
        high = low + 1.0
    return np.linspace(low, high, bins + 1)


# ---------------------------------------------------------------------------
# One model state in numbers
# ---------------------------------------------------------------------------
def _stats(prefix: str, distances: np.ndarray, diffs: torch.Tensor) -> dict[str, float]:
    empty = not distances.size
    return {
        f"{prefix}_n": int(distances.size),
        f"{prefix}_mean": float("nan") if empty else float(distances.mean()),
        f"{prefix}_median": float("nan") if empty else float(np.median(distances)),
        f"{prefix}_std": float("nan") if empty else float(distances.std()),
        f"{prefix}_top10_share": topk_share(diffs, 10) if not empty else float("nan"),
        f"{prefix}_top100_share": topk_share(diffs, 100) if not empty else float("nan"),
        f"{prefix}_top10_share_fixed": fixed_topk_share(diffs, 10) if not empty else float("nan"),
        f"{prefix}_top100_share_fixed": fixed_topk_share(diffs, 100) if not empty else float("nan"),
    }


def state_summary(related_diffs: torch.Tensor, unrelated_diffs: torch.Tensor) -> dict[str, float]:
    """Means, medians, top-k shares of both populations, their ratio, AUC and
    histogram overlap: everything the figure shows, as numbers."""
    related, unrelated = norms(related_diffs), norms(unrelated_diffs)
    summary = {**_stats("related", related, related_diffs), **_stats("unrelated", unrelated, unrelated_diffs)}
    summary["mean_ratio"] = summary["related_mean"] / summary["unrelated_mean"] if unrelated.size else float("nan")
    summary["auc"] = separation_auc(related, unrelated)
    summary["overlap"] = histogram_overlap(related, unrelated)
    summary["hidden_size"] = int(related_diffs.shape[1]) if related_diffs.ndim == 2 else 0
    return summary
