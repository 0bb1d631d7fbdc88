"""Hydra's basic sweeper (cartesian product of the swept values), minus the
jobs that repeat an earlier one.

A paper table sweeps settings that only some modes read: table 5 sweeps
``corpus.size`` for ``mode=original,adjusted``, but the original model reads
no corpus, so five of its jobs per seed would compute the same result (and
the report would warn about duplicate results).  Two jobs are the same when
their composed configs have the same ``xlt.keys.job_hash`` (every value that
can change the result, seed included; the subtrees a mode does not read,
logging and bookkeeping left out).  The first one runs and serves every row
that needs it (``xlt-report`` compares each row with the original model of
the same language and seed); the others are dropped, and the sweep says so.
Configs that are not xlt jobs pass through unchanged.
"""
# No ``from __future__ import annotations``: Hydra's plugin scan executes this
# module outside sys.modules, where dataclasses cannot resolve string annotations.

import copy
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class XltSweeperConf(BasicSweeperConf):
    """``hydra.sweeper.*``: as the basic sweeper (``params``, ``max_batch_size``)."""

    _target_: str = "hydra_plugins.xlt_sweeper.sweeper.XltSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="xlt", node=XltSweeperConf, provider="xlt")


def job_identity(config: DictConfig) -> Optional[str]:
    """``xlt.keys.job_hash`` of a composed job config (its ``hydra`` node and
    output folder left out), or None for a config that is not an xlt job."""
    if not {"mode", "paths", "hydra"} <= set(config):
        return None
    from xlt.config import canonical_data_root
    from xlt.keys import job_hash

    cfg = copy.deepcopy(config)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = "."
    return job_hash(canonical_data_root(cfg))  # as the job will spell it


class XltSweeper(BasicSweeper):
    """The basic sweeper's jobs, each distinct job once (see the module doc)."""

    def split_arguments(self, overrides: List[Override], max_batch_size: Optional[int]) -> List[List[List[str]]]:  # type: ignore[override]
        (jobs,) = BasicSweeper.split_arguments(overrides, None)
        kept = self.distinct(jobs)
        return list(BasicSweeper.split_overrides_to_chunks(kept, max_batch_size)) if max_batch_size else [kept]

    def distinct(self, jobs: List[List[str]]) -> List[List[str]]:
        """``jobs`` without those whose composed config repeats an earlier job's."""
        assert self.hydra_context is not None and self.config is not None
        first: Dict[str, List[str]] = {}
        kept, dropped = [], []
        for overrides in jobs:
            identity = job_identity(self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides)))
            if identity is not None and identity in first:
                dropped.append((overrides, first[identity]))
                continue
            if identity is not None:
                first[identity] = overrides
            kept.append(overrides)
        if dropped:
            repeat, original = dropped[0]
            log.info("sweep: %d of %d jobs repeat an earlier job (same config for every value that can change the "
                     "result) and are not launched; e.g. %s = %s", len(dropped), len(jobs), " ".join(repeat), " ".join(original))
        return kept
