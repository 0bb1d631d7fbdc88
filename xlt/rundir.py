"""Run folders that no two jobs share.

The default ``hydra.run.dir`` (``outputs/<date>/<time>``) and
``hydra.sweep.dir`` (``multirun/<date>/<time>``) name a folder by the
second a job started: two jobs started in the same second (``xlt lang=ru &
xlt lang=es``) would write into one folder and one results.json would be
lost.  ``conf/config.yaml`` wraps both in ``${xlt_fresh_dir:...}``, which
claims the folder with an atomic ``mkdir`` and, when it exists, takes
``<time>-2``, ``<time>-3``...  A folder given explicitly
(``hydra.run.dir=...``, how a job is rerun or resumed in place) is used as
it is.

The resolver is cached like Hydra's ``now`` (``use_cache``), so every later
read of the config, the jobs of a sweep included, sees the folder claimed
the first time.  It is registered when ``xlt.cli`` is imported, so a
process that unpickles an xlt job (submitit on a Slurm node) has it too.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from omegaconf import OmegaConf

RESOLVER = "xlt_fresh_dir"


def fresh_dir(path: str) -> str:
    """``path``, or ``path-2``, ``path-3``...: the first that did not exist, created now."""
    base = Path(str(path))
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return str(candidate)
    raise AssertionError("unreachable")


def register() -> None:
    OmegaConf.register_new_resolver(RESOLVER, fresh_dir, use_cache=True, replace=True)


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``).

    False outside Hydra and also when a HydraConfig is set without a mode
    (``compose(..., return_hydra_config=True)`` as tests and notebooks do),
    which is why ``mode`` is compared, never dereferenced.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
