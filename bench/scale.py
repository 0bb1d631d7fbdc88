"""Sections 8-11 of ``make bench``: the parts of a job that grow with the paper's data.

8. **Pool** (``--pool-lines``, default 1,600,000 = en-ru WikiMatrix at the
   paper's margin threshold; ``--pool-size``, default 250,000): a
   WikiMatrix-layout file of that many lines, marked copies of the shared
   en-ru pool (``bench/align_scale.py``'s ``write_copies``), read as
   ``load_pool`` reads it (the checking and de-duplicating pass, then the
   draw of ``pool_size`` + 500 pairs, streamed and Moses-tokenised on the
   job's cores): seconds, CPU, peak memory of the process and of its
   tokenising workers.  Then what *every* job's align stage does on the
   cached pool (``read_pool_index``, ``sample_pool`` for ``corpus.size`` =
   the pool size, ``read_pool_rows``), on a cached pool of that size made of
   the golden en-ru pairs and their reference links, ``xlt`` (the numpy
   draw order, ``xlt.data.shuffle``) against ``list`` (``sample_pool`` as it
   was: ``random.shuffle`` of a Python list of every pair read).
9. **Adjustment examples** (``--examples-sizes``, default 250,000 = Table
   5's largest sample): the golden en-ru pairs with the reference
   intersections repeated to the size, ``build_aligned_examples`` as a job
   calls it (mBERT's vocabulary from the shared data, tokens=all, avg),
   ``xlt`` (chunks, arrays) against ``lists`` (one tokenizer call, Python
   lists: the module as it was).
10. **Continual reference cache** (``--cache-sentences``, default 30,000 =
   Table 2's ``corpus.size``): the frozen reference's fp16 vectors cached for
   that many golden en-ru sentences, mBERT's vocabulary and hidden size (a
   random one-layer BERT: the vectors' count and size do not depend on the
   depth), filled in batches of 16 as continual draws them: bytes per
   sentence, resident memory, and the bound the job logs.
11. **Report** (``--report-jobs``, default 60 = Table 2's 3 modes x 4
   languages x 5 seeds): ``xlt-report`` on a sweep of that many XNLI jobs
   (real composed configs, model=mbert; 5,010 predictions per test set, four
   sets a job, random labels at ~70% accuracy), with the paired t-tests
   against without (``--no-significance``).

Each measurement runs in its own process (its peak is its own), variants
alternating for ``--scale-rounds`` rounds; compared variants must compute the
same (a digest, compared across processes).  Runs alone too::

    python bench/scale.py --pool-lines 1600000 --examples-sizes 250000 --cache-sentences 30000 --report-jobs 60
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: bench/ is a folder of the repository, not a package on the path

import numpy as np  # noqa: E402

from bench.align_scale import sizes_from, write_copies  # noqa: E402
from bench.train_scale import _current_mb  # noqa: E402

GOLDEN = Path("golden") / "fast_align"
HELDOUT = 500  # corpus.heldout of the paper presets
DEFAULTS = {"pool_lines": 1_600_000, "pool_size": 250_000, "examples": 250_000, "cache": 30_000, "report": 60}


# --------------------------------------------------------------------------- real pairs


def golden_pairs(data_dir: str) -> list[tuple[str, str, str]]:
    """``(english, target, links)`` lines of the shared golden en-ru corpus (Moses
    tokens, ``target ||| English``) and the reference fast_align's intersections."""
    folder = Path(data_dir) / GOLDEN
    rows = (folder / "corpus.ru-en").read_text(encoding="utf-8").splitlines()
    links = (folder / "ru-en.dov.intersect.align").read_text(encoding="utf-8").splitlines()
    return [(english, target, link) for (target, english), link in zip((r.split(" ||| ") for r in rows), links)]


