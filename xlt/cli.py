"""Entry points: ``xlt`` (Hydra app), ``xlt-align``, ``xlt-adjust``,
``xlt-report`` and ``xlt-analyze``.

Errors the user can fix (``XltError``, an unknown config choice) print one
line and exit with code 2.  In a multirun (``-m``) a failing job writes a
``results.json`` with ``status: failed`` and the sweep goes on; once every
job has run, ``xlt`` exits 1 if any failed or was killed.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

from xlt import rundir
from xlt.config import CONF_DIR, trains
from xlt.errors import XltError

rundir.register()  # here, not in main(): a process that unpickles an xlt job (submitit) resolves run folders too

log = logging.getLogger("xlt")


def fail(message: str, code: int = 2) -> None:
    print(f"{program()}: error: {message}", file=sys.stderr)
    sys.exit(code)


def program() -> str:
    """The command the user typed (``xlt-align``, ``xlt-adjust`` share
    ``main``); ``xlt`` for ``python -m xlt`` and ``python -c``."""
    import os

    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return name if name.startswith("xlt") and not name.endswith(".py") else "xlt"


# Hydra's flags that print help only: the command line is not checked.  The
# others (--cfg, --info, --package) show what a run would compose, so it is
# checked first, as for a run: a dry run that prints must not pass a bad config.
HELP_FLAGS = ("-h", "--help", "--hydra-help", "--shell-completion", "-sc")
MULTIRUN_FLAGS = ("-m", "--multirun")
SHOW_FLAGS = ("-c", "--cfg", "-i", "--info")  # Hydra composes one job for these, even in a multirun


def job_overrides(argv: list[str]) -> list[list[str]]:
    """Overrides of jobs that together use every value of the command line:
    the first value of each sweep, then each other value of one sweep at a
    time (1 + 3 + 2 + 1 compositions for ``lang=es,ru,vi,hi seed=1,2,3
    mode=original,adjusted`` instead of 24).  ``hydra.*`` and flags are left
    to Hydra, except ``hydra.searchpath`` (more config folders: a new
    language YAML must compose here too)."""
    choices = []
    for override in parsed_overrides(argv):
        if override.is_sweep_override() and override.is_discrete_sweep():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    first = [values[0] for values in choices]
    jobs = [first]
    for i, values in enumerate(choices):
        jobs += [first[:i] + [value] + first[i + 1:] for value in values[1:]]
    return jobs


def parsed_overrides(argv: list[str]) -> list:
    """Hydra's parse of the job overrides of ``argv``: ``hydra.*`` and flags
    left out, except ``hydra.searchpath``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    ours = [a for a in argv if not a.startswith("-") and ("=" in a or a.startswith("~"))
            and (not a.lstrip("+~").startswith(("hydra.", "hydra/")) or a.lstrip("+~").startswith("hydra.searchpath="))]
    return OverridesParser.create().parse_overrides(ours)


def preset_sweeps(overrides: list[str], hydra: Any = None) -> list[str]:
    """``key=values`` of the ``hydra.sweeper.params`` that ``overrides`` (one
    job's) compose to (``hydra``: that composition's hydra node, when the
    caller has it), e.g. a paper table's ``corpus.size: 5000,...,250000``,
    except keys the command line sets (its value is the one the jobs get)."""
    from xlt.contract import hydra_settings

    params = (hydra if hydra is not None else hydra_settings(overrides)).sweeper.get("params") or {}
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    return [f"{key}={value}" for key, value in params.items() if key not in given]


def check_sweep_syntax(argv: list[str], hydra: Any) -> None:
    """A sweep (``lang=ru,hi``) in a command that does not run a multirun
    (no ``-m``, no preset that sets ``hydra.mode: MULTIRUN``) is one line
    saying to add -m, and one that only shows a job's config (``--cfg``,
    ``--info``: Hydra composes one job) one line saying to give one value,
    instead of Hydra's "Ambiguous value" paragraph."""
    from hydra.types import RunMode

    shows = next((a for a in argv if a in SHOW_FLAGS), None)
    multirun = any(a in MULTIRUN_FLAGS for a in argv) or "hydra.mode=MULTIRUN" in argv or hydra.mode == RunMode.MULTIRUN
    if multirun and shows is None:
        return
    for override in parsed_overrides(argv):
        if override.is_sweep_override():
            line = override.input_line
            fail(f"{line} is a sweep (several values): {shows} shows one job's config, give one value" if shows else
                 f"{line} is a sweep (several values): add -m to run one job per value (xlt -m ... {line})")


