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


def _counting_builder(calls: list):
    def build(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "model.safetensors").write_bytes(b"weights" * 100)
        (tmp / "config.json").write_text("{}")

    return build


def test_lock_is_removed_after_a_build(tmp_path):
    built = build_once(tmp_path / "artifact", _counting_builder([]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", "checksums.json"]
    assert (built / "manifest.json").is_file()


def test_a_damaged_artifact_is_rebuilt(tmp_path):
    calls: list = []
    target = tmp_path / "artifact"
    build_once(target, _counting_builder(calls))
    build_once(target, _counting_builder(calls))
    assert len(calls) == 1  # intact: reused
    with open(target / "model.safetensors", "r+b") as handle:  # truncated in place, e.g. by a full disk
        handle.truncate(10)
    build_once(target, _counting_builder(calls))
    assert len(calls) == 2 and (target / "model.safetensors").stat().st_size == 700
    assert [p.name for p in tmp_path.glob("artifact.corrupt-*")]  # kept aside, never reused


def test_a_truncated_safetensors_of_an_old_artifact_is_rebuilt(tmp_path):
    """Artifacts built before manifests existed: the safetensors header is checked."""
    import torch
    from safetensors.torch import save_file

    target = tmp_path / "artifact"
    target.mkdir()
    save_file({"w": torch.zeros(100)}, str(target / "model.safetensors"))
    calls: list = []
    build_once(target, _counting_builder(calls))
    assert calls == []
    with open(target / "model.safetensors", "r+b") as handle:
        handle.truncate(200)
    build_once(target, _counting_builder(calls))
    assert len(calls) == 1


def test_reusing_an_artifact_takes_no_lock(tmp_path, monkeypatch):
    """A read-only cache works when the artifact exists (root ignores chmod,
    so the lock itself is made to fail)."""
    import xlt.artifacts as artifacts

    target = build_once(tmp_path / "artifact", _counting_builder([]))

    def no_lock(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(artifacts, "FileLock", no_lock)
    monkeypatch.setattr(artifacts, "_memo", {})
    assert build_once(target, pytest.fail) == target
    monkeypatch.setattr(artifacts.os, "access", lambda *a: False)
    with artifacts.lock_unless_read_only(tmp_path / "checkpoints" / "train.lock"):
        pass


def test_a_damaged_checkpoint_is_set_aside(tmp_path):
    import torch

    from xlt.artifacts import checkpoint_intact, set_aside_if_corrupt

    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "epoch": 1}, checkpoint)
    assert checkpoint_intact(checkpoint)
    set_aside_if_corrupt(checkpoint)
    assert checkpoint.exists()
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the tensor data
    checkpoint.write_bytes(bytes(data))
    assert not checkpoint_intact(checkpoint)
    set_aside_if_corrupt(checkpoint)
    assert not checkpoint.exists() and list(tmp_path.glob("last.ckpt.corrupt-*"))
    checkpoint.write_bytes(b"garbage")
    set_aside_if_corrupt(checkpoint)
    assert not checkpoint.exists()


def test_building_in_a_read_only_cache_is_one_line(tmp_path):
    from xlt.errors import XltError

    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be (chmod does not stop root)")
    with pytest.raises(XltError, match="is missing or damaged and cannot be built here"):
        build_once(blocker / "adjusted" / "model", pytest.fail)
