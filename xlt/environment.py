"""Where a job ran: the library versions and hardware that can move its numbers.

Neither is part of a job's identity (a rerun on another machine must not
redo every finished job), but both move results at the level of seed noise:
study 2's NER original model, rerun at the same code and data on a fresh
machine, moved a seed's entity F1 by up to 0.14 points on ru and 0.52 on hi
(an AMD EPYC against an Intel Xeon; two Intel Xeons, same library versions,
agreed to the last digit).  results.json records the environment
(``ok_results``); xlt-report's Provenance table lists the environments each
configuration's seeds ran in, and a paired test between jobs of two
environments is a warning (``xlt.report.summarise``).
"""

from __future__ import annotations

import platform
import sys
from collections import Counter
from importlib import metadata
from typing import Any

# The libraries whose versions change what a job computes.
PACKAGES = ("torch", "transformers", "tokenizers", "lightning", "numpy", "datasets")


def environment() -> dict[str, Any]:
    """``{"python", "packages": {name: version}, "cpu", "gpus": [name, ...]}`` of this process."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), "packages": packages, "cpu": cpu_model(), "gpus": gpu_names()}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; what platform knows elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    """The GPUs this job sees (none unless torch is loaded: xlt-align never loads it)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def summary(env: dict[str, Any] | None) -> str:
    """One line for a table: ``AMD EPYC, no GPU; torch 2.13.0+cpu, transformers 5.25.0, ...``."""
    if not env:
        return ""
    gpus = ", ".join(f"{n}× {name}" for name, n in Counter(env.get("gpus") or []).items()) or "no GPU"
    packages = ", ".join(f"{name} {version}" for name, version in (env.get("packages") or {}).items())
    return f"{env.get('cpu', '?')}, {gpus}; {packages}"
