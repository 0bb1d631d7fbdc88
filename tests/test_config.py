"""Config composition: model-specific adjustment defaults reach every mode."""

from __future__ import annotations

import pytest
from xlt.errors import XltError

from xlt.contract import compose


@pytest.mark.parametrize("mode", ["original", "adjusted", "continual"])
def test_adjustment_settings_are_read_under_every_mode(mode):
    # xlt-adjust runs under any mode; a model YAML sets the defaults, the command line wins.
    cfg = compose(["paths.output_dir=/tmp/x", f"mode={mode}", "model=mbert", "adjustment.dropout=false",
                          "adjustment.lr=1e-5", "adjustment.freeze_embeddings=true"])
    assert (cfg.adjustment.dropout, cfg.adjustment.lr, cfg.adjustment.freeze_embeddings) == (False, 1e-5, True)


def test_model_yaml_sets_its_adjustment_defaults():
    cfg = compose(["paths.output_dir=/tmp/x", "model=e5_small"])
    assert (cfg.adjustment.dropout, cfg.adjustment.freeze_embeddings) == (False, True)


def test_mbert_keeps_the_papers_adjustment_settings():
    cfg = compose(["paths.output_dir=/tmp/x", "model=mbert", "mode=adjusted"])
    assert (cfg.adjustment.lr, cfg.adjustment.reduction, cfg.adjustment.dropout, cfg.adjustment.freeze_embeddings) == (5e-5, "mse", True, False)


def test_typed_schema_rejects_bad_values():
    with pytest.raises(XltError, match="Error merging override corpus.size=many: Value 'many' of type 'str' could not"):
        compose(["paths.output_dir=/tmp/x", "corpus.size=many"])
    with pytest.raises(XltError, match="Could not override 'task.not_a_key'"):
        compose(["paths.output_dir=/tmp/x", "task.not_a_key=1"])
