"""Artifacts are built once, atomically, even when two jobs ask at the same time."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from xlt.artifacts import atomic_write_text, build_once, config_hash


def _slow_builder(tmp: Path) -> None:
    with open(os.environ["XLT_TEST_COUNTER"], "a") as counter:
        counter.write("built\n")
    time.sleep(1.0)  # long enough for the other process to be waiting on the lock
    (tmp / "payload.txt").write_text("ok")


def _build(path: str) -> None:
    build_once(path, _slow_builder)


def test_two_processes_build_once(tmp_path, monkeypatch):
    counter = tmp_path / "counter.txt"
    monkeypatch.setenv("XLT_TEST_COUNTER", str(counter))
    target = tmp_path / "artifact"
    context = mp.get_context("fork")
    workers = [context.Process(target=_build, args=(str(target),)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert counter.read_text().count("built") == 1
    assert (target / "payload.txt").read_text() == "ok"


def test_failed_build_leaves_nothing(tmp_path):
    def explode(tmp: Path) -> None:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_once(tmp_path / "artifact", explode)
    assert not (tmp_path / "artifact").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("artifact.tmp")]
    (tmp_path / "artifact.tmpKILLED").mkdir()  # what a SIGKILLed builder leaves
    # The next job builds it normally.
    built = build_once(tmp_path / "artifact", lambda tmp: (tmp / "x").write_text("1"))
    assert (built / "x").read_text() == "1"
    assert not (tmp_path / "artifact.tmpKILLED").exists()


def test_atomic_write_and_hash(tmp_path):
    atomic_write_text(tmp_path / "a" / "r.json", "{}")
    assert (tmp_path / "a" / "r.json").read_text() == "{}"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["r.json"]
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
