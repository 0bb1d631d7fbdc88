"""Checkpoints in a shared cache are data: never unpickled as code, checked
before use, set aside when unusable, written atomically (xlt.checkpoints).

The checkpoints here are small dicts shaped like Lightning's (global_step,
state_dict, optimizer_states, loops); tests/test_jobs.py runs the real ones.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from xlt.checkpoints import AtomicCheckpointIO, State, examine, load, usable_state
from xlt.errors import XltError

SHAPES = {"encoder.weight": (40, 30), "head.bias": (2,)}


def lightning_checkpoint(path: Path, step: int, resumable: bool = True, shapes=SHAPES) -> Path:
    payload = {"global_step": step, "epoch": 0, "pytorch-lightning_version": "2.6.6",
               "state_dict": {k: torch.zeros(v) for k, v in shapes.items()}, "loops": {"fit_loop": {}}}
    if resumable:
        payload.update(optimizer_states=[{"state": {}, "param_groups": []}], lr_schedulers=[{"last_epoch": step}],
                       callbacks={}, xlt_sampler={"epoch": 0, "batches": step})
    torch.save(payload, path)
    return path


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def planted_pickle(path: Path, marker: Path, step: int) -> Path:
    """A torch zip that looks like a checkpoint and runs a command when unpickled."""
    torch.save({"global_step": step, "state_dict": {k: torch.zeros(v) for k, v in SHAPES.items()},
                "optimizer_states": [], "loops": {}, "evil": Payload(marker)}, path)
    return path


@pytest.mark.parametrize("where", ["last.ckpt", "last.ckpt next to done.json", "hpc_ckpt_7.ckpt"])
def test_a_planted_pickle_never_runs(tmp_path, where):
    """Whoever can write a shared cache must not run code as whoever reads it:
    the payload is refused, the file set aside, the training uses the last
    good state (here: the step-4 checkpoint, or a fresh start)."""
    marker = tmp_path / "PAYLOAD_RAN"
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    unpickled = torch.load(planted_pickle(tmp_path / "probe.ckpt", marker, 1), weights_only=False)  # the payload works
    assert marker.exists() and unpickled["evil"] == 0
    marker.unlink()

    if where == "hpc_ckpt_7.ckpt":
        lightning_checkpoint(folder / "last.ckpt", 4)
        planted_pickle(folder / where, marker, 7)
        expected = State("resume", folder / "last.ckpt", 4)
    else:
        planted_pickle(folder / "last.ckpt", marker, 9)
        if "done.json" in where:
            (folder / "done.json").write_text(json.dumps({"global_step": 9}))
        expected = State("fresh")
    assert usable_state(folder, SHAPES) == expected
    assert not marker.exists()
    (aside,) = [p.name for p in folder.glob("*.corrupt-*") if "ckpt" in p.name]
    assert aside.startswith(where.split()[0])
    with pytest.raises(Exception, match="unsupported GLOBAL"):
        torch.load(folder / aside, weights_only=True)  # kept aside as it was, for inspection
    assert not marker.exists()


def test_load_refuses_code_and_accepts_lightning_checkpoints(tmp_path):
    marker = tmp_path / "RAN"
    with pytest.raises(Exception, match=r"refused to unpickle it as weights only \(it would run code\): .*GLOBAL posix.system"):
        load(planted_pickle(tmp_path / "evil.ckpt", marker, 1))
    assert not marker.exists()
    assert load(lightning_checkpoint(tmp_path / "ok.ckpt", 3))["global_step"] == 3


def test_unusable_checkpoints_are_set_aside_and_training_goes_on(tmp_path):
    """A valid zip that is not a checkpoint, a flipped byte, a truncated file,
    another model's weights: each set aside, the newest good one resumed."""
    import zipfile

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    lightning_checkpoint(folder / "hpc_ckpt_2.ckpt", 2)
    with zipfile.ZipFile(folder / "last.ckpt", "w") as archive:
        archive.writestr("hello.txt", "a valid zip, not a checkpoint")
    lightning_checkpoint(folder / "hpc_ckpt_5.ckpt", 5, shapes={"encoder.weight": (8, 3)})  # another model
    data = bytearray(lightning_checkpoint(folder / "hpc_ckpt_6.ckpt", 6).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    (folder / "hpc_ckpt_6.ckpt").write_bytes(bytes(data))
    lightning_checkpoint(folder / "hpc_ckpt_8.ckpt", 8)
    (folder / "hpc_ckpt_8.ckpt").write_bytes((folder / "hpc_ckpt_8.ckpt").read_bytes()[:300])  # truncated
    (folder / "last.ckpt.x1y2.tmp").write_bytes(b"a write killed before its rename")
    assert usable_state(folder, SHAPES) == State("resume", folder / "hpc_ckpt_2.ckpt", 2)
    assert sorted(p.name.split(".corrupt-")[0] for p in folder.glob("*.corrupt-*")) == [
        "hpc_ckpt_5.ckpt", "hpc_ckpt_6.ckpt", "hpc_ckpt_8.ckpt", "last.ckpt"]
    assert sorted(p.name for p in folder.iterdir() if ".corrupt-" not in p.name) == ["hpc_ckpt_2.ckpt"]
    assert usable_state(folder, SHAPES) == State("resume", folder / "hpc_ckpt_2.ckpt", 2)  # stable on rerun


def test_a_versioned_last_ckpt_of_an_older_cache_is_resumed_when_newer(tmp_path):
    """Before xlt turned Lightning's version counter off, a job resumed from a
    stop wrote its step saves to last-v1.ckpt beside last.ckpt: the newer
    one is where the training stands."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    lightning_checkpoint(folder / "last.ckpt", 41)
    lightning_checkpoint(folder / "last-v1.ckpt", 100)
    assert usable_state(folder, SHAPES) == State("resume", folder / "last-v1.ckpt", 100)


def test_a_kill_between_the_weights_only_save_and_done_json(tmp_path):
    """The weights-only last.ckpt is written only when a training ends: without
    done.json it is a finished training, marked done instead of failing to resume."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    lightning_checkpoint(folder / "last.ckpt", 24, resumable=False)
    assert usable_state(folder, SHAPES) == State("finished", folder / "last.ckpt", 24)
    assert json.loads((folder / "done.json").read_text()) == {"global_step": 24}
    assert usable_state(folder, SHAPES) == State("finished", folder / "last.ckpt", 24)


def test_done_json_that_does_not_match_last_ckpt(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    lightning_checkpoint(folder / "last.ckpt", 16)
    (folder / "done.json").write_text(json.dumps({"global_step": 24}))
    assert usable_state(folder, SHAPES) == State("resume", folder / "last.ckpt", 16)
    assert not (folder / "done.json").exists() and list(folder.glob("done.json.corrupt-*"))
    (folder / "done.json").write_text("{not json")
    assert usable_state(folder, SHAPES) == State("resume", folder / "last.ckpt", 16)


def test_examine_reports_what_is_wrong(tmp_path):
    assert examine(lightning_checkpoint(tmp_path / "a.ckpt", 3), SHAPES) == (3, True)
    assert examine(lightning_checkpoint(tmp_path / "b.ckpt", 3, resumable=False), SHAPES) == (3, False)
    (tmp_path / "c.ckpt").write_bytes(b"garbage")
    with pytest.raises(Exception, match="damaged"):
        examine(tmp_path / "c.ckpt", SHAPES)
    with pytest.raises(Exception, match="do not fit this model"):
        examine(lightning_checkpoint(tmp_path / "d.ckpt", 3, shapes={"x": (1,)}), SHAPES)


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Lightning stages checkpoints in $TMPDIR and copies them over the old one
    (a full disk truncates it); xlt checks the space, writes next to the
    target and renames, and says in one line what was needed."""
    import shutil
    from collections import namedtuple

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(1000)}}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
    before = path.read_bytes()

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(XltError, match=r"no space left on device writing .*last.ckpt: needs [0-9.]+ KB, 100 B free there"):
        io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.ones(1000)}}, path)
    monkeypatch.undo()

    real_fsync = os.fsync

    def full(fd):  # the space vanished while writing (another job, a quota)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(XltError, match="no space left on device writing .*last.ckpt: needs"):
        io.save_checkpoint({"global_step": 3, "state_dict": {"w": torch.ones(1000)}}, path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_checkpoint_is_streamed_to_its_file_not_serialised_in_memory(tmp_path):
    """An mBERT checkpoint with its optimizer state is 2 GB: held in memory
    before the write, it would need that much RAM again."""
    import tracemalloc

    state = {"global_step": 1, "state_dict": {"w": torch.ones(10_000_000)}}  # 40 MB
    tracemalloc.start()
    try:
        AtomicCheckpointIO().save_checkpoint(state, tmp_path / "last.ckpt")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, f"{peak / 1e6:.1f} MB of Python memory for a 40 MB checkpoint"
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]["w"], state["state_dict"]["w"])


def test_a_disk_that_fills_during_the_write_is_one_line(tmp_path, monkeypatch):
    """torch.save turns the file's ENOSPC into a RuntimeError; xlt still says
    "no space left" and keeps the previous checkpoint."""
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(1000)}}, path)
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class FillsUp:
        def __init__(self, raw):
            self.raw, self.count = raw, 0

        def write(self, data):
            self.count += len(data)
            if self.count > 100_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.raw.write(data)

        def __getattr__(self, name):
            return getattr(self.raw, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.raw.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FillsUp(real_fdopen(fd, mode)))
    with pytest.raises(XltError, match=r"no space left on device writing .*last.ckpt: needs [0-9.]+ MB"):
        io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.ones(1_000_000)}}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_tensor_bytes_counts_each_storage_once():
    from xlt.checkpoints import tensor_bytes

    w = torch.ones(100)
    assert tensor_bytes({"a": w, "b": [w, w[:10]], "c": (torch.zeros(5, dtype=torch.float64), "text", 3)}) == 400 + 40