def check_jobs(argv: list[str]) -> None:
    """Compose and validate the jobs of the command line and of a preset's
    sweep (``hydra.sweeper.params``) before any runs (``xlt.contract``), so
    an unknown choice or key, a wrong type or an invalid value
    (``task.epochs=0``, also as one value of a sweep) is one line and exit 2
    instead of Hydra's multi-line report or a failed job in the middle of a
    sweep; so is a sweep without -m (``check_sweep_syntax``).  A dry run
    (``--cfg job``) is checked too, help (:data:`HELP_FLAGS`) is not.  No
    hardware check: the jobs may run elsewhere."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from xlt.contract import compose, hydra_settings, one_line

    if any(a.split("=", 1)[0] in HELP_FLAGS for a in argv):
        return
    try:
        first = job_overrides(argv)[0]
        hydra = hydra_settings(first)
        check_sweep_syntax(argv, hydra)
        sweeps = preset_sweeps(first, hydra)
        for overrides in job_overrides([*sweeps, *argv]):
            compose([*overrides, "paths.output_dir=."], check=True)
    except (HydraException, OmegaConfBaseException, XltError) as err:
        fail(one_line(err))


def check_launcher(argv: list[str]) -> None:
    """An unknown launcher (``hydra/launcher=local_gpu``) is one line naming
    the valid ones, a launcher config with required fields left as ``???``
    (e.g. the Slurm partition) one line naming them, and a bad
    ``local_gpus`` setting one line naming it (:func:`check_local_gpus`),
    before any job is submitted."""
    from omegaconf import OmegaConf

    from xlt.contract import hydra_settings

    chosen = [a.split("=", 1)[1] for a in argv if a.startswith("hydra/launcher=")]
    path = CONF_DIR / "hydra" / "launcher" / f"{chosen[-1]}.yaml" if chosen else None
    if path is None:
        return
    if not path.is_file():  # a plugin's (basic, submitit_local...), or one Hydra cannot find
        searchpath = [a for a in argv if a.lstrip("+~").startswith("hydra.searchpath=")]
        try:
            hydra_settings([*searchpath, f"hydra/launcher={chosen[-1]}"])
        except XltError as err:
            fail(str(err))
        check_local_gpus(argv, chosen[-1])  # hydra/launcher=xlt_local_gpus: its schema's name
        return
    launcher = OmegaConf.load(path)
    given = {a.split("=", 1)[0].removeprefix("hydra.launcher.") for a in argv if a.startswith("hydra.launcher.")}
    missing = [k for k in launcher if k != "defaults" and OmegaConf.is_missing(launcher, k) and k not in given]
    if missing:
        fields = ", ".join(f"hydra.launcher.{k}" for k in missing)
        fail(f"hydra/launcher={chosen[-1]} needs {fields} (pass it, or set it in {path.relative_to(CONF_DIR.parent)})")
    check_local_gpus(argv, chosen[-1])


LOCAL_GPUS = "hydra_plugins.xlt_local_gpus.launcher.LocalGpusLauncher"


def check_local_gpus(argv: list[str], launcher: str) -> None:
    """``local_gpus``'s settings (the GPUs exist, ``n_jobs``, ``order``...)
    checked before Hydra starts: by the time the launcher is set up, Hydra
    has claimed the sweep folder, and a bad setting left it behind (empty,
    or with multirun.yaml).  Its jobs run on this machine, so its GPUs are
    checked here; other launchers' jobs may run elsewhere."""
    from xlt.contract import hydra_settings

    if any(a.split("=", 1)[0] in HELP_FLAGS for a in argv):
        return
    settings = [a for a in argv if a.lstrip("+~").startswith(("hydra.launcher.", "hydra.searchpath="))]
    try:
        node = hydra_settings([*settings, f"hydra/launcher={launcher}"]).launcher
    except XltError as err:
        fail(str(err))
    if str(node.get("_target_", "")) != LOCAL_GPUS:
        return
    from hydra_plugins.xlt_local_gpus.launcher import check_settings

    check_settings(**{key: value for key, value in node.items() if key != "_target_"})


