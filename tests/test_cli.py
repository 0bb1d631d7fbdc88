"""The command line (xlt.cli): which compositions check a sweep, pipes,
and the entry points' one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xlt import cli


def test_a_sweep_is_checked_with_every_value_but_not_every_combination():
    jobs = cli.job_overrides(["-m", "lang=es,ru,hi", "seed=range(1,3)", "task.lr=1e-5", "hydra.launcher.x=1"])
    assert jobs == [["lang=es", "seed=1", "task.lr=1e-5"], ["lang=ru", "seed=1", "task.lr=1e-5"],
                    ["lang=hi", "seed=1", "task.lr=1e-5"], ["lang=es", "seed=2", "task.lr=1e-5"]]


def test_more_config_folders_reach_the_check():
    """hydra.searchpath (a language YAML elsewhere) is passed to the composition
    that checks the jobs; other hydra.* overrides stay Hydra's."""
    jobs = cli.job_overrides(["hydra.searchpath=[file:///x]", "lang=xx", "hydra.run.dir=out"])
    assert jobs == [["hydra.searchpath=[file:///x]", "lang=xx"]]


def test_help_into_a_closed_pipe_ends_without_a_traceback():
    """``xlt --help | head -1``: the reader is gone before xlt writes."""
    proc = subprocess.Popen([sys.executable, "-m", "xlt", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # closed before the child (still importing) writes a byte
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()[-500:]


def test_the_stage_commands_put_their_override_beside_the_others():
    """``xlt-align -m lang=ru,hi`` (the README's Slurm step 1): Hydra takes
    the overrides as one run, so command=align joins it, after the flags."""
    assert cli.with_override(["xlt-align", "-m", "lang=ru,hi", "seed=1"], "command=align") == [
        "xlt-align", "-m", "command=align", "lang=ru,hi", "seed=1"]
    assert cli.with_override(["xlt-adjust", "lang=ru", "--cfg", "job"], "command=adjust") == [
        "xlt-adjust", "command=adjust", "lang=ru", "--cfg", "job"]
    assert cli.with_override(["xlt-align"], "command=align") == ["xlt-align", "command=align"]


@pytest.mark.parametrize("command, entry", [("xlt-align", "align_main"), ("xlt-adjust", "adjust_main")])
def test_an_error_names_the_command_the_user_typed(monkeypatch, capsys, command, entry):
    monkeypatch.setattr(sys, "argv", [command, "lang=xx"])
    with pytest.raises(SystemExit) as stop:
        getattr(cli, entry)()
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(f"{command}: error: unknown lang 'xx'")


ALIGN_IMPORTS = """
import atexit, sys
atexit.register(lambda: print("imported:", *[m for m in ("torch", "lightning") if m in sys.modules]))
from xlt.cli import align_main
sys.argv = ["xlt-align", *sys.argv[1:]]
align_main()
"""


def test_xlt_align_imports_neither_torch_nor_lightning(tmp_path):
    """An align job's memory is the alignment's: torch and Lightning (~0.5 GB)
    stay out of it, validation of the config included."""
    proc = subprocess.run([sys.executable, "-c", ALIGN_IMPORTS, "lang=vi", "corpus.pool_size=200", "corpus.size=100",
                           "corpus.heldout=20", f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "alignments:" in proc.stdout and "imported:\n" in proc.stdout, proc.stdout[-2000:]


def help_of(monkeypatch, capsys, entry, command: str) -> str:
    monkeypatch.setattr(sys, "argv", [command, "--help"])
    with pytest.raises(SystemExit) as stop:
        entry()
    assert stop.value.code == 0
    return capsys.readouterr().out


def test_each_command_has_its_own_help_saying_where_results_go(monkeypatch, capsys, tmp_path):
    """xlt-align and xlt-adjust printed xlt's help word for word (walkthrough
    audit); each says what it does, where its results go and its options,
    and xlt's says where a job's outputs and the cache are."""
    monkeypatch.setenv("XLT_CACHE_DIR", str(tmp_path / "cache"))
    xlt = help_of(monkeypatch, capsys, cli.main, "xlt")
    align = help_of(monkeypatch, capsys, cli.align_main, "xlt-align")
    adjust = help_of(monkeypatch, capsys, cli.adjust_main, "xlt-adjust")
    assert xlt.startswith("xlt: cross-lingual adjustment") and "outputs/<date>/<time>/" in xlt
    assert f"Cache: {tmp_path / 'cache'} (paths.cache_dir, or $XLT_CACHE_DIR)" in xlt
    assert align.startswith("xlt-align: word-align a parallel corpus")
    assert f"{tmp_path / 'cache'}/alignments/<lang>-<corpus>-<aligner>-<hash>/" in align
    assert "aligner.export=FILE" in align and "corpus.pool_size" in align
    assert adjust.startswith("xlt-adjust: adjust an encoder")
    assert f"{tmp_path / 'cache'}/adjusted/<model>-<lang>-" in adjust and "adjustment.*" in adjust
    assert "One job = adjust" not in align + adjust
    footer = "Override anything with key=value; see README.md."
    assert all(footer in text and "== Configuration groups ==" in text for text in (xlt, align, adjust))
