"""Section 6 of ``make bench``, "align scale": ``xlt-align`` on WikiMatrix-sized
pools against the reference fast_align on the same input.

For each size (default about 250K and 1M pairs; ``--align-sizes`` or
``$XLT_BENCH_ALIGN_SIZES``) it writes, in a temporary directory (never
committed), a WikiMatrix-layout file (``score TAB English TAB Russian``): the
shared en-ru pool (``parallel/en-ru/all.en-ru.tsv``, 28,924 pairs) repeated
until it holds the size, copy ``c`` > 0 marked by a token `` c`` at the end of
both sides so that it survives de-duplication.  Then:

* ``python -m xlt command=align lang=ru corpus=wikimatrix corpus.path=FILE
  corpus.pool_size=SIZE corpus.size=250000`` (= ``xlt-align``; the paper
  preset's settings, fast_align ``-d -o -v``, intersect) in a subprocess:
  wall, CPU (the process and its tokenising workers) and memory, sampled every
  0.1 s as the summed PSS of the process tree (shared pages counted once) --
  overall and per phase: reading + tokenising, each EM direction (its CPU as
  xlt logs it), the rest (writing the artifact, sampling);
* the reference fast_align (``--fast-align PATH``, ``$XLT_FAST_ALIGN`` or
  ``fast_align`` on ``PATH``; skipped with a message when none is found), one
  OpenMP thread, ``-d -o -v`` forward and ``-r``, on exactly the pairs xlt
  aligned (``target ||| English``, xlt's Moses tokens from the artifact), the
  two directions as two processes side by side: each one's wall, CPU and
  peak RSS (``wait4``), their sum = the two run one after the other; and the
  share of lines where xlt's intersection equals the reference's.

    .venv/bin/python bench/align_scale.py --align-sizes 250000 [--fast-align /tmp/fast_align/build/fast_align]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
BASE_POOL = Path("parallel") / "en-ru" / "all.en-ru.tsv"
DEFAULT_SIZES = (250_000, 1_000_000)
SAMPLE = 250_000  # corpus.size of the xlt-align run (the paper's largest sample)
USABLE = 0.985    # share of a copy that is usable (28,642 of 28,924 en-ru pairs)


def sizes_from(text: Optional[str], default: tuple[int, ...] = DEFAULT_SIZES) -> list[int]:
    """``"250000,1000000"`` -> sizes; None -> ``default``; ``none``/``0``/empty -> skip the section."""
    if text is None:
        return list(default)
    if text.strip().lower() in ("", "0", "none"):
        return []
    return [int(float(size)) for size in text.split(",")]


def make_corpus(data_dir: Path, size: int, path: Path) -> int:
    """Write enough marked copies of the shared en-ru pool for ``size`` usable pairs; returns the line count."""
    rows = (data_dir / BASE_POOL).read_text(encoding="utf-8").splitlines()
    return write_copies(data_dir, math.ceil((size + 1000) / (USABLE * len(rows))) * len(rows), path)


def write_copies(data_dir: Path, lines: int, path: Path) -> int:
    """Write ``lines`` lines of marked copies of the shared en-ru pool (the last copy cut short)."""
    rows = (data_dir / BASE_POOL).read_text(encoding="utf-8").splitlines()
    with open(path, "w", encoding="utf-8") as out:
        for copy in range(math.ceil(lines / len(rows))):
            mark = f" {copy}" if copy else ""
            part = rows[: lines - copy * len(rows)]
            out.writelines(f"1.10\t{english}{mark}\t{russian}{mark}\n" for english, russian in
                           (row.split("\t") for row in part))
    return lines


# --------------------------------------------------------------------------- measuring a process tree


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as handle:
                    todo += [int(c) for c in handle.read().split()]
        except OSError:
            pass
    return pids


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeSampler(threading.Thread):
    """Summed PSS of a process and its descendants every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval, self.samples = pid, interval, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.time(), sum(_pss_kb(p) for p in _tree(self.pid))))
            self.stop.wait(self.interval)

    def peak_mb(self, start: float = 0.0, end: float = math.inf) -> float:
        inside = [kb for t, kb in self.samples if start <= t <= end]
        return round(max(inside, default=0) / 1024, 1)