def mbert_tokenizer(data_dir: str):
    """mBERT's WordPiece vocabulary from the shared data, as the hub tokenizer cases it."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab_file=str(Path(data_dir) / "vocab" / "mbert_modified_vocab.txt"), do_lower_case=False,
                             model_max_length=512)


def aligned_inputs(data_dir: str, size: int):
    """``size`` golden pairs (repeated) as the align stage gives them: words shared as a vocabulary."""
    from xlt.data.align import parse_pharaoh_line
    from xlt.data.parallel import SentencePair

    words: dict[str, str] = {}
    base = [(english.split(" "), target.split(" "), parse_pharaoh_line(link, "golden"))
            for english, target, link in golden_pairs(data_dir)]
    pairs, alignments = [], []
    for k in range(size):
        english, target, links = base[k % len(base)]
        pairs.append(SentencePair([words.setdefault(w, w) for w in english], [words.setdefault(w, w) for w in target]))
        alignments.append(list(links))
    return pairs, alignments


def _digest(values) -> str:
    digest = hashlib.sha256()
    for value in values:
        digest.update(np.asarray(value, np.int64).tobytes())
    return digest.hexdigest()[:16]


def _start() -> tuple[float, float]:
    """Resident MB now (after ``gc`` and ``malloc_trim``) and a clock, with the
    peak reset (``/proc/self/clear_refs``), so that :func:`_peak_mb` is this
    measurement's, not the imports' or the inputs' preparation's."""
    before = _current_mb()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return before, time.perf_counter()


def _peak_mb() -> float:
    """The process's peak resident MB since :func:`_start` (``VmHWM``)."""
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:")) / 1024


def _cpu_s() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


# --------------------------------------------------------------------------- 8. pool


def child_read(corpus: str, pool_size: int) -> dict[str, Any]:
    """``load_pool``'s two steps on a WikiMatrix file: the scan, then the pool's draw."""
    from xlt.data.parallel import POOL_SEED, draw, scan_corpus

    cpu = _cpu_s()
    before, start = _start()
    scan = scan_corpus("wikimatrix", corpus, "ru", 1.04)
    scanned, scan_peak = time.perf_counter(), _peak_mb()
    pool = draw(scan, POOL_SEED, pool_size + HELDOUT, 64)
    done = time.perf_counter()
    return {"lines": scan.n_lines, "n_read": len(scan), "pool": len(pool.ranks), "scan_s": round(scanned - start, 1),
            "draw_s": round(done - scanned, 1), "seconds": round(done - start, 1), "cpu_s": round(_cpu_s() - cpu, 1),
            "before_mb": round(before), "scan_peak_mb": round(scan_peak), "peak_mb": round(_peak_mb()),
            "workers_peak_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}


def write_pool(folder: Path, data_dir: str, n_read: int, size: int) -> None:
    """A cached pool as ``_build_pool`` writes it: ``size`` pairs (golden pairs and
    their reference links, repeated) at seeded ranks among ``n_read`` pairs read."""
    rows = golden_pairs(data_dir)
    ranks = np.sort(np.random.default_rng(0).choice(n_read, size, replace=False))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "pairs.tsv", "w", encoding="utf-8") as pairs, open(folder / "links.align", "w") as links:
        for k, rank in enumerate(ranks.tolist()):
            english, target, link = rows[k % len(rows)]
            pairs.write(f"{rank + 1}\t{rank}\t{english}\t{target}\n")
            links.write(link + "\n")
    (folder / "meta.json").write_text(json.dumps({"n_read": n_read, "n_lines": n_read, "path": "bench"}))


def sample_pool_lists(pool, cfg, seed: int) -> tuple[list[int], list[int]]:
    """``xlt.data.parallel.sample_pool`` as it was until 2026-12-07: the seed's
    order as ``random.shuffle`` of a Python list of every pair read."""
    from xlt.data.parallel import _split

    position = np.full(pool.n_read, -1, np.int64)
    position[np.asarray(pool.ranks, np.int64)] = np.arange(len(pool.ranks))
    member = position >= 0
    order = list(range(pool.n_read))
    random.Random(seed).shuffle(order)
    kept = list(islice((rank for rank in order if member[rank]), cfg.heldout + cfg.size))
    heldout, sample = _split(kept, cfg, pool.path, pool.n_read)
    return position[sample].tolist(), position[heldout].tolist()


