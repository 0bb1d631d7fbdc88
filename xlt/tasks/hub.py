"""Loading task data from the HuggingFace hub with one-line errors.

Every hub id in ``conf/task/*.yaml`` is a parquet dataset that loads with
``datasets`` >= 4 (which refuses loading scripts): e.g. MLQA comes from the
XTREME benchmark's ``google/xtreme`` configs ``MLQA.<context>.<question>``
(SQuAD layout: ``answers = {text: [...], answer_start: [...]}``, character
offsets into ``context``, as in the original MLQA json), not from the
script-only ``facebook/mlqa``.  A spec may pin a ``revision`` (a sha, a
branch or a tag); the one loaded is always a commit sha (``dataset_revision``).

Offline (or when the hub does not answer), ``datasets`` loads the newest
copy in its own cache whatever revision it is asked for; its cache folder
is named by the commit the copy came from, so ``load_hub`` checks that
commit against the one the job records (``loaded_commit``).
"""

from __future__ import annotations

from pathlib import Path

from xlt.errors import XltError


def load_hub(path: str, name: str | None, split: str, revision: str | None = None):
    """``datasets.load_dataset(path, name, split=split)`` at the commit
    ``revision`` (None: ``main``) resolves to (``dataset_revision``); offline,
    an unknown config or a script-only dataset becomes one line naming the
    dataset (offline without a cached copy: the loader's own reason)."""
    from datasets import load_dataset

    try:
        sha, unresolved = dataset_revision(path, revision), None
    except XltError as err:  # the load below says why, if it fails too
        sha, unresolved = None, err
    try:
        dataset = load_dataset(path, name, split=split, revision=sha or revision)
    except Exception as err:  # noqa: BLE001 - offline, unknown config, scripts refused...: one clear line
        raise XltError(f"cannot load {path}" + (f" ({name})" if name else "") + f" [{split}] from the hub: {_first_line(err)}") from err
    if unresolved is not None:  # loaded, but from which commit is unknown: no result may claim it
        raise unresolved
    copy = loaded_commit(dataset)
    if copy is not None and copy != sha:
        raise XltError(f"{path}" + (f" ({name})" if name else "") + f" [{split}]: the job resolved commit {sha[:12]} "
                       f"({revision or 'main'}) but datasets loaded its cached copy of commit {copy[:12]} "
                       "(offline it loads the newest cached copy, whatever the revision); load that commit "
                       "once online, or pin the cached one (the task.hub spec's revision)")
    return dataset


def loaded_commit(dataset) -> str | None:
    """The hub commit ``datasets`` read ``dataset`` from: its cache folder
    ``<repo>/<config>/<version>/<commit>/`` (None: not from a hub cache)."""
    files = getattr(dataset, "cache_files", None) or []
    folder = Path(files[0]["filename"]).parent.name if files else ""
    from xlt.revisions import is_sha

    return folder if is_sha(folder) else None


def dataset_revision(path: str, revision: str | None = None) -> str:
    """The commit sha of hub dataset ``path`` at ``revision`` (None: ``main``)
    that the job loads and keys by (``xlt.revisions.resolve``; offline, the
    local HF cache's); one line naming the dataset when it cannot be found."""
    from xlt.revisions import resolve

    try:
        return resolve("dataset", path, revision)
    except Exception as err:  # noqa: BLE001 - offline without a cache, no such repo or revision: one clear line
        raise XltError(f"cannot resolve the revision of {path}" + (f" at {revision}" if revision else "")
                       + f" on the hub: {_first_line(err)}") from err


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