def run_measured(command: list[str], log_path: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``command`` with its output in ``log_path``: wall, CPU of the tree
    (``wait4``: the process and its reaped children), main-process maxrss, PSS samples."""
    with open(log_path, "w") as log:
        start = time.time()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        sampler = TreeSampler(process.pid)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        end = time.time()
        sampler.stop.set()
        sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {process.returncode}:\n" + "\n".join(tail))
    return {"start": start, "end": end, "wall_s": round(end - start, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "maxrss_mb": round(usage.ru_maxrss / 1024, 1),
            "sampler": sampler}


# --------------------------------------------------------------------------- xlt


_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _events(log_path: Path) -> list[tuple[float, str]]:
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        match = _STAMP.match(line)
        if match:
            events.append((datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(), line))
    return events


def _find(events, pattern: str) -> tuple[float, re.Match]:
    for t, line in events:
        match = re.search(pattern, line)
        if match:
            return t, match
    raise RuntimeError(f"no log line matches {pattern!r}")


def bench_xlt(corpus: Path, size: int, work: Path) -> dict[str, Any]:
    """``xlt-align`` on the corpus with ``corpus.pool_size=size``, measured."""
    command = [sys.executable, "-m", "xlt", "command=align", "lang=ru", "corpus=wikimatrix", f"corpus.path={corpus}",
               f"corpus.pool_size={size}", f"corpus.size={min(SAMPLE, size)}", f"paths.cache_dir={work / 'cache'}",
               f"hydra.run.dir={work / 'run'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "XLT_PROGRESS_S": "60"}
    log_path = work / "xlt-align.log"
    run = run_measured(command, log_path, env)
    events, sampler = _events(log_path), run.pop("sampler")
    t_read, read = _find(events, r"usable pairs of .* read and tokenised in ([\d.]+)s \(([\d.]+)s CPU, (\d+) cores\)")
    t_fwd, fwd = _find(events, r"fast_align forward: .* ([\d.]+)s \(([\d.]+)s CPU\)")
    t_rev, rev = _find(events, r"fast_align reverse: .* ([\d.]+)s \(([\d.]+)s CPU\)")
    _, entries_fwd = _find(events, r"fast_align forward: .* (\d+) table entries")
    _, entries_rev = _find(events, r"fast_align reverse: .* (\d+) table entries")
    memory = {"words_as_ids_mb": float(_find(events, r"words as ids: ([\d.]+) MB")[1].group(1))}
    for direction in ("forward", "reverse"):
        parts = _find(events, rf"fast_align {direction}: .*table memory: index ([\d.]+) MB, probabilities ([\d.]+) MB, "
                              r"expected counts (\d+) x ([\d.]+) MB")[1].groups()
        memory[direction] = {"index_mb": float(parts[0]), "probabilities_mb": float(parts[1]),
                             "counts_mb": int(parts[2]) * float(parts[3])}
    artifact = next((work / "cache" / "alignments").glob("ru-*"))
    em_wall = float(fwd.group(1)) + float(rev.group(1))
    return {
        **run,
        "cores": int(read.group(3)),
        "pairs": sum(1 for _ in open(artifact / "pairs.tsv", encoding="utf-8")),
        "read_tokenize": {"wall_s": float(read.group(1)), "cpu_s": float(read.group(2)),
                          "peak_pss_mb": sampler.peak_mb(end=t_read)},
        "em": {"wall_s": round(em_wall, 1), "cpu_s": round(float(fwd.group(2)) + float(rev.group(2)), 1),
               "forward_cpu_s": float(fwd.group(2)), "reverse_cpu_s": float(rev.group(2)),
               "table_entries": [int(entries_fwd.group(1)), int(entries_rev.group(1))],
               "peak_pss_mb": sampler.peak_mb(t_read, t_rev)},
        "rest": {"wall_s": round(run["end"] - t_rev, 1), "peak_pss_mb": sampler.peak_mb(start=t_rev)},
        "peak_pss_mb": sampler.peak_mb(),
        "memory": memory,
        "artifact": str(artifact),
    }


# --------------------------------------------------------------------------- the reference tool


def find_reference(path: Optional[str]) -> Optional[str]:
    candidate = path or os.environ.get("XLT_FAST_ALIGN") or shutil.which("fast_align")
    return candidate if candidate and os.access(candidate, os.X_OK) else None


def bench_reference(binary: str, artifact: Path, work: Path) -> dict[str, Any]:
    """The tool on xlt's pool, ``-d -o -v``, forward and ``-r`` side by side, one thread each."""
    corpus = work / "pool.ru-en"
    with open(artifact / "pairs.tsv", encoding="utf-8") as rows, open(corpus, "w", encoding="utf-8") as out:
        for row in rows:
            _, _, english, target = row.rstrip("\n").split("\t")
            out.write(f"{target} ||| {english}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for direction, extra in (("forward", []), ("reverse", ["-r"])):
        out = open(work / f"ref.{direction}.align", "w")
        start = time.time()
        process = subprocess.Popen([binary, "-i", str(corpus), "-d", "-o", "-v", *extra], stdout=out,
                                   stderr=subprocess.DEVNULL, env=env)
        runs[direction] = (process, out, start)
    result: dict[str, Any] = {}
    for direction, (process, out, start) in runs.items():
        _, status, usage = os.wait4(process.pid, 0)
        out.close()
        if os.waitstatus_to_exitcode(status):
            raise RuntimeError(f"{binary} {direction} exited {os.waitstatus_to_exitcode(status)}")
        result[direction] = {"wall_s": round(time.time() - start, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                             "maxrss_mb": round(usage.ru_maxrss / 1024, 1)}
    result["wall_s"] = round(result["forward"]["wall_s"] + result["reverse"]["wall_s"], 1)
    result["cpu_s"] = round(result["forward"]["cpu_s"] + result["reverse"]["cpu_s"], 1)
    result["maxrss_mb"] = max(result["forward"]["maxrss_mb"], result["reverse"]["maxrss_mb"])
    result["intersect_agreement"] = _agreement(work, artifact)
    return result


def _links(line: str) -> frozenset:
    return frozenset(line.split())


def _agreement(work: Path, artifact: Path) -> float:
    """Share of lines where xlt's cached intersection equals the tool's forward & reverse."""
    same = total = 0
    with open(work / "ref.forward.align") as fwd, open(work / "ref.reverse.align") as rev, \
            open(artifact / "links.align") as ours:
        for f, r, o in zip(fwd, rev, ours):
            same += (_links(f) & _links(r)) == _links(o)
            total += 1
    return round(same / max(total, 1), 5)


# --------------------------------------------------------------------------- the section


def bench_align_scale(sizes: list[int], data_dir: Path, fast_align: Optional[str]) -> dict[str, Any]:
    binary = find_reference(fast_align)
    results: dict[str, Any] = {"sizes": {}, "reference": binary or "not found"}
    if binary is None:
        print("== 6. align scale: the reference fast_align was not found (--fast-align, $XLT_FAST_ALIGN or PATH; "
              "build clab/fast_align with cmake): xlt only, no ratios", flush=True)
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="xlt-align-scale-") as tmp:
            work = Path(tmp)
            corpus = work / "WikiMatrix.en-ru.tsv"
            lines = make_corpus(data_dir, size, corpus)
            print(f"== 6. align scale: {size:,} pairs (a {lines:,}-line WikiMatrix file), xlt-align ...", flush=True)
            row = {"corpus_lines": lines, "xlt": bench_xlt(corpus, size, work)}
            if binary:
                print(f"== 6. align scale: {size:,} pairs, the reference fast_align ...", flush=True)
                ref = bench_reference(binary, Path(row["xlt"]["artifact"]), work)
                x = row["xlt"]
                row["reference"] = ref
                row["ratios"] = {"em_cpu": round(x["em"]["cpu_s"] / ref["cpu_s"], 2),
                                 "wall": round(x["wall_s"] / ref["wall_s"], 2),
                                 "em_wall": round(x["em"]["wall_s"] / ref["wall_s"], 2),
                                 "peak_memory": round(x["peak_pss_mb"] / ref["maxrss_mb"], 2)}
            results["sizes"][str(size)] = row
    return results


def print_align_scale(results: dict[str, Any]) -> None:
    print(f"\n6. Align scale: xlt-align (fast_align -d -o -v, both directions, intersect) vs the reference "
          f"fast_align ({results['reference']}; one thread, two directions)")
    print(f"{'pairs':>10} {'what':<26} {'wall s':>8} {'CPU s':>8} {'peak MB':>8}   notes")
    print("-" * 118)
    for size, row in results["sizes"].items():
        x = row["xlt"]
        r, t = x["read_tokenize"], x["em"]
        print(f"{int(size):>10,} {'xlt-align, whole':<26} {x['wall_s']:>8} {x['cpu_s']:>8} {x['peak_pss_mb']:>8}   "
              f"{x['pairs']:,} pairs aligned, {x['cores']} cores; main process maxrss {x['maxrss_mb']} MB")
        print(f"{'':>10} {'  reading + tokenising':<26} {r['wall_s']:>8} {r['cpu_s']:>8} {r['peak_pss_mb']:>8}")
        print(f"{'':>10} {'  EM, both directions':<26} {t['wall_s']:>8} {t['cpu_s']:>8} {t['peak_pss_mb']:>8}   "
              f"table entries {t['table_entries'][0]:,} / {t['table_entries'][1]:,}")
        print(f"{'':>10} {'  writing + sampling':<26} {x['rest']['wall_s']:>8} {'':>8} {x['rest']['peak_pss_mb']:>8}")
        m = x["memory"]
        print(f"{'':>10} memory held: words as ids {m['words_as_ids_mb']:.0f} MB; per EM direction: hash index "
              f"{m['forward']['index_mb']:.0f}, probabilities {m['forward']['probabilities_mb']:.0f}, expected counts "
              f"{m['forward']['counts_mb']:.0f} MB (forward)")
        if "reference" in row:
            ref, q = row["reference"], row["ratios"]
            print(f"{'':>10} {'reference, 2 directions':<26} {ref['wall_s']:>8} {ref['cpu_s']:>8} {ref['maxrss_mb']:>8}   "
                  f"fwd {ref['forward']['cpu_s']} s / rev {ref['reverse']['cpu_s']} s CPU; intersections equal on "
                  f"{ref['intersect_agreement']:.2%} of lines")
            print(f"{'':>10} ratios: EM CPU {q['em_cpu']}x (goal <= 1.0 at 250K), wall {q['wall']}x (EM only "
                  f"{q['em_wall']}x; goal <= 0.6 at 1M), peak memory {q['peak_memory']}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--align-sizes", default=os.environ.get("XLT_BENCH_ALIGN_SIZES"),
                        help="comma-separated pool sizes (default 250000,1000000)")
    parser.add_argument("--fast-align", default=None, help="the reference fast_align binary")
    parser.add_argument("--data-dir", default=os.environ.get("XLT_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--out", default=None, help="also write the JSON results here")
    args = parser.parse_args()
    results = bench_align_scale(sizes_from(args.align_sizes), Path(args.data_dir), args.fast_align)
    print_align_scale(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
