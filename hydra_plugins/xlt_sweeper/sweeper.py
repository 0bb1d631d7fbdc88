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

It also checks every job it composes (``xlt.contract.validate``) before any
is launched: ``xlt``'s own check composes one job per swept value, so a rule
between fields that only a combination breaks (``tokens=cls`` with
``adjustment.batch_size=1`` under the contrastive objective, swept as
``tokens=all,cls adjustment.batch_size=32,1``) is caught here, as one line and
exit 2, before Hydra makes the sweep folder, instead of as a failed job in
the middle of the sweep.  Configs that are not xlt jobs pass through unchanged.
"""
# No ``from __future__ import annotations``: Hydra's plugin scan executes this
# module outside sys.modules, where dataclasses cannot resolve string annotations.

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class XltSweeperConf(BasicSweeperConf):
    """``hydra.sweeper.*``: as the basic sweeper (``params``, ``max_batch_size``)."""

    _target_: str = "hydra_plugins.xlt_sweeper.sweeper.XltSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="xlt", node=XltSweeperConf, provider="xlt")


def job_config(config: DictConfig) -> Optional[DictConfig]:
    """A composed config as its job will hold it (a copy without the
    ``hydra`` node, the output folder ``.``: Hydra makes it later), or None
    for a config that is not an xlt job's."""
    if not {"mode", "paths", "hydra"} <= set(config):
        return None
    cfg = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])  # copying hydra's node costs more
    with open_dict(cfg):
        cfg.paths.output_dir = "."
    return cfg


def identity_of(cfg: DictConfig) -> str:
    """``xlt.keys.job_hash`` of a :func:`job_config`, its data root spelled as the job will."""
    from xlt.config import canonical_data_root
    from xlt.keys import job_hash

    return job_hash(canonical_data_root(cfg))


def problem_of(cfg: DictConfig, searchpath: List[str]) -> Optional[str]:
    """The first problem of a :func:`job_config` (``xlt.contract.validate``,
    which the job itself would stop on; it binds ``cfg`` in place), or None."""
    from xlt.contract import validate
    from xlt.errors import XltError

    try:
        validate(cfg, searchpath)
    except XltError as err:
        return str(err)
    return None


def job_identity(config: DictConfig) -> Optional[str]:
    """``xlt.keys.job_hash`` of a composed job config (its ``hydra`` node and
    output folder left out), or None for a config that is not an xlt job."""
    cfg = job_config(config)
    return None if cfg is None else identity_of(cfg)


class XltSweeper(BasicSweeper):
    """The basic sweeper's jobs, each distinct job once, each checked (see the module doc)."""

    def split_arguments(self, overrides: List[Override], max_batch_size: Optional[int]) -> List[List[List[str]]]:  # type: ignore[override]
        (jobs,) = BasicSweeper.split_arguments(overrides, None)
        kept = self.distinct(jobs)
        return list(BasicSweeper.split_overrides_to_chunks(kept, max_batch_size)) if max_batch_size else [kept]

    def distinct(self, jobs: List[List[str]]) -> List[List[str]]:
        """``jobs`` without those whose composed config repeats an earlier job's;
        a job with a problem stops the sweep before any is launched."""
        assert self.hydra_context is not None and self.config is not None
        first: Dict[str, List[str]] = {}
        kept, dropped, bad = [], [], []
        for overrides in jobs:
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            cfg = job_config(config)
            if cfg is None:  # another app's config
                kept.append(overrides)
                continue
            identity = identity_of(cfg)
            problem = problem_of(cfg, list(config.hydra.searchpath))
            if problem is not None:
                bad.append((overrides, problem))
            elif identity in first:
                dropped.append((overrides, first[identity]))
            else:
                first[identity] = overrides
                kept.append(overrides)
        if bad:
            from xlt.cli import fail

            (overrides, problem), more = bad[0], len(bad) - 1
            others = f"; {more} more of the {len(jobs)} jobs have a problem" if more else ""
            fail(f"{problem} (the sweep's job {' '.join(overrides)}{others}; no job was launched)")
        if dropped:
            repeat, original = dropped[0]
            log.info("sweep: %d of %d jobs repeat an earlier job (same config for every value that can change the "
                     "result) and are not launched; e.g. %s = %s", len(dropped), len(jobs), " ".join(repeat), " ".join(original))
        return kept
