"""Section 7 of ``make bench``: paper-size training sets in memory.

The paper fine-tunes on MultiNLI (392,702 English pairs) and SQuAD v1.1
(87,599 questions).  A job tokenises the whole training set before training
(``task.features``) and keeps the features for every epoch, in every
process of a DDP run.  Measured here, at ``--train-sizes`` pairs (default
392,702) and ``--qa-sizes`` questions (default 87,599): real English
examples repeated to the size (the 2,490 XNLI dev pairs of ``data/demo``; the
13,076 local English QA training questions of the shared data), tokenised
with e5_small's tokenizer by

* **xlt**: the task's ``features`` as a job calls it (chunks of
  ``FEATURE_CHUNK`` examples, each feature's ids as int32 / int8 arrays);
* **lists**: the same function as xlt had it until 2026-12-06: one
  tokenizer call on every example, the tokenizer's Python lists kept
  (``xlt.tasks.base.FEATURE_CHUNK`` set to the size and the task module's
  ``compact`` to a plain copy).

Each variant runs in its own process (so its peak is its own), alternating
for ``--train-rounds`` rounds: wall seconds of the tokenisation, the peak
resident memory of the process and what the features hold (resident memory
after minus before, each after ``gc.collect()`` and glibc's ``malloc_trim``,
so freed tokenizer buffers are not counted).  Both variants must give the
same features (a digest of every field of every feature, compared across
the processes).  Runs alone too::

    python bench/train_scale.py --train-sizes 392702 --qa-sizes 87599 --train-rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: bench/ is a folder of the repository, not a package on the path

from bench.align_scale import sizes_from as _parse_sizes  # noqa: E402
MULTINLI = 392_702
SQUAD = 87_599
VARIANTS = ("xlt", "lists")


def sizes_from(text: Optional[str], default: int = MULTINLI) -> list[int]:
    """``--train-sizes`` / ``--qa-sizes``: parsed as section 6's sizes."""
    return _parse_sizes(text, (default,))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB


def _current_mb() -> float:
    """Resident memory now, after handing freed heap pages back (glibc keeps them otherwise)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(task_name: str, variant: str, size: int, cache_dir: str, data_dir: str) -> dict[str, Any]:
    """One measurement, in this process (``--child``)."""
    import importlib

    from xlt.contract import compose
    from xlt.models.encoder import load_tokenizer
    from xlt.models.inputs import model_inputs
    from xlt.tasks import base
    from xlt.tasks.registry import build_task

    data = ["data=demo"] if task_name == "xnli" else [f"data.root={data_dir}"]
    cfg = compose([f"task={task_name}", *data, "paths.output_dir=unused", f"paths.cache_dir={cache_dir}"])
    tokenizer = load_tokenizer(cfg.model, cache_dir)
    task = build_task(cfg)
    if variant == "lists":  # the task's own features(), as it was: one call, the tokenizer's lists
        base.FEATURE_CHUNK = size
        module = importlib.import_module(type(task).__module__)
        module.compact = lambda encoded, index: {key: encoded[key][index] for key in model_inputs(encoded)}
    base = task.train_examples()
    examples = [base[i % len(base)] for i in range(size)]
    tokenizer(["warm up"], ["the tokenizer"])
    before = _current_mb()
    started = time.perf_counter()
    features = task.features(tokenizer, examples, train=True)
    seconds = time.perf_counter() - started
    held = _current_mb() - before
    return {"task": task_name, "variant": variant, "examples": size, "features": len(features),
            "seconds": round(seconds, 2), "peak_mb": round(_peak_mb(), 1), "before_mb": round(before, 1),
            "held_mb": round(held, 1), "held_bytes_per_feature": round(held * 2**20 / len(features)),
            "digest": _digest(features)}


def _digest(features: list[dict[str, Any]]) -> str:
    """Every field of every feature, arrays and lists alike (equal features, equal digest)."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for feature in features:
        for key in sorted(feature):
            digest.update(key.encode() + np.asarray(feature[key], dtype=np.int64).tobytes())
    return digest.hexdigest()


