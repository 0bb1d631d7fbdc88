"""Content-addressed, crash-safe, concurrency-safe artifacts.

Alignments, converted models and adjusted models are keyed by the config that
made them (a hash of the relevant sub-config plus the code version), built
into a temporary directory next to their final place and renamed into place
under a file lock.  So jobs of one sweep share them, two jobs that need the
same artifact at once build it once, and a killed job never leaves a
half-written artifact behind.  Each artifact carries a manifest of its files'
checksums, verified before every reuse, so one damaged later is rebuilt
instead of failing every rerun (or being used as it is).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from filelock import FileLock

from xlt import __version__
from xlt.errors import disk_full, no_space

log = logging.getLogger(__name__)


def config_hash(payload: dict[str, Any], length: int = 12) -> str:
    """Stable short hash of a JSON-serialisable dict (plus the code version)."""
    blob = json.dumps({"payload": payload, "xlt": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


MANIFEST = "manifest.json"


def build_once(path: str | os.PathLike, builder: Callable[[Path], None]) -> Path:
    """Return directory ``path``, building it with ``builder(tmp_dir)`` if absent.

    ``builder`` writes into a fresh temporary directory next to ``path``; a
    manifest of its files' checksums is added and it is renamed to ``path``
    only when the builder returns.  A lock file serialises concurrent
    builders; whoever waits finds the finished artifact and reuses it.

    Reuse needs no lock (a read-only cache works when the artifact exists).
    Before reuse every file is checked against the manifest (``damage``); an
    artifact that does not match (a flipped byte, a truncated or deleted
    file, a missing manifest) is moved aside with one log line saying why
    and rebuilt.  The lock file is removed while it is still held, once the
    artifact is in place and when the build fails too (no empty ``.lock``
    is left beside a failed build): every waiter re-checks for the artifact
    after taking the lock, so nobody builds twice, and a waiter whose
    ``flock`` lands on the removed file sees that it has no name any more
    and takes the new one (filelock >= 3.20.4 checks ``st_nlink``), so two
    builders never run at once.
    """
    path = Path(path)
    if damage(path) is None:
        return path
    lock = Path(str(path) + ".lock")
    with _build_lock(path, lock):
        reason = damage(path)
        if reason is None:
            log.info("reusing %s (built by another job)", path)
            lock.unlink(missing_ok=True)  # a waiter re-creates the file while polling: remove it too
            return path
        if path.exists() or path.is_symlink():
            _set_aside(path, reason)
        for stale in path.parent.glob(path.name + ".tmp*"):  # left by a killed builder
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp", dir=path.parent))
        try:
            try:
                builder(tmp)
            except Exception as err:  # noqa: BLE001 - only a full disk is turned into one line
                if no_space(err):
                    raise disk_full(tmp, written=_size(tmp)) from None
                raise
            manifest = {str(f.relative_to(tmp)): file_checksum(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
            write_json(tmp / MANIFEST, manifest)
            _share(tmp)
            os.replace(tmp, path)
            for name, checksum in manifest.items():  # just hashed: this process need not hash them again
                _verified[os.path.realpath(path / name)] = (_stamp(path / name), checksum)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            lock.unlink(missing_ok=True)  # still held: late waiters find the artifact, or build it themselves
    return path


@contextlib.contextmanager
def _build_lock(path: Path, lock: Path):
    """The builders' lock; a read-only cache that lacks the artifact is one
    line saying so, not a PermissionError traceback from the lock file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        guard = FileLock(str(lock))
        acquire_saying(guard, f"{path}")
    except OSError as err:
        from xlt.errors import XltError

        raise XltError(f"{path} is missing or damaged and cannot be built here ({err.strerror}: {err.filename or lock}); "
                       "rerun the same command with a writable paths.cache_dir (or XLT_CACHE_DIR)") from None
    try:
        yield
    finally:
        guard.release()


def damage(path: Path) -> str | None:
    """Why the artifact at ``path`` cannot be reused, or None when it can.

    Every file listed in ``manifest.json`` must exist with the recorded
    checksum (each file is hashed in full, once per process and file
    version: about 0.5 s per GB), and no file may be there that the manifest
    does not list.  An artifact without a manifest cannot be verified and is
    rebuilt.  This catches accidental damage (a truncated copy, a flipped
    byte, a deleted config); it is no defence against someone who can write
    the cache, since they can rewrite the manifest too (README: "What the
    cache trusts").
    """
    if not path.is_dir():
        return "absent" if not path.exists() and not path.is_symlink() else "not a directory"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return f"no {MANIFEST} (its files cannot be verified)"
    except (OSError, ValueError) as err:
        return f"unreadable {MANIFEST} ({err})"
    if not isinstance(manifest, dict) or not all(isinstance(v, str) for v in manifest.values()):
        return f"malformed {MANIFEST}"
    present = {str(f.relative_to(path)) for f in path.rglob("*") if f.is_file() or f.is_symlink()} - {MANIFEST}
    if extra := sorted(present - set(manifest)):
        return f"{extra[0]} is not in its {MANIFEST}"
    for name, checksum in manifest.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if (actual := verified_checksum(file)) != checksum:
            return f"{name} does not match its {MANIFEST} (sha256 {actual}, recorded {checksum})"
    return None


def _set_aside(path: Path, reason: str) -> Path:
    """Move a damaged artifact out of the way (kept for inspection, never reused)."""
    aside = path.with_name(f"{path.name}.corrupt-{time.time_ns()}")
    os.replace(path, aside)
    log.warning("%s: %s; moved it to %s and rebuilding it", path, reason, aside.name)
    return aside


