"""The task kinds ``task.kind`` can choose: listed here, in one place.

Explicit imports instead of a decorator that fills a dict as a side effect of
importing a module: what exists is visible in one file, and a task module that
fails to import fails loudly instead of silently missing from the choices.
A new kind is a Task subclass imported here; a new dataset of a known kind
is only a YAML file in ``conf/task/``.

``bind`` merges ``task.options`` into the kind's options schema *in the job
config*, so the task, the cache keys and results.json all see one typed
node with every default filled in.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Iterator

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from xlt.errors import XltError
from xlt.tasks.base import Task
from xlt.tasks.ner import NerTask
from xlt.tasks.pair import PairClassificationTask
from xlt.tasks.qa import QaTask
from xlt.tasks.retrieval import RetrievalTask

KINDS: dict[str, type[Task]] = {cls.kind: cls for cls in (PairClassificationTask, NerTask, QaTask, RetrievalTask)}


def task_class(cfg: DictConfig) -> type[Task]:
    """The Task class of ``task.kind``."""
    kind = cfg.task.kind
    if kind not in KINDS:
        raise XltError(f"task.kind={kind}: valid: {', '.join(KINDS)} (task={cfg.task.name})")
    return KINDS[kind]


def bind(cfg: DictConfig) -> DictConfig:
    """Type ``cfg.task.options`` with the kind's options schema, in place
    (idempotent); a misspelt option or a wrong type is one XltError line."""
    schema = task_class(cfg).options_schema
    if OmegaConf.get_type(cfg.task.options) is schema:
        return cfg
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), cfg.task.options)
    except OmegaConfBaseException as err:
        key = getattr(err, "key", None)
        valid = ", ".join(f.name for f in fields(schema))
        raise XltError(f"task.options.{key}: {' '.join(str(err).splitlines()[0].split())} "
                       f"(task={cfg.task.name} options: {valid})") from None
    with open_dict(cfg.task):
        cfg.task.options = typed
    return cfg


def problems(cfg: DictConfig) -> Iterator[str]:
    """What the task cannot do with this (bound) job config: no data for the
    language, unknown evaluation sets... (its option values are checked with
    every other field, ``xlt.config.problems``)."""
    yield from task_class(cfg).problems(cfg)


def build_task(cfg: DictConfig) -> Task:
    """The task of a bound job config."""
    return task_class(bind(cfg))(cfg)