def bench_train_scale(sizes: dict[str, list[int]], cache_dir: str, data_dir: str, rounds: int = 2) -> dict[str, Any]:
    """Every task and size: the variants alternating for ``rounds`` rounds, each in a fresh process."""
    out: dict[str, Any] = {"tasks": {}, "rounds": rounds}
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for task, task_sizes in sizes.items():
        for size in task_sizes:
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
            for r in range(rounds):
                for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                    runs[variant].append(_run_child(task, variant, size, cache_dir, data_dir, env))
                    last = runs[variant][-1]
                    print(f"  [train scale] {task} {size:,} examples, round {r + 1}/{rounds}, {variant}: "
                          f"{last['seconds']} s, peak {last['peak_mb']:.0f} MB, features hold {last['held_mb']:.0f} MB",
                          flush=True)
            if len({run["digest"] for v in VARIANTS for run in runs[v]}) != 1:
                raise SystemExit(f"train_scale: the variants gave different {task} features at {size:,} examples")
            out["tasks"].setdefault(task, {})[str(size)] = _summary(runs)
    return out


def _run_child(task: str, variant: str, size: int, cache_dir: str, data_dir: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", task, variant, str(size), "--cache-dir", cache_dir,
                           "--data-dir", data_dir], capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"train_scale: the {task} {variant} child failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    med = {v: {k: statistics.median(run[k] for run in runs[v]) for k in ("seconds", "peak_mb", "held_mb")}
           for v in VARIANTS}
    return {
        "runs": runs, "median": med,
        "ratio_seconds_xlt_over_lists": round(med["xlt"]["seconds"] / med["lists"]["seconds"], 3),
        "ratio_seconds_spread": [round(a["seconds"] / b["seconds"], 3) for a, b in zip(runs["xlt"], runs["lists"])],
        "ratio_peak_xlt_over_lists": round(med["xlt"]["peak_mb"] / med["lists"]["peak_mb"], 3),
        "ratio_held_xlt_over_lists": round(med["xlt"]["held_mb"] / med["lists"]["held_mb"], 3),
    }


def print_train_scale(result: dict[str, Any]) -> None:
    print("\n== 7. paper-size training sets: features in memory (medians; each variant its own process)")
    print(f"{'task':>5} {'examples':>9} {'features':>9} {'variant':>7} {'tokenise s':>10} {'peak MB':>8} {'held MB':>8} "
          f"{'B/feature':>9}")
    for task, sizes in result["tasks"].items():
        for size, entry in sizes.items():
            for variant in VARIANTS:
                m, one = entry["median"][variant], entry["runs"][variant][0]
                print(f"{task:>5} {int(size):>9,} {one['features']:>9,} {variant:>7} {m['seconds']:>10.1f} "
                      f"{m['peak_mb']:>8.0f} {m['held_mb']:>8.0f} {m['held_mb'] * 2**20 / one['features']:>9.0f}")
            print(f"{'':>15} xlt/lists: time {entry['ratio_seconds_xlt_over_lists']} (rounds "
                  f"{entry['ratio_seconds_spread']}), peak memory {entry['ratio_peak_xlt_over_lists']}, "
                  f"held memory {entry['ratio_held_xlt_over_lists']}")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-sizes", default=None, help=f"comma-separated NLI pair counts (default {MULTINLI}: "
                                                            "MultiNLI); none skips them")
    parser.add_argument("--qa-sizes", default=None, help=f"comma-separated QA question counts (default {SQUAD}: "
                                                         "SQuAD v1.1); none skips them")
    parser.add_argument("--train-rounds", type=int, default=2, help="alternating rounds per size")
    parser.add_argument("--cache-dir", default=os.environ.get("XLT_CACHE_DIR", str(REPO / ".cache" / "xlt")),
                        help="xlt cache with the converted e5_small tokenizer")
    parser.add_argument("--data-dir", default=os.environ.get("XLT_DATA_DIR", str(REPO.parent / "shared" / "data")),
                        help="shared data folder with the English QA training files (default: $XLT_DATA_DIR or ../shared/data)")
    parser.add_argument("--child", nargs=3, metavar=("TASK", "VARIANT", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]), args.cache_dir, args.data_dir)))
        return
    print_train_scale(bench_train_scale(task_sizes(args.train_sizes, args.qa_sizes), args.cache_dir, args.data_dir,
                                        args.train_rounds))


def task_sizes(train_sizes: Optional[str], qa_sizes: Optional[str]) -> dict[str, list[int]]:
    """The sizes of each task that has any (``--train-sizes`` NLI, ``--qa-sizes`` QA)."""
    sizes = {"xnli": sizes_from(train_sizes, MULTINLI), "qa": sizes_from(qa_sizes, SQUAD)}
    return {task: found for task, found in sizes.items() if found}


if __name__ == "__main__":
    main()
