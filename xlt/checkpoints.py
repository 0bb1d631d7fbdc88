"""Fine-tuning checkpoints in the cache: read as data, checked before use,
written atomically.

A training's folder (``<cache>/checkpoints/<training hash>/``) holds
``last.ckpt`` (resumable: weights, optimizer, LR schedule, sampler
position), or once the training finished ``last.ckpt`` with the weights only
and ``done.json``; Lightning's SLURM auto-requeue (SIGUSR1) may add
``hpc_ckpt_<n>.ckpt``, and a cache written before xlt turned Lightning's
version counter off may hold ``last-v<n>.ckpt`` (step saves of a job resumed
from a stop, newer than ``last.ckpt``).  All are resume candidates and are
removed once the training is done.  The cache may be shared by a lab, so:

* **No code runs from a checkpoint.**  Every load goes through
  ``torch.load(weights_only=True)`` (tensors and plain containers;
  ``SAFE_GLOBALS`` would allow-list more), here and in Lightning's resume
  (``fit(weights_only=True)``).  A pickle that names any other global is
  refused, and the file is set aside.
* **Nothing unusable stays in the way.**  Before a training reads its folder,
  ``usable_state`` checks each file (zip CRCs, loadable as weights only, a
  Lightning checkpoint of *this* model: same parameter names and shapes,
  optimizer state when resuming, ``done.json`` agreeing with ``last.ckpt``)
  and moves what fails aside (``<name>.corrupt-<ns>``, one log line saying
  why); the training resumes from the newest good checkpoint or starts over.
  A weights-only ``last.ckpt`` without ``done.json`` is a finished training
  stopped before it wrote ``done.json``: it is marked done.
* **Writes are atomic and a full disk is one line.**  ``AtomicCheckpointIO``
  checks the free space, streams the checkpoint into a temporary file next
  to the target and renames it; a failed write leaves the previous
  checkpoint as it was, never a truncated one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from xlt.artifacts import write_json
from xlt.errors import disk_full, no_space

log = logging.getLogger(__name__)

LAST, DONE = "last.ckpt", "done.json"
HPC_GLOB = "hpc_ckpt_*.ckpt"
VERSIONED_GLOB = "last-v*.ckpt"  # Lightning's version counter, on in caches of older xlt (see above)
# Globals torch.load(weights_only=True) may rebuild beyond tensors and plain
# containers.  Lightning 2.6 checkpoints of xlt's modules (optimizer, LR
# schedule, ModelCheckpoint and sampler state) need none; add a class here,
# never switch weights_only off.
SAFE_GLOBALS: tuple = ()


class Unusable(Exception):
    """A checkpoint that must not be used, and why."""


def load(path: Path, mmap: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint loaded as data only (``weights_only=True``).

    Raises ``Unusable`` for anything else: a pickle naming a global outside
    ``SAFE_GLOBALS`` (its code never runs), a damaged file, or a payload
    without an integer ``global_step`` and a ``state_dict``.
    """
    import torch

    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - any failure means: do not use this file
        raise Unusable(_first_line(err)) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("global_step"), int) \
            or not isinstance(payload.get("state_dict"), dict):
        raise Unusable("not a Lightning checkpoint (no global_step and state_dict)")
    return payload


def _first_line(err: BaseException) -> str:
    """The useful line of a torch.load failure (its weights-only refusal names the global)."""
    text = str(err)
    for line in text.splitlines():
        if "unsupported global" in line.lower() or "unsupported operand" in line.lower():
            return "refused to unpickle it as weights only (it would run code): " + line.strip()
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"unreadable ({type(err).__name__}: {first[:200]})"


