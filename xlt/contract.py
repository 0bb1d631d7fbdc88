"""The config contract: compose a job config, bind its task, validate it.

Every entry point goes through here before any work: ``xlt`` and ``xlt -m``
(each value of a sweep, ``xlt.cli.check_jobs``), ``xlt-align``,
``xlt-adjust``, ``xlt-analyze``, and ``run_job`` itself when called from
Python.  ``validate`` covers every key of the composed config: the schemas'
enums and ranges and the rules between fields (``xlt.config.problems``,
Lightning's Trainer arguments included), the task's options schema and
what the task can do for the language (``xlt.tasks.registry``).  The first
problem is raised as one ``XltError`` line.

Hardware is not part of the contract: a sweep for Slurm is composed and
validated on a login node without a GPU; ``xlt.stages.trainer.check_hardware``
runs in the job.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, open_dict

from xlt import config
from xlt.errors import XltError


def compose(overrides: list[str], check: bool = False) -> DictConfig:
    """The bound job config of ``overrides`` outside a Hydra app (tests,
    ``xlt-analyze``, bench).  ``paths.output_dir`` must be given (it is
    Hydra's run dir inside an app); ``hydra.searchpath=[file://DIR]`` adds a
    folder of config groups (a new language, model or task YAML).
    ``check`` validates it while those folders are known: a language file
    may replace the files of a task that only a searchpath folder has."""
    return bind(_composed(overrides, check=check))


def hydra_settings(overrides: list[str]) -> DictConfig:
    """The ``hydra`` node that ``overrides`` compose to: a preset's sweep
    (``sweeper.params``: a paper table's ``corpus.size: 5000,...,250000``),
    whether it runs as a multirun (``mode``), the launcher it chose."""
    return _composed(overrides, return_hydra_config=True).hydra


def _composed(overrides: list[str], return_hydra_config: bool = False, check: bool = False) -> DictConfig:
    """Hydra's composition of ``overrides`` from xlt's config folder (and
    validated, with ``check``); a composition error is one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    config.register_configs()
    try:
        with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
            cfg = hydra_compose("config", overrides=overrides, return_hydra_config=return_hydra_config or check)
    except HydraException as err:
        raise XltError(one_line(err)) from None
    if check:
        searchpath = list(cfg.hydra.searchpath)
        if not return_hydra_config:
            with open_dict(cfg):
                del cfg["hydra"]
        validate(cfg, searchpath)
    return cfg


def bind(cfg: DictConfig) -> DictConfig:
    """``cfg`` with its data root spelled canonically and its task options
    typed by the task's schema (in place)."""
    config.canonical_data_root(cfg)
    if not config.trains(cfg):
        return cfg
    from xlt.tasks import registry  # imports torch

    return registry.bind(cfg)


def validate(cfg: DictConfig, searchpath: list[str] | None = None) -> None:
    """Bind the task and check every key of a composed job config; raise
    the first problem as an XltError naming the key, its value and what is
    allowed.  ``searchpath``: its ``hydra.searchpath`` (None: the running job's)."""
    bind(cfg)
    for problem in config.problems(cfg, searchpath):
        raise XltError(problem)
    if config.trains(cfg):
        from xlt.tasks import registry

        for problem in registry.problems(cfg):
            raise XltError(problem)


def one_line(err: BaseException) -> str:
    """A composition error as a single line: an unknown group choice names
    the valid ones (those of every config folder on the search path); other
    errors get the first line of their cause (Hydra's "Error merging
    override x=abc" says why only there)."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(err, MissingConfigException) and err.options is not None and err.missing_cfg_file:
        group, _, value = str(err.missing_cfg_file).rpartition("/")
        return f"unknown {group} '{value}'; valid: {', '.join(sorted(err.options))}"
    if isinstance(err, OverrideParseException):  # Hydra's message names neither the override nor the fix
        reason = " ".join(str(err.message).split()).split(" See https://")[0]
        key, eq, value = err.override.partition("=")
        hint = (f"; quote a value with {{ }} for Hydra (a path template's {{lang}}, {{pair}}): \"{key}='{value}'\""
                if eq and ("{" in value or "}" in value) and not value.startswith(("'", '"')) else "")
        return f"cannot parse the override {err.override}: {reason}{hint}"
    message = " ".join(str(err).split())
    cause = err.__cause__ or err.__context__
    if cause is not None and not isinstance(err, XltError):
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        if reason and reason not in message:
            message = f"{message}: {reason}"
    return message
