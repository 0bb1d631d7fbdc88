"""Invalid values stop at composition with one line and exit code 2
(issue 13, item 4; the Hydra key/type cases of item 5)."""

from __future__ import annotations

import sys

import pytest

from xlt import cli

CASES = {
    "task.epochs=0": "task.epochs=0.0: must be > 0",
    "task.epochs=-1": "task.epochs=-1.0: must be > 0",
    "task.batch_size=0": "task.batch_size=0: must be >= 1",
    "task.eval_batch_size=0": "task.eval_batch_size=0: must be >= 1",
    "task.eval_limit=-1": "task.eval_limit=-1: must be >= 1, or null",
    "task.train_limit=0": "task.train_limit=0: must be >= 1, or null",
    "corpus.size=0": "corpus.size=0: must be >= 1",
    "seed=-1": "seed=-1: must be in [0, 2**32)",
    "seed=4294967296": "seed=4294967296: must be in [0, 2**32)",
    "trainer.accumulate_grad_batches=0": "trainer.accumulate_grad_batches=0: must be >= 1",
    "trainer.accumulate_grad_batches=5": "trainer.accumulate_grad_batches=5: must divide task.batch_size=32",
    "adjustment.target=frozn": "adjustment.target=frozn: valid: current, frozen",
    "adjustment.warmup_unit=epochs": "adjustment.warmup_unit=epochs: valid: sentences, steps",
    "continual.init=random": "continual.init=random: valid: adjusted, original",
    "continual.reference=foo": "continual.reference=foo: valid: original, init",
    "aggregation.name=mean": "aggregation.name=mean: valid: avg, start, end, subword",
    "aligner.symmetrization=union": "aligner.symmetrization=union: valid: intersect, grow-diag-final-and",
    "corpus.format=csv": "corpus.format=csv: valid:",
    "+task.options.n_bets=3": "task.options.n_bets: Key 'n_bets' not in 'NliOptions'",
    "task.options.mixed_seed=abc": "task.options.mixed_seed: Value 'abc' of type 'str' could not be converted to Integer",
    "task.epochs=abc": "Error merging override task.epochs=abc: Value 'abc' of type 'str' could not be converted to Float",
    "task.bogus=1": "Could not override 'task.bogus'",
}


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["xlt", "model=tiny", *args])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    return stop.value.code, capsys.readouterr().err


@pytest.mark.parametrize("override", list(CASES))
def test_invalid_value_is_one_line_and_exit_2(monkeypatch, capsys, override):
    code, err = run_main(monkeypatch, capsys, override)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("xlt: error: "), err
    assert CASES[override] in err


def test_qa_options_are_typed_too(monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "task=qa", "+task.options.n_bets=3")
    assert code == 2 and "Key 'n_bets' not in 'QaOptions'" in err and "n_best" in err


def test_one_bad_value_of_a_sweep_stops_the_whole_sweep_before_it_starts(monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "-m", "task.lr=5e-5,1e-2", "task.epochs=1,0")
    assert code == 2 and "task.epochs=0.0: must be > 0" in err


def test_trainer_gpu_without_a_gpu_is_one_line(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = run_main(monkeypatch, capsys, "trainer=gpu")
    assert code == 2 and "trainer.accelerator=gpu: no CUDA GPU is visible" in err


def test_valid_configs_pass(tmp_path, monkeypatch):
    """Every shipped experiment and task validates (no false alarms).  The
    paper presets train on GPUs: validate them as on a GPU machine."""
    import torch

    from xlt.config import CONF_DIR, compose_config, validate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    for experiment in sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")):
        validate(compose_config([f"experiment={experiment}", f"paths.output_dir={tmp_path}"]))
    for task in ("xnli", "ner", "qa"):
        validate(compose_config([f"task={task}", "mode=continual", f"paths.output_dir={tmp_path}"]))


def test_every_registered_task_has_an_options_schema_and_its_yaml_fits_it():
    from omegaconf import OmegaConf

    from xlt.config import CONF_DIR, TASK_OPTION_CHECKERS, TASK_OPTIONS
    from xlt.tasks.registry import TASKS

    assert set(TASKS) == set(TASK_OPTIONS)
    assert set(TASKS) | set(TASK_OPTION_CHECKERS) == {p.stem for p in (CONF_DIR / "task").glob("*.yaml")}
    for name, schema in TASK_OPTIONS.items():
        options = OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml").get("options", {})
        OmegaConf.merge(OmegaConf.structured(schema), options)  # raises on a typo


def test_layers_do_not_import_upwards():
    """stages/tasks/evaluation never import analysis, report or the CLI; the
    analysis CLI does not import the main CLI (the old import cycle)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "xlt"
    upward = {"stages": ("xlt.analysis", "xlt.report", "xlt.cli"), "tasks": ("xlt.analysis", "xlt.stages", "xlt.cli"),
              "evaluation": ("xlt.analysis", "xlt.tasks", "xlt.stages", "xlt.cli"), "models": ("xlt.analysis", "xlt.stages"),
              "analysis": ("xlt.cli",)}
    for package, forbidden in upward.items():
        for path in (root / package).glob("*.py"):
            imports = re.findall(r"^\s*(?:from|import) (xlt[\w.]*)", path.read_text(), re.M)
            bad = [m for m in imports if m.startswith(forbidden)]
            assert not bad, f"{path.relative_to(root)} imports {bad}"


def test_a_sweep_is_checked_with_every_value_but_not_every_combination():
    jobs = cli.job_overrides(["-m", "lang=es,ru,hi", "seed=range(1,3)", "task.lr=1e-5", "hydra.launcher.x=1"])
    assert jobs == [["lang=es", "seed=1", "task.lr=1e-5"], ["lang=ru", "seed=1", "task.lr=1e-5"],
                    ["lang=hi", "seed=1", "task.lr=1e-5"], ["lang=es", "seed=2", "task.lr=1e-5"]]


def test_retrieval_options_are_checked_at_composition(monkeypatch, capsys):
    """task=retrieval validates its own options (layer: int or 'all') before any work."""
    code, err = run_main(monkeypatch, capsys, "task=retrieval", "task.options.layer=foo")
    assert code == 2 and "task.options.layer must be a layer index >= 0 or 'all'" in err


def test_help_into_a_closed_pipe_ends_without_a_traceback():
    """``xlt --help | head -1``: the reader is gone before xlt writes."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "xlt", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # closed before the child (still importing) writes a byte
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()[-500:]