def _hydra_app():
    import hydra
    from omegaconf import DictConfig

    from xlt.config import register_configs

    register_configs()

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def app(cfg: DictConfig) -> float | None:
        return dispatch(cfg)

    return app


def quiet_libraries() -> None:
    """Route Lightning's messages through Hydra's log handlers (console and
    the job's log file) instead of printing each line twice, and drop its
    advertising tips and known-harmless warnings."""
    import warnings

    import lightning  # noqa: F401 - installs its handlers on import; remove them after

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "Tip:" not in r.getMessage())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # Mid-epoch resume is exact: SamplerPosition restores the sampler's epoch
    # and batch from every checkpoint, which Lightning cannot see.
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")


def dispatch(cfg) -> float | None:
    """Run the stage named by ``command``; turn bad input into one line and
    a stop signal into a "stopped" record and a non-zero exit (``xlt.stopping``)."""
    import time

    from xlt import stopping

    multirun = rundir.in_multirun()
    started = time.time()
    if stopping.sweep_stop() is not None:  # an earlier job of this sweep was stopped: start no more
        record_stopped(cfg, stopping.note_lost(cfg.paths.output_dir), "not run", started)
        return None
    try:
        with stopping.handling_signals():  # from the job's first line: a stop while it announces is recorded too
            announce(cfg)
            if trains(cfg):  # xlt-align runs no Lightning: do not import it (and torch)
                quiet_libraries()
            return run_command(cfg)
    except stopping.Stopped as stop:
        record_stopped(cfg, stopping.note_lost(cfg.paths.output_dir, stop), stop.stage, started)
        log.error("job %s %s", cfg.paths.output_dir, stop.message)
        requeue = stopping.previous_handler(stop.signum) if stop.name == "SIGUSR2" else None
        if requeue is not None:  # submitit's handler: requeue this job (it resumes), then exit
            requeue(stop.signum, None)
        if multirun:  # the sweep records the rest as not run and exits non-zero (main)
            return None
        fail(f"{stop.message}; rerun the same command to continue (finished stages are cached, "
             "fine-tuning resumes from its checkpoint)", code=stop.exit_code)
    except XltError as err:
        record_failure(cfg, str(err), started)
        if multirun:
            log.error("job %s failed: %s", cfg.paths.output_dir, err)
            return None
        fail(str(err))
    except Exception as err:  # noqa: BLE001 - a sweep must survive one job's crash
        if not multirun:
            raise
        record_failure(cfg, f"{type(err).__name__}: {err}", started)
        log.error("job %s failed:\n%s", cfg.paths.output_dir, traceback.format_exc())
        return None


