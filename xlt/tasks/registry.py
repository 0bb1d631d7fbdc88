"""The tasks ``task=<name>`` can choose: listed here, in one place.

Explicit imports instead of a decorator that fills a dict as a side effect of
importing a module: what exists is visible in one file, and a task module that
fails to import fails loudly instead of silently missing from the choices.
Add a task by importing its class here (and its options schema to
``xlt.config.TASK_OPTIONS``).
"""

from __future__ import annotations

from xlt.config import DataConfig, TaskConfig
from xlt.errors import XltError
from xlt.tasks.base import Task
from xlt.tasks.ner import NerTask
from xlt.tasks.nli import NliTask
from xlt.tasks.qa import QaTask

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (NliTask, NerTask, QaTask)}


def build_task(cfg: TaskConfig, lang: str, data: DataConfig, eval_sets: list[str] | None = None) -> Task:
    """Instantiate the task named by ``cfg.name``."""
    if cfg.name not in TASKS:
        raise XltError(f"unknown task '{cfg.name}'; valid: {', '.join(sorted(TASKS))}")
    return TASKS[cfg.name](cfg, lang, data, eval_sets)
