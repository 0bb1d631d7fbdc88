"""A Unigram tokenizer cut down to its most probable pieces, for random test models.

A random model (``model.source=random``) has one embedding row per token of
its tokenizer.  With XLM-R's 250,002 pieces that matrix is 99% of a tiny
BERT's weights: every optimiser step, checkpoint and saved model of a test
job moves it (a 32-wide model: 96 MB per checkpoint with Adam's moments).
``model.random.vocab_pieces=N`` keeps the tokenizer's N most probable pieces
plus every one-character piece and every special token, so no character the
full tokenizer knows becomes ``<unk>``; words are split into more, shorter
pieces instead.  Normalisation, pre-tokenisation and special-token templates
are the full tokenizer's: only the ids change.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from xlt.artifacts import build_once, config_hash
from xlt.errors import XltError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
FORMAT = 1  # bump when the output of trimmed() changes


def ensure_small_vocab(source_dir: str, pieces: int) -> str:
    """``<source_dir>-pieces<N>-<hash>``: the tokenizer of ``source_dir``
    trimmed to ``pieces`` pieces, built once beside it and then reused."""
    source = Path(source_dir)
    content = hashlib.sha256((source / TOKENIZER_FILE).read_bytes()).hexdigest()
    key = config_hash({"source": content, "pieces": pieces, "format": FORMAT})

    def build(tmp: Path) -> None:
        state = json.loads((source / TOKENIZER_FILE).read_text(encoding="utf-8"))
        (tmp / TOKENIZER_FILE).write_text(json.dumps(trimmed(state, pieces), ensure_ascii=False), encoding="utf-8")
        shutil.copy(source / TOKENIZER_CONFIG, tmp / TOKENIZER_CONFIG)

    return str(build_once(source.parent / f"{source.name}-pieces{pieces}-{key}", build))


def trimmed(state: dict[str, Any], pieces: int) -> dict[str, Any]:
    """``state`` (a ``tokenizer.json``) with a Unigram vocabulary of the
    ``pieces`` highest-scoring pieces, the one-character pieces and the
    special tokens, in their original order; every id that names a token
    (added tokens, ``unk_id``, the post-processor's templates) renumbered."""
    model = state["model"]
    if model.get("type") != "Unigram":
        raise XltError(f"model.random.vocab_pieces needs a Unigram tokenizer; this one is {model.get('type')}")
    vocab = model["vocab"]
    special = {token["id"] for token in state.get("added_tokens", [])}
    ordinary = [i for i in range(len(vocab)) if i not in special]
    best = set(sorted(ordinary, key=lambda i: -vocab[i][1])[:pieces])
    kept = [i for i in range(len(vocab)) if i in special or i in best or len(vocab[i][0]) == 1]
    new_id = {old: new for new, old in enumerate(kept)}
    out = json.loads(json.dumps(state))  # a deep copy of plain JSON
    out["model"]["vocab"] = [vocab[i] for i in kept]
    if model.get("unk_id") is not None:
        out["model"]["unk_id"] = new_id[model["unk_id"]]
    for token in out.get("added_tokens", []):
        token["id"] = new_id[token["id"]]
    _renumber_templates(out.get("post_processor"), new_id)
    return out


def _renumber_templates(processor: Any, new_id: dict[int, int]) -> None:
    """The special-token ids a (possibly nested) post-processor writes."""
    if not processor:
        return
    kind = processor.get("type")
    if kind == "Sequence":
        for inner in processor["processors"]:
            _renumber_templates(inner, new_id)
    elif kind == "TemplateProcessing":
        for token in processor["special_tokens"].values():
            token["ids"] = [new_id[i] for i in token["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for role in ("sep", "cls"):
            processor[role][1] = new_id[processor[role][1]]
    elif kind != "ByteLevel":
        raise XltError(f"model.random.vocab_pieces cannot renumber a {kind} post-processor")