def child_job(artifact: str, variant: str, size: int) -> dict[str, Any]:
    """What every job's align stage does on a cached pool (after checking its manifest)."""
    from types import SimpleNamespace

    from xlt.data.parallel import sample_pool
    from xlt.stages.align import read_pool_index, read_pool_rows

    sample = sample_pool if variant == "xlt" else sample_pool_lists
    cfg = SimpleNamespace(heldout=HELDOUT, size=size, max_words=64)
    before, start = _start()
    index = read_pool_index(Path(artifact))
    indexed = time.perf_counter()
    train, heldout = sample(index, cfg, 1)
    sampled = time.perf_counter()
    rows = read_pool_rows(Path(artifact), train + heldout)
    done = time.perf_counter()
    return {"variant": variant, "index_s": round(indexed - start, 2), "sample_s": round(sampled - indexed, 2),
            "rows_s": round(done - sampled, 2), "seconds": round(done - start, 2), "n_read": int(index.n_read),
            "pairs": len(rows), "peak_over_start_mb": round(_peak_mb() - before), "digest": _digest([train, heldout])}


def bench_pool(lines: int, pool_size: int, data_dir: str, rounds: int, env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"lines": lines, "pool_size": pool_size}
    with tempfile.TemporaryDirectory(prefix="xlt-bench-pool-") as tmp:
        corpus = Path(tmp) / "WikiMatrix.en-ru.tsv"
        write_copies(Path(data_dir), lines, corpus)
        print(f"  [pool] reading a {lines:,}-line WikiMatrix file, drawing a pool of {pool_size:,} + {HELDOUT} ...",
              flush=True)
        out["read"] = _run_child(["read", str(corpus), str(pool_size)], env)
        corpus.unlink()
        n_read = out["read"]["n_read"]
        write_pool(Path(tmp) / "pool", data_dir, n_read, min(pool_size + HELDOUT, n_read))
        runs = _alternate(lambda variant: ["job", str(Path(tmp) / "pool"), variant, str(pool_size)], ("xlt", "list"),
                          rounds, env, "pool: one job's align stage")
    out["job"] = _compare(runs, ("xlt", "list"), ("sample_s", "seconds", "peak_over_start_mb"))
    return out


# --------------------------------------------------------------------------- 9. adjustment examples


def child_examples(variant: str, size: int, data_dir: str) -> dict[str, Any]:
    from xlt.config import TokensConfig
    from xlt.data import words

    tokenizer = mbert_tokenizer(data_dir)
    pairs, alignments = aligned_inputs(data_dir, size)
    tokens = TokensConfig(name="all", use_words=True, use_cls=True, use_sep=True)
    before, start = _start()
    if variant == "xlt":
        examples = words.build_aligned_examples(tokenizer, pairs, alignments, "avg", tokens, max_length=512,
                                                drop_identical=True, regularize="all")
    else:  # what build_aligned_examples was before 2026-12-07: one chunk of every pair, kept as lists
        examples, _ = words._chunk_examples(tokenizer, pairs, alignments, "avg", tokens, 512, True, "all")
    seconds = time.perf_counter() - start
    held = _current_mb() - before
    return {"variant": variant, "pairs": size, "examples": len(examples), "seconds": round(seconds, 1),
            "before_mb": round(before), "peak_mb": round(_peak_mb()), "peak_over_start_mb": round(_peak_mb() - before),
            "held_mb": round(held, 1), "held_bytes_per_example": round(held * 2**20 / max(len(examples), 1)),
            "digest": _digest(v for k in range(len(examples)) for v in vars(examples[k]).values())}


# --------------------------------------------------------------------------- 10. continual reference cache


def child_cache(sentences: int, data_dir: str) -> dict[str, Any]:
    """The cache of ``AlignmentLoss(cache=True)`` as ``xlt.stages.job.build_objective``
    wires it, filled with every sentence (16 a batch, each computed in its first batch)."""
    import torch
    from transformers import BertConfig, BertModel

    from xlt.config import TokensConfig
    from xlt.data.words import build_aligned_examples
    from xlt.models.adjust import AlignmentLoss, collate_aligned
    from xlt.models.continual import ContinualObjective, reference_vectors

    torch.set_num_threads(1)
    tokenizer = mbert_tokenizer(data_dir)
    pairs, alignments = aligned_inputs(data_dir, sentences)
    examples = build_aligned_examples(tokenizer, pairs, alignments, "avg",
                                      TokensConfig(name="all", use_words=True, use_cls=True, use_sep=True),
                                      max_length=512, drop_identical=True, regularize="all")
    del pairs, alignments
    torch.manual_seed(0)
    reference = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=768, num_hidden_layers=1,
                                     num_attention_heads=12, intermediate_size=768), add_pooling_layer=False)
    objective = ContinualObjective(examples, tokenizer.pad_token_id, AlignmentLoss(reference, cache=True))
    before, start = _start()
    with torch.no_grad():
        for first in range(0, len(examples), 16):
            rows = list(range(first, min(first + 16, len(examples))))
            objective.loss.reference_vectors(collate_aligned([examples[i] for i in rows], tokenizer.pad_token_id, rows))
    seconds = time.perf_counter() - start
    cache = objective.loss.cache
    vectors = sum(reg.shape[0] + pair.shape[0] for reg, pair in cache.values())
    data = sum(t.numel() * t.element_size() for pair in cache.values() for t in pair)
    return {"sentences": len(cache), "seconds": round(seconds, 1), "vectors_per_sentence": round(vectors / len(cache), 2),
            "bytes_per_sentence": round(data / len(cache)), "tensor_bytes": data, "tensor_gib": round(data / 2**30, 3),
            "logged_bytes": reference_vectors(examples) * 768 * 2,
            "resident_gib": round((_current_mb() - before) / 1024, 3), "logged": objective.cache_line()}


