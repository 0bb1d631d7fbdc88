"""Content-addressed, crash-safe, concurrency-safe artifacts.

Alignments, converted models and adjusted models are keyed by the config that
made them (a hash of the relevant sub-config plus the code version), built
into a temporary directory next to their final place and renamed into place
under a file lock.  So jobs of one sweep share them, two jobs that need the
same artifact at once build it once, and a killed job never leaves a
half-written artifact behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from xlt import __version__

log = logging.getLogger(__name__)


def config_hash(payload: dict[str, Any], length: int = 12) -> str:
    """Stable short hash of a JSON-serialisable dict (plus the code version)."""
    blob = json.dumps({"payload": payload, "xlt": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def build_once(path: str | os.PathLike, builder: Callable[[Path], None]) -> Path:
    """Return directory ``path``, building it with ``builder(tmp_dir)`` if absent.

    ``builder`` writes into a fresh temporary directory; it is renamed to
    ``path`` only when the builder returns.  A lock file serialises concurrent
    builders; whoever waits finds the finished artifact and reuses it.
    """
    path = Path(path)
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_dir():
            log.info("reusing %s (built by another job)", path)
            return path
        for stale in path.parent.glob(path.name + ".tmp*"):  # left by a killed builder
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp", dir=path.parent))
        try:
            builder(tmp)
            _share(tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return path


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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file and rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for sharing
        os.replace(tmp, path)
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


def content_checksum(path: str | os.PathLike, index_dir: str | os.PathLike | None = None) -> str:
    """``file_checksum`` of ``path``, remembered by (size, mtime_ns, inode).

    Cache keys hash the *content* of their input files (an edit in place must
    invalidate an alignment, an adjusted model or a checkpoint), but a 250K-pair
    corpus should be read once, not by every job of a sweep: the checksum is
    kept in memory and in ``<index_dir>/checksums.json``, and recomputed only
    when the file's size, modification time or inode change.  The index is a
    cache: a lost concurrent update or a read-only cache only costs a rehash.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
    if real in _memo and _memo[real][0] == stamp:
        return _memo[real][1]
    index_file = Path(index_dir) / CHECKSUM_INDEX if index_dir is not None else None
    index = _read_index(index_file)
    entry = index.get(real)
    if entry and entry.get("stamp") == stamp:
        _memo[real] = (stamp, entry["sha256"])
        return entry["sha256"]
    checksum = file_checksum(real)
    _memo[real] = (stamp, checksum)
    if index_file is not None:
        index = _read_index(index_file)  # re-read: other jobs may have added entries meanwhile
        index[real] = {"stamp": stamp, "sha256": checksum}
        try:
            write_json(index_file, index)
        except OSError as err:  # a read-only cache still works, it only rehashes next time
            log.debug("cannot update %s: %s", index_file, err)
    return checksum


def _read_index(index_file: Path | None) -> dict[str, Any]:
    if index_file is None:
        return {}
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}
