"""Turn subword vectors into word (or special-token) vectors without Python loops.

Every aggregation of the paper is a mean over a half-open span of subword
positions: ``avg`` is the word's whole span, ``start``/``end`` a span of one
subword, ``subword`` a single subword, [CLS] is ``(0, 1)``.  So one vectorised
operation serves all of them: a cumulative sum over the sequence and two
gathers per span.
"""

from __future__ import annotations

import torch


def pool_spans(hidden: torch.Tensor, batch_index: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden[b, s:e]`` for every row ``(b, s, e)``.

    Args:
        hidden: ``[B, T, H]`` last-layer vectors.
        batch_index: ``[K]`` sentence index of each span within the batch.
        spans: ``[K, 2]`` half-open ``(start, end)`` subword positions, end > start.

    Returns:
        ``[K, H]`` span means.
    """
    zeros = hidden.new_zeros(hidden.shape[0], 1, hidden.shape[2])
    csum = torch.cat([zeros, hidden.cumsum(dim=1)], dim=1)  # [B, T+1, H]
    start, end = spans[:, 0], spans[:, 1]
    total = csum[batch_index, end] - csum[batch_index, start]
    return total / (end - start).unsqueeze(1).to(hidden.dtype)
