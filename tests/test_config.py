"""Config composition: model-specific adjustment defaults reach every mode."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from xlt.config import compose_config


@pytest.mark.parametrize("mode", ["original", "adjusted", "continual"])
def test_model_adjust_defaults_reach_the_mode(mode):
    # xlt-adjust runs under any mode, so every mode reads model.adjust.
    cfg = compose_config(["paths.output_dir=/tmp/x", f"mode={mode}", "model.adjust.dropout=false",
                          "model.adjust.lr=1e-5", "model.adjust.freeze_embeddings=true"])
    assert (cfg.mode.dropout, cfg.mode.lr, cfg.mode.freeze_embeddings) == (False, 1e-5, True)


def test_mbert_keeps_the_papers_adjustment_settings():
    cfg = compose_config(["paths.output_dir=/tmp/x", "model=mbert", "mode=adjusted"])
    assert (cfg.mode.lr, cfg.mode.reduction, cfg.mode.dropout, cfg.mode.freeze_embeddings) == (5e-5, "sum", True, False)


def test_typed_schema_rejects_bad_values():
    with pytest.raises((ValidationError, ConfigCompositionException)):
        compose_config(["paths.output_dir=/tmp/x", "corpus.size=many"])
    with pytest.raises((ValidationError, ConfigCompositionException)):
        compose_config(["paths.output_dir=/tmp/x", "task.not_a_key=1"])