def examine(path: Path, shapes: dict[str, tuple] | None) -> tuple[int, bool]:
    """``(global_step, resumable)`` of a usable checkpoint, else ``Unusable``.

    Checks the zip CRCs (a flipped or truncated byte, ~0.1 s per 100 MB), that
    it loads as weights only, and, with ``shapes`` (the module's parameter
    shapes), that its weights fit the model being trained.  ``resumable``:
    it holds the optimizer and loop state (not a finished training's weights only).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.testzip() is not None:
                raise Unusable("damaged (a zip member fails its CRC check)")
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
        raise Unusable(f"damaged (not a complete torch checkpoint: {err})") from None
    payload = load(path, mmap=True)
    if shapes is not None:
        saved = {k: tuple(v.shape) for k, v in payload["state_dict"].items() if hasattr(v, "shape")}
        if saved != shapes:
            missing, extra = sorted(set(shapes) - set(saved)), sorted(set(saved) - set(shapes))
            wrong = sorted(k for k in set(saved) & set(shapes) if saved[k] != shapes[k])
            raise Unusable(f"its weights do not fit this model (missing {missing[:2]}, unexpected {extra[:2]}, "
                           f"other shapes {wrong[:2]})")
    return payload["global_step"], "optimizer_states" in payload and "loops" in payload


def set_aside(path: Path, reason: str) -> None:
    """Move an unusable file out of the way (kept for inspection, never read again)."""
    aside = path.with_name(f"{path.name}.corrupt-{time.time_ns()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:  # another rank of the same job moved it first
        return
    log.warning("%s: %s; moved it to %s", path, reason, aside.name)


@dataclass(frozen=True)
class State:
    """Where a training stands: ``finished`` (``path`` holds its weights),
    ``resume`` (from ``path`` at ``step``) or ``fresh``."""

    kind: str
    path: Path | None = None
    step: int = 0


def usable_state(folder: Path, shapes: dict[str, tuple] | None) -> State:
    """Check every checkpoint of ``folder``, set aside what cannot be used,
    and say where the training stands (see the module docstring)."""
    last, done = folder / LAST, folder / DONE
    for stale in folder.glob("*.ckpt.*.tmp"):  # a write killed before its rename
        stale.unlink(missing_ok=True)
    found: dict[Path, tuple[int, bool]] = {}
    for path in [last, *beside_last(folder)]:
        if path.exists():
            try:
                found[path] = examine(path, shapes)
            except Unusable as err:
                set_aside(path, str(err))
    finished = _done_step(done)
    if finished is not None:
        if found.get(last, (None, False))[0] == finished:
            return State("finished", last, finished)
        set_aside(done, f"it says step {finished} but last.ckpt is " +
                  (f"at step {found[last][0]}" if last in found else "missing or unusable"))
    elif last in found and not found[last][1]:  # weights only: written when a training ends, just before done.json
        write_json(done, {"global_step": found[last][0]})
        log.warning("%s holds a finished training's weights (step %d) but no %s (stopped while marking it done): "
                    "marked it done", last, found[last][0], DONE)
        return State("finished", last, found[last][0])
    resumable = {path: step for path, (step, full) in found.items() if full}
    for path in set(found) - set(resumable):
        set_aside(path, "weights only, and no done.json matches it")
    if not resumable:
        return State("fresh")
    path = max(resumable, key=resumable.get)
    return State("resume", path, resumable[path])


def keep_weights_only(trainer, folder: Path) -> None:
    """A finished training keeps its weights (``last.ckpt``, marked by
    ``done.json``); the optimizer state, twice the weights, only served resuming."""
    trainer.save_checkpoint(folder / LAST, weights_only=True)  # collective: every rank calls it
    if trainer.global_rank == 0:
        write_json(folder / DONE, {"global_step": trainer.global_step})
        for stale in beside_last(folder):
            stale.unlink()


def beside_last(folder: Path) -> list[Path]:
    """The checkpoints of ``folder`` beside ``last.ckpt`` (Lightning's
    ``hpc_ckpt_*``, an older xlt's ``last-v*``): resume candidates while the
    training runs, removed once it is done."""
    return [path for pattern in (HPC_GLOB, VERSIONED_GLOB) for path in sorted(folder.glob(pattern))]


def _done_step(done: Path) -> int | None:
    """The step ``done.json`` records (None if absent; set aside if unreadable)."""
    if not done.exists():
        return None
    try:
        step = json.loads(done.read_text())["global_step"]
        if isinstance(step, int):
            return step
    except (OSError, ValueError, KeyError, TypeError):
        pass
    set_aside(done, "unreadable or without an integer global_step")
    return None


def shapes_of(module) -> dict[str, tuple]:
    """Parameter and buffer shapes, as a checkpoint of ``module`` stores them."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file next to the target, then rename.

    Lightning's own writer stages the file in ``$TMPDIR`` and copies it over
    the target when that is another file system (a cluster's cache usually
    is): a full disk then truncates the previous ``last.ckpt``.  Here the
    space is checked first (against the bytes of the checkpoint's tensors,
    which a checkpoint at least takes) and a failed write removes its
    temporary file, so the previous checkpoint stays whole.  The checkpoint
    is streamed to the file, never serialised in memory first: with the
    optimizer state an mBERT checkpoint is 2 GB, which would be held twice.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        import torch

        path = Path(path)
        needed = tensor_bytes(checkpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(path.parent).free < needed:
            raise disk_full(path, needed=needed)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        raw = os.fdopen(fd, "wb")
        out = _Recorded(raw)
        try:
            with raw:
                torch.save(checkpoint, out)
                raw.flush()
                os.fsync(raw.fileno())
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:
            # torch reports a failed write of its file object as a RuntimeError
            # ("unexpected pos"): the OSError underneath says why.
            if no_space(err) or (out.error is not None and no_space(out.error)):
                raise disk_full(path, needed=needed) from None
            raise
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class _Recorded:
    """A binary file that keeps the error of a failed write (``torch.save``
    replaces it with its own)."""

    def __init__(self, raw) -> None:
        self.raw, self.error = raw, None

    def write(self, data) -> int:
        try:
            return self.raw.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str) -> Any:  # flush, fileno, tell, seek...
        return getattr(self.raw, name)


def tensor_bytes(obj: Any) -> int:
    """Bytes of the distinct tensor storages in a (nested) checkpoint: what
    its file holds at least (``torch.save`` writes each storage once, raw)."""
    import torch

    seen: dict[tuple, int] = {}
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            seen[(item.device.type, item.device.index, storage.data_ptr())] = storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return sum(seen.values())
