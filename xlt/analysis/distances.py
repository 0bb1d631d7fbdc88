"""L2 distances between last-layer vectors of related and unrelated word pairs.

*Related* pairs are aligned words of a parallel sentence pair; *unrelated*
pairs take the English words of sentence i and target words of sentence
i+1 (an unpaired sentence), position by position.  *Drift* is the distance
of an English word's vector from the frozen original model's vector.
These are the paper's evidence that adjustment pulls translations together
and that fine-tuning undoes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xlt.models.adjust import collate_aligned
from xlt.models.pooling import pool_spans


@torch.no_grad()
def pair_vectors(encoder, examples: list[Any], pad_id: int, batch_size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per example: (English pair vectors, target pair vectors, English regularizer vectors)."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_aligned(chunk, pad_id).items()}
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state.float()
        pooled = {
            name: (pool_spans(hidden, batch[f"{name}_row"], batch[name]).cpu(), batch[f"{name}_row"].cpu())
            for name in ("pair_en", "pair_tgt", "reg")
        }
        size = len(chunk)
        for b in range(size):
            out.append(tuple(vectors[rows == (b + size if name == "pair_tgt" else b)] for name, (vectors, rows) in pooled.items()))
    return out


def related_unrelated(vectors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
    """Distances of aligned pairs, and of position-matched pairs across sentences."""
    related = [torch.linalg.vector_norm(en - tgt, dim=1) for en, tgt, _ in vectors]
    unrelated = []
    for i, (en, _, _) in enumerate(vectors):
        other = vectors[(i + 1) % len(vectors)][1]
        k = min(len(en), len(other))
        if k and len(vectors) > 1:
            unrelated.append(torch.linalg.vector_norm(en[:k] - other[:k], dim=1))
    cat = lambda parts: torch.cat(parts).numpy() if parts else np.zeros(0)  # noqa: E731
    return cat(related), cat(unrelated)


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
