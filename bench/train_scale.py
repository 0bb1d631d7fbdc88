"""Section 7 of ``make bench``: a MultiNLI-size training set in memory.

The paper fine-tunes on MultiNLI (392,702 English pairs).  A job tokenises
the whole training set before training (``task.features``) and keeps the
features for every epoch, in every process of a DDP run.  Measured here, at
``--train-sizes`` pairs (default 392,702): the English XNLI dev pairs of
``data/demo`` (2,490 real pairs) repeated to the size, tokenised by

* **xlt**: ``PairClassificationTask.features`` as a job calls it (chunks of
  ``FEATURE_CHUNK`` pairs, each pair's ids as int32 / int8 arrays);
* **lists**: the straightforward version (xlt's until 2026-12-06): one
  tokenizer call on every pair, each pair's fields kept as the Python lists
  the tokenizer returns.

Each variant runs in its own process (so its peak is its own), alternating
for ``--train-rounds`` rounds: wall seconds of the tokenisation, the peak
resident memory of the process and what the features hold (resident memory
after minus before, each after ``gc.collect()`` and glibc's ``malloc_trim``,
so freed tokenizer buffers are not counted).  Both variants must give
the same ids (checked on every pair in the child, against a fresh tokenizer
call on the first 1,000 pairs).  Runs alone too::

    python bench/train_scale.py --train-sizes 392702 --train-rounds 2
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
VARIANTS = ("xlt", "lists")


def sizes_from(text: Optional[str]) -> list[int]:
    """``--train-sizes``: parsed as section 6's sizes, default MultiNLI's size."""
    return _parse_sizes(text, (MULTINLI,))


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


def child(variant: str, size: int, cache_dir: str) -> dict[str, Any]:
    """One measurement, in this process (``--child``)."""
    from xlt.contract import compose
    from xlt.models.encoder import load_tokenizer
    from xlt.tasks.registry import build_task

    cfg = compose(["task=xnli", "data=demo", "paths.output_dir=unused", f"paths.cache_dir={cache_dir}"])
    tokenizer = load_tokenizer(cfg.model, cache_dir)
    task = build_task(cfg)
    base = task.train_examples()
    examples = [base[i % len(base)] for i in range(size)]
    tokenizer(["warm up"], ["the tokenizer"])
    before = _current_mb()
    started = time.perf_counter()
    if variant == "xlt":
        features = task.features(tokenizer, examples, train=True)
    else:
        encoded = tokenizer([e["premise"] for e in examples], [e["hypothesis"] for e in examples], truncation=True,
                            max_length=cfg.task.max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        features = [{**{k: encoded[k][i] for k in keys}, "labels": e["label"], "example_index": i}
                    for i, e in enumerate(examples)]
        del encoded
    seconds = time.perf_counter() - started
    held = _current_mb() - before
    check = tokenizer([e["premise"] for e in examples[:1000]], [e["hypothesis"] for e in examples[:1000]],
                      truncation=True, max_length=cfg.task.max_length)["input_ids"]
    assert all(list(f["input_ids"]) == ids for f, ids in zip(features, check)), "features differ from the tokenizer's ids"
    return {"variant": variant, "pairs": len(features), "seconds": round(seconds, 2),
            "peak_mb": round(_peak_mb(), 1), "before_mb": round(before, 1), "held_mb": round(held, 1),
            "held_bytes_per_pair": round(held * 2**20 / len(features))}


def bench_train_scale(sizes: list[int], cache_dir: str, rounds: int = 2) -> dict[str, Any]:
    """Every size: the variants alternating for ``rounds`` rounds, each in a fresh process."""
    out: dict[str, Any] = {"sizes": {}, "rounds": rounds}
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for size in sizes:
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for r in range(rounds):
            for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                done = subprocess.run([sys.executable, __file__, "--child", variant, str(size), "--cache-dir", cache_dir],
                                      capture_output=True, text=True, env=env, cwd=REPO)
                if done.returncode != 0:
                    raise SystemExit(f"train_scale: the {variant} child failed:\n{done.stderr[-2000:]}")
                runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
                last = runs[variant][-1]
                print(f"  [train scale] {size:,} pairs, round {r + 1}/{rounds}, {variant}: {last['seconds']} s, "
                      f"peak {last['peak_mb']:.0f} MB, features hold {last['held_mb']:.0f} MB", flush=True)
        med = {v: {k: statistics.median(run[k] for run in runs[v]) for k in ("seconds", "peak_mb", "held_mb")}
               for v in VARIANTS}
        out["sizes"][str(size)] = {
            "runs": runs, "median": med,
            "ratio_seconds_xlt_over_lists": round(med["xlt"]["seconds"] / med["lists"]["seconds"], 3),
            "ratio_seconds_spread": [round(a["seconds"] / b["seconds"], 3) for a, b in zip(runs["xlt"], runs["lists"])],
            "ratio_held_xlt_over_lists": round(med["xlt"]["held_mb"] / med["lists"]["held_mb"], 3),
        }
    return out


def print_train_scale(result: dict[str, Any]) -> None:
    print("\n== 7. a MultiNLI-size training set: features in memory (medians; each variant its own process)")
    print(f"{'pairs':>9} {'variant':>7} {'tokenise s':>10} {'peak MB':>8} {'held MB':>8} {'B/pair':>7}")
    for size, entry in result["sizes"].items():
        for variant in VARIANTS:
            m, one = entry["median"][variant], entry["runs"][variant][0]
            print(f"{int(size):>9,} {variant:>7} {m['seconds']:>10.1f} {m['peak_mb']:>8.0f} {m['held_mb']:>8.0f} "
                  f"{m['held_mb'] * 2**20 / one['pairs']:>7.0f}")
        print(f"{'':>9} xlt/lists: time {entry['ratio_seconds_xlt_over_lists']} (rounds {entry['ratio_seconds_spread']}), "
              f"held memory {entry['ratio_held_xlt_over_lists']}")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-sizes", default=None, help=f"comma-separated pair counts (default {MULTINLI}: MultiNLI)")
    parser.add_argument("--train-rounds", type=int, default=2, help="alternating rounds per size")
    parser.add_argument("--cache-dir", default=os.environ.get("XLT_CACHE_DIR", str(REPO / ".cache" / "xlt")),
                        help="xlt cache with the converted e5_small tokenizer")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.cache_dir)))
        return
    print_train_scale(bench_train_scale(sizes_from(args.train_sizes), args.cache_dir, args.train_rounds))


if __name__ == "__main__":
    main()
