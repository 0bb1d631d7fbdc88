"""Which commit of a HuggingFace hub repository a job loads.

A hub id (``bert-base-multilingual-cased``, ``facebook/xnli``) names a
repository whose ``main`` moves: weights, a tokenizer or a dataset's files
get fixed under the same name.  A job therefore resolves, where it runs, the
commit sha each hub repository it reads stands for now (a pinned sha as it
is; a branch or tag, ``main`` by default, through the hub's API, or offline
through the local HF cache's ``refs/<branch>`` file, with no network), loads
exactly that commit, and its keys (``xlt.keys``) and results.json record it.

A repository is named in keys and results.json by a label
``<kind>:<repo id>`` (``model:bert-base-multilingual-cased``), with
``@<pin>`` when the config pins a revision: the label says what to resolve
again, the value what it resolved to.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

KINDS = ("model", "dataset")
_SHA = re.compile(r"[0-9a-f]{40}")


def is_sha(text: str) -> bool:
    """Whether ``text`` is a full commit sha (what a job records and keys by)."""
    return bool(_SHA.fullmatch(text))


def hub_repository(model) -> bool:
    """Whether ``model`` (a ``model`` config node) is loaded from a hub
    repository, the one kind of model with commits: ``source=hub`` and a
    ``pretrained`` that is a hub id, not a local directory (which is keyed
    by its files' content instead)."""
    return model.source == "hub" and local_folder(model.pretrained) is None


# How a model.pretrained that is a path on disk starts (a hub id is "name" or "org/name").
PATH_STARTS = ("/", "./", "../", "~")


def local_folder(pretrained: str) -> str | None:
    """The folder on this machine that a ``model.pretrained`` value names
    (``~`` expanded), or None for a hub id.  A path (absolute, ``./``,
    ``../``, ``~``) is a folder whether it exists or not: a missing one is
    then an error naming it, not a hub lookup of a repository "/nope"; a
    relative name is a folder when one exists here, else a hub id."""
    text = str(pretrained)
    if text.startswith(PATH_STARTS) or text in (".", ".."):
        return os.path.expanduser(text)
    return text if os.path.isdir(text) else None


def label(kind: str, repo: str, pin: str | None = None) -> str:
    """``model:bert-base-multilingual-cased``, ``dataset:facebook/xnli@v1``."""
    return f"{kind}:{repo}" + (f"@{pin}" if pin else "")


def parse(text: str) -> tuple[str, str, str | None]:
    """The ``(kind, repo, pin)`` of a :func:`label` (hub ids hold neither ``:`` nor ``@``)."""
    kind, _, rest = text.partition(":")
    repo, _, pin = rest.partition("@")
    return kind, repo, pin or None


# What the running job has loaded from the hub: label -> sha (``resolve``;
# emptied when a job starts, ``start_job``), for its results.json.
_LOADED: dict[str, str] = {}


def start_job() -> None:
    """Forget what an earlier job of this process loaded (``loaded``) and
    resolved: each job of an in-process sweep asks the hub (or cache) again."""
    _LOADED.clear()
    current.cache_clear()


def loaded() -> dict[str, str]:
    """``{label: sha}`` of every hub repository the job has resolved to load."""
    return dict(sorted(_LOADED.items()))


def resolve(kind: str, repo: str, pin: str | None = None) -> str:
    """:func:`current`, recorded as loaded by the running job (``loaded``):
    what a loader calls before it loads ``repo``."""
    sha = current(kind, repo, pin)
    _LOADED[label(kind, repo, pin)] = sha
    return sha


@functools.lru_cache(maxsize=None)
def current(kind: str, repo: str, pin: str | None = None) -> str:
    """The commit sha that revision ``pin`` (None: ``main``) of the hub
    ``kind`` repository ``repo`` stands for now.

    Once per job (``start_job``): every stage of a job loads, and keys what
    it builds by, one commit even if the hub moves while it runs.  Offline
    (``HF_HUB_OFFLINE=1``) the local cache answers; a repository it does not
    hold raises OSError, which the loaders turn into their usual one line.
    Online, a hub that does not answer (a compute node without internet, a
    timeout) is answered by the cache too, with a warning, as
    ``from_pretrained`` falls back to its cached files; an unknown repository
    or revision is an error."""
    wanted = pin or "main"
    if is_sha(wanted):
        return wanted
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return cached(kind, repo, wanted)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    info = HfApi().model_info if kind == "model" else HfApi().dataset_info
    try:
        return str(info(repo, revision=wanted).sha)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001 - no network, a timeout, the hub down: what from_pretrained falls back to
        try:
            sha = cached(kind, repo, wanted)
        except OSError:
            raise err from None
        log.warning("the hub did not answer for %s %s (%s): using the commit the local cache holds, %s",
                    kind, repo, type(err).__name__, sha)
        return sha


def cached(kind: str, repo: str, revision: str) -> str:
    """The sha the local HF cache's ``refs/<revision>`` of ``repo`` holds
    (what ``from_pretrained`` / ``load_dataset`` load offline); OSError when
    the cache has no such ref."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type=kind) / "refs" / revision
    try:
        sha = ref.read_text(encoding="utf-8").strip()
    except OSError:
        raise OSError(f"offline (HF_HUB_OFFLINE=1) and no cached {kind} {repo} at revision {revision} ({ref} missing)") from None
    if not is_sha(sha):
        raise OSError(f"{ref} holds {sha[:60]!r}, not a commit sha")
    return sha
