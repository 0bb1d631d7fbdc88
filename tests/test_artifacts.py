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


def run_in_processes(function, target: Path, count: int, timeout: float, stagger: float = 0.0) -> None:
    """``function(str(target))`` in ``count`` forked processes started
    ``stagger`` seconds apart; each must exit 0 within ``timeout``."""
    context = mp.get_context("fork")
    workers = [context.Process(target=function, args=(str(target),)) for _ in range(count)]
    for worker in workers:
        worker.start()
        time.sleep(stagger)
    for worker in workers:
        worker.join(timeout)
        assert worker.exitcode == 0


def test_two_processes_build_once(tmp_path, monkeypatch):
    counter = tmp_path / "counter.txt"
    monkeypatch.setenv("XLT_TEST_COUNTER", str(counter))
    target = tmp_path / "artifact"
    run_in_processes(_build, target, count=2, timeout=30)
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
    assert not (tmp_path / "artifact.lock").exists()  # no empty lock beside a failed build (walkthrough audit)
    (tmp_path / "artifact.tmpKILLED").mkdir()  # what a SIGKILLed builder leaves
    # The next job builds it normally.
    built = build_once(tmp_path / "artifact", lambda tmp: (tmp / "x").write_text("1"))
    assert (built / "x").read_text() == "1"
    assert not (tmp_path / "artifact.tmpKILLED").exists()


def _first_fails(tmp: Path) -> None:
    """Each build logs its start and end; the first one fails."""
    log = Path(os.environ["XLT_TEST_COUNTER"])
    with log.open("a") as out:
        out.write(f"start {time.monotonic()}\n")
    time.sleep(0.5)  # the others wait on the lock meanwhile
    failed = "fail" in log.read_text()
    with log.open("a") as out:
        out.write(f"end {time.monotonic()}\n" + ("" if failed else "fail\n"))
    if not failed:
        raise RuntimeError("first build fails")
    (tmp / "payload.txt").write_text("ok")


def _build_or_fail(path: str) -> None:
    try:
        build_once(path, _first_fails)
    except RuntimeError:
        pass


def test_waiters_of_a_failed_build_build_it_one_at_a_time(tmp_path, monkeypatch):
    """The failed builder removes its lock while it still holds it: a waiter
    then builds, alone (the others, also those that opened the removed
    file, wait for it and reuse its artifact), and no lock file is left."""
    log = tmp_path / "log.txt"
    monkeypatch.setenv("XLT_TEST_COUNTER", str(log))
    target = tmp_path / "artifact"
    run_in_processes(_build_or_fail, target, count=3, timeout=60, stagger=0.1)
    events = [line.split() for line in log.read_text().splitlines() if line != "fail"]
    assert [kind for kind, _ in events] == ["start", "end", "start", "end"]  # two builds, never at once
    assert (target / "payload.txt").read_text() == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", "log.txt"]


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]
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


def test_an_artifact_that_cannot_be_verified_is_rebuilt(tmp_path):
    """No manifest (deleted with config.json, or from before manifests), a
    file the manifest does not list, a deleted file: set aside and rebuilt,
    never used unverified or failing every rerun."""
    calls: list = []
    target = tmp_path / "artifact"
    build_once(target, _counting_builder(calls))
    (target / "manifest.json").unlink()
    (target / "config.json").unlink()
    build_once(target, _counting_builder(calls))
    assert len(calls) == 2 and (target / "config.json").is_file()
    (target / "pytorch_model.bin").write_bytes(b"planted")
    build_once(target, _counting_builder(calls))
    assert len(calls) == 3 and not (target / "pytorch_model.bin").exists()
    (target / "config.json").unlink()
    build_once(target, _counting_builder(calls))
    assert len(calls) == 4 and len(list(tmp_path.glob("artifact.corrupt-*"))) == 3


def test_a_same_size_edit_with_its_mtime_restored_is_detected(tmp_path, caplog):
    """Checksums are verified before reuse: a flipped byte of the same size,
    its mtime put back, is found (one log line saying why) and rebuilt."""
    import xlt.artifacts as artifacts

    calls: list = []
    target = tmp_path / "artifact"
    build_once(target, _counting_builder(calls))
    weights = target / "model.safetensors"
    before = os.stat(weights)
    data = bytearray(weights.read_bytes())
    data[123] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(weights).st_size == before.st_size and os.stat(weights).st_mtime_ns == before.st_mtime_ns
    with caplog.at_level("WARNING"):
        build_once(target, _counting_builder(calls))
    assert len(calls) == 2 and (target / "model.safetensors").read_bytes() == b"weights" * 100
    (line,) = [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]
    assert "model.safetensors does not match its manifest.json" in line and ".corrupt-" in line
    # Inputs are keyed the same way: the edit changes the content checksum although size and mtime did not.
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("a\tb\n")
    first = artifacts.content_checksum(corpus, tmp_path)
    stat = os.stat(corpus)
    corpus.write_text("c\td\n")
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert artifacts.content_checksum(corpus, tmp_path) != first


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
    with artifacts.lock_unless_read_only(tmp_path / "checkpoints" / "train.lock", "a training"):
        pass


def test_building_in_a_read_only_cache_is_one_line(tmp_path):
    from xlt.errors import XltError

    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be (chmod does not stop root)")
    with pytest.raises(XltError, match="is missing or damaged and cannot be built here"):
        build_once(blocker / "adjusted" / "model", pytest.fail)


def test_a_full_disk_is_one_line_naming_the_path(tmp_path, monkeypatch):
    """A build or a write that runs out of space: one line with the path and
    the space, nothing half-written left."""
    import errno

    import xlt.artifacts as artifacts
    from xlt.errors import XltError

    def fill(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"x" * 5000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(XltError, match=r"no space left on device writing .*artifact.tmp.*: failed after 4.9 KB, .* free there"):
        build_once(tmp_path / "artifact", fill)
    assert [p.name for p in tmp_path.iterdir()] == []  # no artifact, no temporary directory, no lock

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts.os, "replace", full)
    with pytest.raises(XltError, match=r"writing .*results.json: needs 2 B, .* free there"):
        atomic_write_text(tmp_path / "run" / "results.json", "{}")
    assert list((tmp_path / "run").iterdir()) == []


def test_a_job_waiting_for_a_lock_says_so_until_it_gets_it(tmp_path, monkeypatch, caplog):
    """A job waiting for a sibling's build or training logs why it is idle,
    again every progress interval, and when it goes on (its Slurm .out would
    otherwise be silent for hours)."""
    import logging
    import threading

    from filelock import FileLock

    from xlt.artifacts import lock_unless_read_only

    monkeypatch.setenv("XLT_PROGRESS_S", "0")  # one line a second, the floor
    path = tmp_path / "train.lock"
    holder = FileLock(str(path), thread_local=False)  # released by the other thread
    holder.acquire()

    def release_once_reported() -> None:
        deadline = time.monotonic() + 60
        while not any("still waiting" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
        holder.release()

    releaser = threading.Thread(target=release_once_reported)
    with caplog.at_level(logging.INFO, logger="xlt.artifacts"):
        releaser.start()
        with lock_unless_read_only(path, "the training in X"):
            held = FileLock(str(path))
            with pytest.raises(Exception):
                held.acquire(timeout=0)  # really held by this job now
    releaser.join()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == f"waiting for the training in X: another job holds {path}"
    assert any(m.startswith("still waiting for the training in X (") for m in messages)
    assert messages[-1].startswith("done waiting for the training in X (")
