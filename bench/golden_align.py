"""Agreement of xlt's fast_align with the reference tool's output (golden files).

For each language pool in ``$XLT_DATA_DIR/golden/fast_align`` (default
``../shared/data``) and each flag set (``dov`` = ``-d -o -v``, ``dv`` = ``-d -v``)
this trains ``xlt.data.fast_align`` on the whole pool (the exact input the tool
saw), both directions, then counts the lines whose forward, reverse and intersect
links equal the tool's.  Prints a table (times cover both directions) and writes
JSON (``--out``, default ``bench/golden_align.json``).

    .venv/bin/python bench/golden_align.py [--langs ru hi] [--flags dov dv]     (= make bench-align)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xlt.config import AlignerConfig  # noqa: E402
from xlt.data.align import fast_align_directions, intersect  # noqa: E402
from xlt.data.parallel import read_numbered_pairs, tokenize_pair  # noqa: E402

FLAG_SETS = {"dov": AlignerConfig(), "dv": AlignerConfig(optimize_tension=False)}


def golden_dir() -> Path:
    return Path(os.environ.get("XLT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")) / "golden" / "fast_align"


def read_links(path: Path) -> list[frozenset[tuple[int, int]]]:
    with open(path, encoding="utf-8") as handle:
        return [frozenset(tuple(map(int, link.split("-"))) for link in line.split()) for line in handle]


def align_pool(lang: str, flags: str) -> dict[str, list[frozenset[tuple[int, int]]]]:
    """Forward, reverse and intersect links of the pool as xlt computes them (reader,
    whitespace tokens, both directions), in the tool's orientation (target-English)."""
    rows = read_numbered_pairs("fast_align", str(golden_dir() / f"corpus.{lang}-en"), lang)
    pairs = [tokenize_pair("fast_align", english, target, lang) for _, english, target in rows]
    forward, reverse = fast_align_directions(pairs, FLAG_SETS[flags])
    links = {"forward": forward, "reverse": reverse, "intersect": [intersect(f, r) for f, r in zip(forward, reverse)]}
    return {name: [frozenset((j, i) for i, j in line) for line in lines] for name, lines in links.items()}


def agreement(lang: str, flags: str) -> dict[str, float]:
    """Share of lines equal to the golden file, per direction, and the runtime."""
    start, cpu = time.perf_counter(), time.process_time()
    ours = align_pool(lang, flags)
    result: dict[str, float] = {"lines": len(ours["forward"]), "seconds": round(time.perf_counter() - start, 1),
                                "cpu_seconds": round(time.process_time() - cpu, 1)}
    for direction, links in ours.items():
        golden = read_links(golden_dir() / f"{lang}-en.{flags}.{direction}.align")
        assert len(golden) == len(links), f"{lang} {flags} {direction}: {len(golden)} golden lines, {len(links)} ours"
        result[direction] = sum(a == b for a, b in zip(links, golden)) / len(links)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--langs", nargs="+", default=["ru", "hi"])
    parser.add_argument("--flags", nargs="+", default=list(FLAG_SETS), choices=list(FLAG_SETS))
    parser.add_argument("--out", default=str(Path(__file__).with_name("golden_align.json")))
    args = parser.parse_args()
    results = {}
    print(f"{'pool':<10}{'lines':>8}{'forward':>10}{'reverse':>10}{'intersect':>11}{'wall s':>9}{'cpu s':>8}")
    for lang in args.langs:
        for flags in args.flags:
            r = agreement(lang, flags)
            results[f"{lang}.{flags}"] = r
            print(f"{lang + '.' + flags:<10}{r['lines']:>8}{r['forward']:>10.2%}{r['reverse']:>10.2%}"
                  f"{r['intersect']:>11.2%}{r['seconds']:>9}{r['cpu_seconds']:>8}", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