def acquire_saying(lock: FileLock, what: str) -> None:
    """Take ``lock``; while another job holds it, say so in the log, then
    again every progress interval (``xlt.progress.interval_s``).  A job
    waiting for a sibling's alignment, adjustment or fine-tuning can wait
    hours: its console and Slurm ``.out`` must show why it is idle."""
    from filelock import Timeout

    from xlt.progress import duration, interval_s

    try:
        lock.acquire(timeout=0)
        return
    except Timeout:
        pass
    start = time.monotonic()
    log.info("waiting for %s: another job holds %s", what, lock.lock_file)
    while True:
        try:
            lock.acquire(timeout=max(interval_s(), 1.0))
            log.info("done waiting for %s (%s)", what, duration(time.monotonic() - start))
            return
        except Timeout:
            log.info("still waiting for %s (%s; lock %s)", what, duration(time.monotonic() - start), lock.lock_file)


@contextlib.contextmanager
def lock_unless_read_only(path: Path, what: str):
    """Hold the file lock at ``path`` (waiting with log lines, ``acquire_saying``),
    or none where its folder cannot be written: reading a finished artifact
    from a read-only cache needs no lock."""
    if not os.access(path.parent, os.W_OK):
        log.info("%s is read-only: using its artifacts without a lock", path.parent)
        yield
        return
    lock = FileLock(str(path))
    acquire_saying(lock, what)
    try:
        yield
    finally:
        lock.release()


def _share(directory: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; a shared cache must
    follow the user's umask like any other file they create."""
    mask = _umask()
    os.chmod(directory, 0o777 & ~mask)
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def atomic_write_text(path: str | os.PathLike, text: str | Iterable[str]) -> None:
    """Write ``text`` (or its pieces in turn, never joined in memory) to
    ``path`` via a temp file and rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines([text] if isinstance(text, str) else text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for sharing
        os.replace(tmp, path)
    except OSError as err:
        if no_space(err):
            raise disk_full(path, needed=len(text.encode("utf-8"))) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def file_checksum(path: str | os.PathLike, length: int = 16) -> str:
    """sha256 prefix of a file's bytes (provenance of the data a job read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


CHECKSUM_INDEX = "checksums.json"
_memo: dict[str, tuple[list[int], str]] = {}
_verified: dict[str, tuple[list[int], str]] = {}  # artifact files hashed in full by this process


def _stamp(path: str | os.PathLike) -> list[int]:
    """What says a file is unchanged: size, mtime, inode and ctime.  ctime
    cannot be set back (``touch -d`` and ``os.utime`` set it to now), so an
    edit of the same size with its mtime restored still changes the stamp;
    so do chmod and rename, which only cost a rehash."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def verified_checksum(path: str | os.PathLike) -> str:
    """``file_checksum`` of ``path`` from its bytes, hashed once per process
    and file version (never taken from the shared ``checksums.json``)."""
    real = os.path.realpath(path)
    stamp = _stamp(real)
    if real in _verified and _verified[real][0] == stamp:
        return _verified[real][1]
    checksum = file_checksum(real)
    _verified[real] = (stamp, checksum)
    return checksum


def _size(directory: Path) -> int:
    """Bytes of the files below ``directory`` (what a failed build had written)."""
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def content_checksum(path: str | os.PathLike, index_dir: str | os.PathLike | None = None) -> str:
    """``file_checksum`` of ``path``, remembered by its ``_stamp`` (size, mtime, inode, ctime).

    Cache keys hash the *content* of their input files (an edit in place must
    invalidate an alignment, an adjusted model or a checkpoint), but a 250K-pair
    corpus should be read once, not by every job of a sweep: the checksum is
    kept in memory and in ``<index_dir>/checksums.json``, and recomputed only
    when the file's size, modification time, inode or ctime change.  The index is a
    cache: a lost concurrent update or a read-only cache only costs a rehash.
    """
    real = os.path.realpath(path)
    stamp = _stamp(real)
    if real in _memo and _memo[real][0] == stamp:
        return _memo[real][1]
    index_file = Path(index_dir) / CHECKSUM_INDEX if index_dir is not None else None
    index = _read_index(index_file)
    entry = index.get(real)
    if entry and entry.get("stamp") == stamp:
        _memo[real] = (stamp, entry["sha256"])
        return entry["sha256"]
    checksum = file_checksum(real)
    _remember(real, checksum, index_dir, stamp)
    return checksum


def _remember(path: str | os.PathLike, checksum: str, index_dir: str | os.PathLike | None, stamp: list[int] | None = None) -> None:
    """Record ``checksum`` as the content of ``path`` as it is now."""
    real = os.path.realpath(path)
    if stamp is None:
        stamp = _stamp(real)
    _memo[real] = (stamp, checksum)
    if index_dir is None:
        return
    index_file = Path(index_dir) / CHECKSUM_INDEX
    index = _read_index(index_file)  # re-read: other jobs may have added entries meanwhile
    index[real] = {"stamp": stamp, "sha256": checksum}
    try:
        write_json(index_file, index)
    except OSError as err:  # a read-only cache still works, it only rehashes next time
        log.debug("cannot update %s: %s", index_file, err)


def _read_index(index_file: Path | None) -> dict[str, Any]:
    if index_file is None:
        return {}
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}