def announce(cfg) -> None:
    """Say first which job this is, where its log is read (a Slurm ``.out``,
    a launcher's ``console.log``, ``train.log``): its overrides (the tracker
    run's name), its folder, its composed config and the code it runs."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    from xlt.keys import code_commit, code_version

    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    overrides = (hydra.job.override_dirname if hydra else "") or "(no overrides)"
    out = Path(str(cfg.paths.output_dir))
    lines = [f"job {overrides}: xlt {cfg.command} in {out}"]
    if hydra is not None and hydra.output_subdir:
        lines.append(f"config: {out / str(hydra.output_subdir) / 'config.yaml'}")
    commit = code_commit()
    lines.append(f"code: xlt {code_version()}" + (f" (git {commit})" if commit else ""))
    log.info("\n  ".join(lines))


def run_command(cfg) -> float | None:
    from xlt.contract import validate

    from xlt.revisions import start_job

    validate(cfg)
    start_job()  # this job's hub commits, not an earlier job's of an in-process sweep
    # Each command imports only its stage: xlt-align needs neither torch nor
    # Lightning (their ~0.5 GB would be most of its memory at 250K pairs).
    if cfg.command == "run":
        from xlt.stages.job import run_job

        results = run_job(cfg)
        first = next(iter(results.get("metrics", {}).values()), {})  # {} on DDP ranks > 0
        return next((v for k, v in first.items() if k != "n"), None)
    if cfg.command == "align":
        from xlt.stages.align import align_stage

        corpus = align_stage(cfg, _tokenizer(cfg))
        print(f"alignments: {corpus.path} ({len(corpus.train)} pairs, {len(corpus.heldout)} held out)")
        return None
    if cfg.command == "adjust":
        from xlt.stages.adjust import adjust_stage

        print(f"adjusted model: {adjust_stage(cfg)}")
        return None
    raise XltError(f"unknown command '{cfg.command}'; valid: run, align, adjust")


def _tokenizer(cfg):
    if cfg.aggregation.name != "subword":
        return None
    from xlt.models.encoder import load_tokenizer

    return load_tokenizer(cfg.model, cfg.paths.cache_dir)


def record_stopped(cfg, message: str, stage: str, started: float) -> None:
    """A stopped job (or one its sweep's stop kept from running) leaves
    results.json saying so, never an "ok" or nothing at all."""
    try:
        from xlt import results

        if cfg.command == "run":
            results.write_stopped(cfg.paths.output_dir, cfg, message, stage, started)
    except Exception:  # noqa: BLE001 - reporting a stop must not fail
        log.warning("could not record the stop in %s", cfg.paths.output_dir)


def record_failure(cfg, message: str, started: float) -> None:
    """A failed job leaves results.json with its config and the error, never a
    half-written result, nor an earlier run's result (``started``: when this
    job started; see ``results.write_failed``)."""
    try:
        from xlt import results

        if cfg.command == "run":
            results.write_failed(cfg.paths.output_dir, cfg, message, started)
    except Exception:  # noqa: BLE001 - reporting a failure must not fail
        pass


def quiet_broken_pipe() -> None:
    """``xlt --help | head`` ends quietly, as shell tools do, instead of a
    BrokenPipeError traceback (the default SIGPIPE action ends the process)."""
    import signal

    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def main() -> None:
    """``xlt [overrides]``: one job, or a sweep with ``-m``."""
    quiet_broken_pipe()
    check_launcher(sys.argv[1:])
    check_jobs(sys.argv[1:])
    _hydra_app()()
    from xlt import stopping
    from xlt.report.sweep import SweepOutcome

    if (stop := stopping.sweep_stop()) is not None:  # this process was told to stop: name what that cost
        lost = stopping.lost_jobs()
        fail(f"the sweep was {stop.message}: {len(lost)} job(s) did not finish: {listed(lost)}", code=stop.exit_code)
    if SweepOutcome.problems:  # a multirun ran every job; say which did not end ok
        problems = [problem.splitlines()[0] for problem in SweepOutcome.problems]
        fail(f"{len(problems)} job(s) of the sweep did not finish ok: {listed(problems)}", code=1)


def listed(items: list[str], most: int = 10) -> str:
    """The first ``most`` of ``items`` on one line, and how many more."""
    return "; ".join(items[:most]) + (f"; and {len(items) - most} more (`xlt-report` lists them)"
                                      if len(items) > most else "")


def with_override(argv: list[str], *overrides: str) -> list[str]:
    """``argv`` with ``overrides`` beside its other overrides: Hydra's parser
    takes the overrides as one run of words, so one put before a flag
    (``xlt-align command=align -m lang=ru``) left the rest unrecognised."""
    first = next((i for i, arg in enumerate(argv) if i > 0 and "=" in arg and not arg.startswith("-")), len(argv))
    return [*argv[:first], *overrides, *argv[first:]]


def align_main() -> None:
    """``xlt-align [overrides]``: word-align a corpus (cached); its --help is
    ``conf/hydra/help/xlt_align.yaml``."""
    sys.argv = with_override(sys.argv, "command=align", "hydra/help=xlt_align")
    main()


def adjust_main() -> None:
    """``xlt-adjust [overrides]``: adjust an encoder (cached), no fine-tuning;
    its --help is ``conf/hydra/help/xlt_adjust.yaml``."""
    sys.argv = with_override(sys.argv, "command=adjust", "hydra/help=xlt_adjust")
    main()


def report_main() -> None:
    """``xlt-report DIR...``: paper-style tables with significance markers."""
    from xlt.report import main as report

    quiet_broken_pipe()
    sys.exit(report())


def analyze_main() -> None:
    """``xlt-analyze``: related/unrelated distance histograms per model state."""
    from xlt.analysis.cli import main as analyze

    quiet_broken_pipe()
    sys.exit(analyze())