# --------------------------------------------------------------------------- 11. report


def write_sweep(out: Path, jobs: int) -> int:
    """``jobs`` XNLI jobs shaped as Table 2 (modes x languages x seeds; mbert, hub data, WikiMatrix):
    results.json of real composed configs and 4 x 5,010 prediction records each."""
    from xlt import results
    from xlt.artifacts import write_jsonl
    from xlt.contract import compose

    rng, n, k = random.Random(0), 5010, 0
    cells = [(mode, lang) for mode in ("original", "adjusted", "continual") for lang in ("es", "ru", "vi", "hi")]
    for seed in range(1, jobs // len(cells) + 2):
        for mode, lang in cells:
            if k == jobs:
                return k
            folder = out / str(k)
            k += 1
            cfg = compose(["task=xnli", f"mode={mode}", f"lang={lang}", f"seed={seed}", "model=mbert", "data=hub",
                           "corpus=wikimatrix", "corpus.path='/x/WikiMatrix.{pair}.tsv'", f"paths.output_dir={folder}"])
            (folder / "predictions").mkdir(parents=True)
            metrics = {}
            sets = {f"xnli.{lang}": range(n), f"xnli_mixed.{lang}": range(n),
                    f"xnli_mixed_premise.{lang}": range(0, n, 2), f"xnli_mixed_hypothesis.{lang}": range(1, n, 2)}
            for name, ids in sets.items():
                records = []
                for i in ids:
                    gold = i % 3
                    prediction = gold if rng.random() < 0.7 else (gold + 1) % 3
                    records.append({"id": f"xnli-{lang}-{i}", "gold": gold, "prediction": prediction,
                                    "correct": int(gold == prediction)})
                write_jsonl(folder / "predictions" / f"{name}.jsonl", records)
                metrics[name] = {"accuracy": sum(r["correct"] for r in records) / len(records), "n": len(records)}
            report = {"title": "XNLI", "significance": "paired_ttest", "headline": ["accuracy"]}
            results.write(folder, results.ok_results(cfg, metrics, 0.0, {}, report))
    return k


def child_report(sweep: str, variant: str) -> dict[str, Any]:
    import contextlib
    import io

    from xlt.report import main as report

    before, start = _start()
    with contextlib.redirect_stdout(io.StringIO()) as markdown:
        code = report([sweep, "--out", str(Path(sweep) / f"report-{variant}"),
                       *(["--no-significance"] if variant == "no tests" else [])])
    if code:
        raise SystemExit(f"xlt-report exited {code}")
    table = markdown.getvalue()
    return {"variant": variant, "seconds": round(time.perf_counter() - start, 1), "peak_mb": round(_peak_mb()),
            "peak_over_start_mb": round(_peak_mb() - before), "table_lines": table.count("\n")}


def bench_report(jobs: int, rounds: int, env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="xlt-bench-report-") as tmp:
        print(f"  [report] writing a sweep of {jobs} XNLI jobs ...", flush=True)
        started = time.perf_counter()
        written = _run_child(["sweep", tmp, str(jobs)], env)["jobs"]
        made = round(time.perf_counter() - started, 1)
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
        runs = _alternate(lambda variant: ["report", tmp, variant], ("tests", "no tests"), rounds, env, "report")
    return {"jobs": written, "sweep_mb": round(size / 2**20), "write_s": made,
            **_compare(runs, ("tests", "no tests"), ("seconds", "peak_over_start_mb"))}


# --------------------------------------------------------------------------- running and printing


def _run_child(arguments: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", *arguments], capture_output=True, text=True, env=env,
                          cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"bench/scale.py: the {' '.join(arguments[:3])} child failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _alternate(arguments, variants: tuple[str, ...], rounds: int, env: dict[str, str], label: str) -> dict[str, list]:
    """Each variant once per round in its own process, the order reversed every other round."""
    runs: dict[str, list] = {v: [] for v in variants}
    for r in range(rounds):
        for variant in variants if r % 2 == 0 else variants[::-1]:
            runs[variant].append(_run_child(arguments(variant), env))
            last = runs[variant][-1]
            print(f"  [{label}] round {r + 1}/{rounds}, {variant}: {last['seconds']} s, "
                  f"peak over start {last['peak_over_start_mb']} MB", flush=True)
    return runs


def _compare(runs: dict[str, list], variants: tuple[str, str], keys: tuple[str, ...]) -> dict[str, Any]:
    """Medians per variant, the first over the second (median and every round), digests checked."""
    digests = {run["digest"] for v in variants for run in runs[v] if "digest" in run}
    if len(digests) > 1:
        raise SystemExit(f"bench/scale.py: the variants {variants} computed different results")
    first, second = variants
    median = {v: {k: statistics.median(run[k] for run in runs[v]) for k in keys} for v in variants}
    return {"runs": runs, "median": median,
            "ratios": {k: round(median[first][k] / median[second][k], 3) if median[second][k] else None for k in keys},
            "ratio_rounds": {k: [round(a[k] / b[k], 3) if b[k] else None for a, b in zip(runs[first], runs[second])]
                             for k in keys}}


def bench_scale(args: argparse.Namespace) -> dict[str, Any]:
    """Sections 8-11 at the sizes of ``args`` (0 / none skips one)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1"}
    out: dict[str, Any] = {"rounds": args.scale_rounds}
    lines, pools = _one(args.pool_lines, DEFAULTS["pool_lines"]), _one(args.pool_size, DEFAULTS["pool_size"])
    if lines and pools:
        print(f"\n== 8. pool: reading {lines:,} lines, a {pools:,}-pair pool, one job's draw", flush=True)
        out["pool"] = bench_pool(lines, pools, args.data_dir, args.scale_rounds, env)
    for size in sizes_from(args.examples_sizes, (DEFAULTS["examples"],)):
        print(f"\n== 9. adjustment examples: {size:,} pairs", flush=True)
        runs = _alternate(lambda variant: ["examples", variant, str(size), args.data_dir], ("xlt", "lists"),
                          args.scale_rounds, env, f"examples {size:,}")
        out.setdefault("examples", {})[str(size)] = _compare(runs, ("xlt", "lists"),
                                                             ("seconds", "peak_over_start_mb", "held_mb"))
    sentences = _one(args.cache_sentences, DEFAULTS["cache"])
    if sentences:
        print(f"\n== 10. continual reference cache: {sentences:,} sentences, hidden 768", flush=True)
        out["cache"] = _run_child(["cache", str(sentences), args.data_dir], env)
    jobs = _one(args.report_jobs, DEFAULTS["report"])
    if jobs:
        print(f"\n== 11. report: a sweep of {jobs} jobs", flush=True)
        out["report"] = bench_report(jobs, args.scale_rounds, env)
    return out


def _one(text: Optional[str], default: int) -> int:
    found = sizes_from(text, (default,))
    return found[0] if found else 0


def print_scale(result: dict[str, Any]) -> None:
    if "pool" in result:
        p, r = result["pool"], result["pool"]["read"]
        print(f"\n8. Pool: a {r['lines']:,}-line WikiMatrix file ({r['n_read']:,} pairs after de-duplication), pool of "
              f"{r['pool']:,}: scan {r['scan_s']} s + draw and tokenise {r['draw_s']} s = {r['seconds']} s "
              f"({r['cpu_s']} s CPU with workers); peak {r['scan_peak_mb']} MB after the scan, {r['peak_mb']} MB "
              f"(workers {r['workers_peak_mb']} MB)")
        _print_compare("   one job's align stage on the cached pool", p["job"], ("xlt", "list"),
                       {"sample_s": "sample_pool s", "seconds": "total s", "peak_over_start_mb": "peak MB"})
    for size, entry in result.get("examples", {}).items():
        _print_compare(f"\n9. Adjustment examples, {int(size):,} pairs (mBERT vocabulary)", entry, ("xlt", "lists"),
                       {"seconds": "s", "peak_over_start_mb": "peak MB", "held_mb": "held MB"})
    if "cache" in result:
        c = result["cache"]
        print(f"\n10. Continual reference cache, {c['sentences']:,} sentences, hidden 768: {c['vectors_per_sentence']} "
              f"vectors = {c['bytes_per_sentence'] / 1024:.1f} KiB a sentence, {c['tensor_gib']} GiB of fp16 tensors, "
              f"{c['resident_gib']} GiB resident ({c['seconds']} s)\n    the job logs: {c['logged']}")
    if "report" in result:
        _print_compare(f"\n11. xlt-report on {result['report']['jobs']} XNLI jobs ({result['report']['sweep_mb']} MB)",
                       result["report"], ("tests", "no tests"), {"seconds": "s", "peak_over_start_mb": "peak MB"})


def _print_compare(title: str, entry: dict[str, Any], variants: tuple[str, str], keys: dict[str, str]) -> None:
    print(title)
    for variant in variants:
        shown = ", ".join(f"{label} {entry['median'][variant][k]}" for k, label in keys.items())
        print(f"    {variant:>8}: {shown}")
    ratios = ", ".join(f"{label} {entry['ratios'][k]} (rounds {entry['ratio_rounds'][k]})" for k, label in keys.items())
    print(f"    {variants[0]}/{variants[1]}: {ratios}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sections 8-11's flags (``bench/run.py`` has them too)."""
    env = os.environ.get
    parser.add_argument("--pool-lines", default=env("XLT_BENCH_POOL_LINES"),
                        help=f"section 8: lines of the WikiMatrix file (default {DEFAULTS['pool_lines']}; "
                             "$XLT_BENCH_POOL_LINES); none skips it")
    parser.add_argument("--pool-size", default=env("XLT_BENCH_POOL_SIZE"),
                        help=f"section 8: corpus.pool_size (default {DEFAULTS['pool_size']}; $XLT_BENCH_POOL_SIZE)")
    parser.add_argument("--examples-sizes", default=env("XLT_BENCH_EXAMPLES_SIZES"),
                        help=f"section 9: comma-separated sample sizes (default {DEFAULTS['examples']}; "
                             "$XLT_BENCH_EXAMPLES_SIZES); none skips it")
    parser.add_argument("--cache-sentences", default=env("XLT_BENCH_CACHE_SENTENCES"),
                        help=f"section 10: sentences cached (default {DEFAULTS['cache']}; $XLT_BENCH_CACHE_SENTENCES); "
                             "none skips it")
    parser.add_argument("--report-jobs", default=env("XLT_BENCH_REPORT_JOBS"),
                        help=f"section 11: jobs of the sweep (default {DEFAULTS['report']}; $XLT_BENCH_REPORT_JOBS); "
                             "none skips it")
    parser.add_argument("--scale-rounds", type=int, default=2, help="sections 8, 9, 11: alternating rounds")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--data-dir", default=os.environ.get("XLT_DATA_DIR", str(REPO.parent / "shared" / "data")),
                        help="the shared data folder (default: $XLT_DATA_DIR or ../shared/data)")
    parser.add_argument("--out", default=None, help="also write the JSON results here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, rest = args.child[0], args.child[1:]
        if kind == "read":
            result = child_read(rest[0], int(rest[1]))
        elif kind == "job":
            result = child_job(rest[0], rest[1], int(rest[2]))
        elif kind == "examples":
            result = child_examples(rest[0], int(rest[1]), rest[2])
        elif kind == "cache":
            result = child_cache(int(rest[0]), rest[1])
        elif kind == "sweep":
            result = {"jobs": write_sweep(Path(rest[0]), int(rest[1]))}
        else:
            result = child_report(rest[0], rest[1])
        print(json.dumps(result))
        return
    result = bench_scale(args)
    print_scale(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
