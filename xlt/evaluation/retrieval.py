"""Sentence retrieval (Tatoeba / XSR) as in the paper's code.

The paper ships XTREME's ``retrieval/evaluate_retrieval.py`` and
``scripts/retrieval/run_tatoeba.sh``; this module does the same measurement:

* **embedding**: ``[CLS] tokens [SEP]`` (the tokenizer's special tokens),
  all hidden states from one forward pass; layer ``k`` is the output of
  transformer block ``k + 1`` (the paper code keeps ``hidden_states[-12:]``,
  i.e. drops the embedding output, and indexes it with ``specific_layer``,
  default 7);
* **pooling**: mean over the attention mask (special tokens included, the
  script's default), mean without the special tokens (its
  ``--pool_skip_special_token``), or the first token (``--pool_type cls``);
* **search**: cosine (L2 on unit vectors, what faiss ``normalize_L2`` +
  ``IndexFlatL2`` does) or plain L2; a query is correct when its nearest
  candidate is its translation.  The paper code searched target-language
  queries against English candidates (xx→en); both directions are measured.

Nearest neighbours are one matrix product per chunk of queries on the
encoder's device, so memory is ``chunk × candidates`` floats (4,096 × 10,000
× 4 B = 164 MB), not ``n²``; the whole candidate matrix (n × hidden) must fit
on the device.  A dense search stays exact and fast up to ~10⁵–10⁶ pairs
(n² · hidden multiply-adds: 10⁵ pairs × 768 dims ≈ 8·10¹² on a GPU, seconds);
beyond that an approximate index (faiss IVF/HNSW) is the tool.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xlt.config import DISTANCES, POOLINGS

QUERY_CHUNK = 4096


@dataclass
class Retrieval:
    """Per-query outcome of a nearest-neighbour search; query ``i``'s gold
    candidate is ``gold[i]``."""

    nearest: np.ndarray  # index of the best-scoring candidate
    rank: np.ndarray  # 1-based rank of the gold candidate
    gold: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        return (self.nearest == self.gold).astype(np.int64)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.gold) else float("nan")

    def records(self) -> list[dict[str, int]]:
        """One prediction record per query (``score`` = ``correct``, what
        ``xlt-report``'s paired tests average)."""
        return [
            {"id": i, "gold": int(g), "prediction": int(p), "rank": int(r), "correct": int(c), "score": int(c)}
            for i, (g, p, r, c) in enumerate(zip(self.gold, self.nearest, self.rank, self.correct))
        ]


def similarity(queries: torch.Tensor, candidates: torch.Tensor, distance: str) -> torch.Tensor:
    """``[q, c]`` scores, higher = nearer: cosine similarity, or minus the
    squared L2 distance (same order as L2, no square root)."""
    if distance == "cosine":
        return F.normalize(queries, dim=-1) @ F.normalize(candidates, dim=-1).T
    if distance == "l2":
        cross = queries @ candidates.T
        return 2 * cross - queries.pow(2).sum(-1, keepdim=True) - candidates.pow(2).sum(-1)[None, :]
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


def retrieve(
    queries: torch.Tensor, candidates: torch.Tensor, distance: str = "cosine", gold: Optional[Sequence[int]] = None
) -> Retrieval:
    """Nearest candidate of every query and the rank of its gold candidate
    (default: the candidate with the query's index, i.e. line-aligned pairs).

    Ties are broken towards the lower index both for ``nearest`` (torch
    ``argmax`` returns the first maximum) and for ``rank``, so ``rank == 1``
    exactly when ``nearest == gold``.
    """
    queries, candidates = queries.float(), candidates.to(queries.device).float()
    gold_index = torch.arange(len(queries)) if gold is None else torch.as_tensor(list(gold))
    if len(queries) and int(gold_index.max()) >= len(candidates):
        raise ValueError(f"gold index {int(gold_index.max())} out of range for {len(candidates)} candidates")
    nearest, rank = [], []
    for start in range(0, len(queries), QUERY_CHUNK):
        scores = similarity(queries[start : start + QUERY_CHUNK], candidates, distance)
        g = gold_index[start : start + QUERY_CHUNK].to(scores.device)
        gold_score = scores.gather(1, g[:, None])
        before = torch.arange(scores.shape[1], device=scores.device)[None, :] < g[:, None]
        ahead = (scores > gold_score) | ((scores == gold_score) & before)
        nearest.append(scores.argmax(dim=1).cpu())
        rank.append((ahead.sum(dim=1) + 1).cpu())
    if not nearest:
        empty = np.zeros(0, dtype=np.int64)
        return Retrieval(empty, empty, empty)
    return Retrieval(torch.cat(nearest).numpy(), torch.cat(rank).numpy(), gold_index.numpy())


# ---------------------------------------------------------------------------
# Embedding
# ---------------------------------------------------------------------------
def pool(hidden: torch.Tensor, attention: torch.Tensor, special: torch.Tensor, pooling: str, skip_special: bool) -> torch.Tensor:
    """``[..., B, T, H]`` hidden states → ``[..., B, H]`` sentence vectors.

    ``mean`` averages the attended tokens (without the special tokens when
    ``skip_special``; a sentence of only special tokens then falls back to
    all of them rather than dividing by zero); ``cls`` takes position 0.
    """
    if pooling == "cls":
        return hidden[..., 0, :]
    if pooling != "mean":
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    mask = attention.bool()
    if skip_special:
        words = mask & ~special.bool()
        mask = torch.where(words.any(dim=1, keepdim=True), words, mask)
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=-2) / weights.sum(dim=-2).clamp(min=1)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The job's ``trainer.precision`` on CUDA: bf16 or fp16 autocast for a
    ``bf16-*`` / ``16-*`` job (the encoder stays in fp32, matmuls run in half
    precision), none for ``32-true`` (the paper code embeds in fp32: half
    precision can flip near-tied neighbours).  Nothing on CPU, where half
    precision is slower than fp32 on most processors."""
    if device.type == "cuda" and precision.startswith(("bf16", "16")):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision.startswith("bf16") else torch.float16)
    return contextlib.nullcontext()


@torch.no_grad()
def embed(
    encoder,
    tokenizer,
    sentences: Sequence[str],
    layers: Sequence[int],
    pooling: str = "mean",
    skip_special: bool = False,
    batch_size: int = 64,
    max_length: int = 512,
    precision: str = "32-true",
    desc: str = "embedding",
) -> torch.Tensor:
    """``[len(layers), N, H]`` float32 sentence vectors on the encoder's device.

    Sentences are sorted by length so a batch pads to similar lengths, and
    every requested layer comes from the same forward pass
    (``output_hidden_states``); vectors are put back in input order.
    Progress (``desc``) is a bar in a terminal, else a line every
    ``$XLT_PROGRESS_S`` seconds (``xlt.progress``).
    """
    from xlt.progress import progress

    device = next(encoder.parameters()).device
    encoder.eval()
    encoded = tokenizer(list(sentences), truncation=True, max_length=max_length, return_special_tokens_mask=True)
    ids, specials = encoded["input_ids"], encoded["special_tokens_mask"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    hidden = encoder.config.hidden_size
    out = torch.empty(len(layers), len(ids), hidden, device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    select = torch.as_tensor([layer + 1 for layer in layers], device=device)  # 0 = embedding output
    for start in progress(range(0, len(order), batch_size), desc, unit="batches"):
        rows = order[start : start + batch_size]
        width = max(len(ids[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros(len(rows), width, dtype=torch.long)
        special = torch.zeros(len(rows), width, dtype=torch.long)
        for j, i in enumerate(rows):
            input_ids[j, : len(ids[i])] = torch.as_tensor(ids[i])
            attention[j, : len(ids[i])] = 1
            special[j, : len(ids[i])] = torch.as_tensor(specials[i])
        input_ids, attention, special = input_ids.to(device), attention.to(device), special.to(device)
        with autocast(device, precision):
            states = encoder(input_ids=input_ids, attention_mask=attention, output_hidden_states=True).hidden_states
        stacked = torch.stack(states).index_select(0, select).float()
        out[:, torch.as_tensor(rows, device=device)] = pool(stacked, attention, special, pooling, skip_special)
    return out


def num_layers(encoder) -> int:
    """Transformer blocks of an encoder (``layer=all`` evaluates each)."""
    return int(encoder.config.num_hidden_layers)


def plot_layers(curves: Mapping[str, Mapping[int, float]], stem: str | Path, title: str, dpi: int = 120) -> list[Path]:
    """Accuracy against layer, one line per ``"<state>, <direction>"``
    (same colour per state, solid en→xx, dashed xx→en); writes
    ``<stem>.png`` and ``<stem>.pdf``."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - for MaxNLocator

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    states = list(dict.fromkeys(name.rsplit(", ", 1)[0] for name in curves))
    colors = {state: plt.get_cmap("tab10")(i % 10) for i, state in enumerate(states)}
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, curve in curves.items():
        state, direction = name.rsplit(", ", 1)
        layers = sorted(curve)
        style = "-" if direction.startswith("en-") else "--"
        ax.plot(layers, [100 * curve[k] for k in layers], style, marker="o", markersize=3, color=colors[state], label=name)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("layer (0 = first transformer block; the paper's default is 7)")
    ax.set_ylabel("retrieval accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return paths


def layer_curves(results: Mapping[str, Any], label: str) -> dict[str, dict[int, float]]:
    """``{"<state>, <direction>": {layer: accuracy}}`` from one job's
    ``results.json``: every metric named ``<data>[_<state>].<lang>.<direction>.L<k>``
    (``xlt.analysis.retrieval``'s names); the job's own state is ``label``
    (its mode), ``_ft`` its fine-tuned state."""
    curves: dict[str, dict[int, float]] = {}
    for name, values in results.get("metrics", {}).items():
        parts = name.split(".")
        if len(parts) < 4 or not parts[3].startswith("L") or not parts[3][1:].isdigit():
            continue
        data, _, state = parts[0].partition("_")
        state = label if not state else f"{label} fine-tuned" if state == "ft" else state
        curves.setdefault(f"{state}, {parts[2]}", {})[int(parts[3][1:])] = float(values["accuracy"])
    return curves


def plot_runs(run_dirs: Sequence[str | Path], stem: str | Path, title: str = "") -> list[Path]:
    """One per-layer figure from several ``task=retrieval`` jobs (a sweep
    over ``mode`` puts each state in its own job); lines are labelled by the
    job's mode (and adjustment size)."""
    import json

    curves: dict[str, dict[int, float]] = {}
    for run in run_dirs:
        results = json.loads((Path(run) / "results.json").read_text(encoding="utf-8"))
        config = results["config"]
        size = f" ({config['size']:,} pairs)" if config.get("size") else ""  # two adjusted sizes stay apart
        curves.update(layer_curves(results, f"{config['mode']}{size}"))
    if not curves:
        raise ValueError(f"no per-layer retrieval metrics in {', '.join(map(str, run_dirs))}")
    return plot_layers(curves, stem, title)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m xlt.evaluation.retrieval RUN_DIR... --out STEM [--title T]``:
    the per-layer figure of several retrieval jobs (PNG + PDF)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m xlt.evaluation.retrieval", description=main.__doc__)
    parser.add_argument("runs", nargs="+", help="run directories with results.json (task=retrieval, layer=all)")
    parser.add_argument("--out", required=True, help="output stem: writes <out>.png and <out>.pdf")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    try:
        paths = plot_runs(args.runs, args.out, args.title)
    except (OSError, ValueError, KeyError) as err:
        print(f"xlt: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
