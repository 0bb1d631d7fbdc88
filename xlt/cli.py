"""Entry points: ``xlt`` (Hydra app), ``xlt-align``, ``xlt-adjust``,
``xlt-report`` and ``xlt-analyze``.

Errors the user can fix (``XltError``, an unknown config choice) print one
line and exit with code 2.  In a multirun (``-m``) a failing job writes a
``results.json`` with ``status: failed`` and the sweep goes on.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from xlt.config import CONF_DIR

GROUPS = ("model", "lang", "task", "mode", "corpus", "aggregation", "tokens", "aligner", "trainer", "logger", "data", "experiment")

log = logging.getLogger("xlt")


def fail(message: str, code: int = 2) -> None:
    print(f"xlt: error: {message}", file=sys.stderr)
    sys.exit(code)


def check_choices(argv: list[str]) -> None:
    """Reject an unknown group choice (``lang=xx``) with one line naming the
    valid ones, before Hydra prints a multi-line composition error."""
    for arg in argv:
        if "=" not in arg or arg.startswith(("-", "+", "~", "hydra")):
            continue
        group, _, values = arg.partition("=")
        if group not in GROUPS or not (CONF_DIR / group).is_dir():
            continue
        valid = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        for value in values.split(","):
            if value and value != "null" and value not in valid:
                fail(f"unknown {group} '{value}'; valid: {', '.join(valid)}")


def check_launcher(argv: list[str]) -> None:
    """A launcher config with required fields left as ``???`` (e.g. the Slurm
    partition) fails with one line naming them, before any job is submitted."""
    from omegaconf import OmegaConf

    chosen = [a.split("=", 1)[1] for a in argv if a.startswith("hydra/launcher=")]
    path = CONF_DIR / "hydra" / "launcher" / f"{chosen[-1]}.yaml" if chosen else None
    if path is None or not path.is_file():
        return
    launcher = OmegaConf.load(path)
    given = {a.split("=", 1)[0].removeprefix("hydra.launcher.") for a in argv if a.startswith("hydra.launcher.")}
    missing = [k for k in launcher if k != "defaults" and OmegaConf.is_missing(launcher, k) and k not in given]
    if missing:
        fields = ", ".join(f"hydra.launcher.{k}" for k in missing)
        fail(f"hydra/launcher={chosen[-1]} needs {fields} (pass it, or set it in {path.relative_to(CONF_DIR.parent)})")


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


def dispatch(cfg) -> float | None:
    """Run the stage named by ``command``; turn bad input into one line."""
    from hydra.core.hydra_config import HydraConfig

    from xlt.errors import XltError

    quiet_libraries()

    multirun = HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"
    try:
        return run_command(cfg)
    except XltError as err:
        record_failure(cfg, str(err))
        if multirun:
            log.error("job failed: %s", err)
            return None
        fail(str(err))
    except Exception as err:  # noqa: BLE001 - a sweep must survive one job's crash
        if not multirun:
            raise
        record_failure(cfg, f"{type(err).__name__}: {err}")
        log.error("job failed:\n%s", traceback.format_exc())
        return None


def run_command(cfg) -> float | None:
    from xlt.stages.adjust import adjust_stage
    from xlt.stages.align import align_stage
    from xlt.stages.job import run_job

    if cfg.command == "run":
        results = run_job(cfg)
        first = next(iter(results.get("metrics", {}).values()), {})  # {} on DDP ranks > 0
        return next((v for k, v in first.items() if k != "n"), None)
    if cfg.command == "align":
        corpus = align_stage(cfg, _tokenizer(cfg))
        print(f"alignments: {corpus.path} ({len(corpus.train)} pairs, {len(corpus.heldout)} held out)")
        return None
    if cfg.command == "adjust":
        print(f"adjusted model: {adjust_stage(cfg)}")
        return None
    from xlt.errors import XltError

    raise XltError(f"unknown command '{cfg.command}'; valid: run, align, adjust")


def _tokenizer(cfg):
    from xlt.models.encoder import load_tokenizer

    return load_tokenizer(cfg.model, cfg.paths.cache_dir) if cfg.aggregation.name == "subword" else None


def record_failure(cfg, message: str) -> None:
    """A failed job leaves results.json with its config and the error, never a
    half-written result."""
    try:
        from xlt.artifacts import write_json
        from xlt.keys import identity

        out = Path(cfg.paths.output_dir)
        if cfg.command == "run" and not (out / "results.json").exists():
            write_json(out / "results.json", {"config": identity(cfg), "status": "failed", "error": message})
    except Exception:  # noqa: BLE001 - reporting a failure must not fail
        pass


def main() -> None:
    """``xlt [overrides]``: one job, or a sweep with ``-m``."""
    check_choices(sys.argv[1:])
    check_launcher(sys.argv[1:])
    _hydra_app()()


def align_main() -> None:
    """``xlt-align [overrides]``: sample and word-align a corpus (cached)."""
    sys.argv.insert(1, "command=align")
    main()


def adjust_main() -> None:
    """``xlt-adjust [overrides]``: adjust an encoder (cached), no fine-tuning."""
    sys.argv.insert(1, "command=adjust")
    main()


def report_main() -> None:
    """``xlt-report DIR...``: paper-style tables with significance markers."""
    from xlt.report import main as report

    sys.exit(report())


def analyze_main() -> None:
    """``xlt-analyze``: related/unrelated distance histograms per model state."""
    from xlt.analysis.cli import main as analyze

    sys.exit(analyze())
