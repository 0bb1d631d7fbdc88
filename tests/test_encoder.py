"""Encoder loading (xlt.models.encoder): a random model is one model."""

from __future__ import annotations

import torch

from xlt.contract import compose
from xlt.models.encoder import load_encoder


def test_a_random_model_is_the_same_in_every_call_and_leaves_the_callers_rng(tiny_cache):
    """xlt-analyze and retrieval load model=tiny's "original" without seeding
    first: it was a new random init per run (related mean 4.578, then 3.873;
    walkthrough audit).  Its weights come from model.random.seed, under a
    forked RNG, so a caller's seeded draws are the same with or without it."""
    cfg = compose(["model=tiny", f"paths.cache_dir={tiny_cache}", "paths.output_dir=unused"])
    torch.manual_seed(123)
    first = load_encoder(cfg.model, str(tiny_cache)).state_dict()
    after = torch.rand(3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    assert torch.equal(after, expected)  # the caller's RNG was not consumed
    torch.manual_seed(7)
    second = load_encoder(cfg.model, str(tiny_cache)).state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other = compose(["model=tiny", "model.random.seed=1", f"paths.cache_dir={tiny_cache}", "paths.output_dir=unused"])
    third = load_encoder(other.model, str(tiny_cache)).state_dict()
    assert not torch.equal(first["embeddings.word_embeddings.weight"], third["embeddings.word_embeddings.weight"])
