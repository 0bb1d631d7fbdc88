"""``xlt-report``: turn a sweep's job directories into the paper's tables.

Three steps, one module each:

1. ``collect`` finds every job directory below the given DIRs (finished,
   failed, and killed ones without results.json) and reads them through the
   results.json contract (``xlt.results``) into one long table;
2. ``summarise`` groups it into cells by every config value that differs
   among the runs (a swept ``task.lr`` is a row label, never merged), with
   mean ± std over seeds, missing seeds and significance markers;
3. ``render`` writes ``report.md``, ``report.tex`` and ``report.csv``.

A sweep is read while it runs and after parts of it crashed, so nothing here
may crash on a missing or failed job: gaps are printed with the number of
missing seeds, failed and killed jobs are listed, unreadable files are
skipped with a warning.  Bad input (no such DIR, an unknown ``--metric``)
is one line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from xlt.artifacts import atomic_write_text
from xlt.errors import XltError
from xlt.report.collect import check_dirs, collect
from xlt.report.render import MIXED_MARK, build_tables, render_csv, render_latex, render_markdown
from xlt.report.summarise import DEFAULT_MARKERS, Marker, summarise

log = logging.getLogger("xlt.report")

__all__ = ["MIXED_MARK", "Marker", "build_tables", "collect", "main", "run", "summarise"]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="xlt-report",
        description="Summarise xlt job directories below DIR into report.md, report.tex, report.csv.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="multirun/ or outputs/ directories to read")
    parser.add_argument("--out", help="where to write the reports (default: the first DIR)")
    parser.add_argument("--metric", action="append", metavar="METRIC",
                        help="metric(s) to tabulate (repeatable; default: each task's headline metrics, "
                             "e.g. accuracy, NER f1, QA f1 and exact_match)")
    parser.add_argument("--marker", action="append", metavar="SYMBOL=MODE:ALPHA",
                        help="significance marker: SYMBOL when p < ALPHA against the same settings in MODE "
                             "(repeatable; default: the paper's '*=original:0.05' and '**=adjusted:0.05')")
    parser.add_argument("--permutations", type=int, default=1000,
                        help="randomization iterations for permutation tests (NER, retrieval; default 1000)")
    parser.add_argument("--no-significance", action="store_true", help="skip significance tests (faster)")
    return parser.parse_args(argv)


def check_metrics(jobs: pd.DataFrame, metrics: Sequence[str] | None) -> None:
    """An unknown ``--metric`` is an error naming the metrics the jobs have."""
    available = sorted(set(jobs["metric"].dropna()))
    unknown = [m for m in metrics or [] if m not in available]
    if unknown:
        raise XltError(f"unknown metric {', '.join(map(repr, unknown))}; available: {', '.join(available) or 'none'}")


def check_markers(jobs: pd.DataFrame, markers: Sequence[Marker], dirs: Sequence[str]) -> None:
    """A marker's MODE must be a mode: one of ``conf/mode/`` or of a job read
    (a misspelt ``orignal`` tested nothing and read as "nothing significant").
    A mode that no job read has is a warning: no cell can get that marker."""
    from xlt.config import group_options

    seen = set(jobs["mode"].dropna().astype(str))
    known = sorted(set(group_options("mode")) | seen)
    for marker in markers:
        if marker.baseline not in known:
            raise XltError(f"--marker '{marker.text}': unknown mode '{marker.baseline}'; valid: {', '.join(known)}")
        if marker.baseline not in seen:
            log.warning("--marker '%s': no job under %s has mode=%s, so no cell gets %s",
                        marker.text, ", ".join(dirs), marker.baseline, marker.symbol)


def run(dirs: Sequence[str], out: str, metrics: Sequence[str] | None = None, iterations: int = 1000,
        significance: bool = True, markers: Sequence[Marker] = DEFAULT_MARKERS) -> str:
    """Collect, summarise and write the three reports; returns the markdown."""
    if iterations < 1:
        raise XltError(f"--permutations must be at least 1, got {iterations} (the randomization tests need "
                       "permutations; --no-significance skips every test)")
    check_dirs(dirs)
    jobs = collect(dirs)
    if jobs.empty:
        raise XltError(f"no readable job directory under {', '.join(dirs)}")
    check_metrics(jobs, metrics)
    if markers is not DEFAULT_MARKERS:  # the defaults: a folder without adjusted jobs is no news
        check_markers(jobs, markers, dirs)
    summary = summarise(jobs, iterations=iterations, significance_tests=significance, markers=tuple(markers))
    markdown = render_markdown(summary, jobs, metrics)
    try:
        atomic_write_text(Path(out) / "report.md", markdown)
        atomic_write_text(Path(out) / "report.tex", render_latex(summary, jobs, metrics))
        atomic_write_text(Path(out) / "report.csv", render_csv(summary))
    except OSError as err:
        raise XltError(f"cannot write reports to {out}: {err}") from err
    return markdown


def main(argv: Sequence[str] | None = None) -> int:
    """``xlt-report DIR... [--out DIR] [--metric M] [--marker S=MODE:P]``: exit 0, or 2 with one line on stderr."""
    args = _parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="xlt-report: warning: %(message)s")
    try:
        markers = tuple(Marker.parse(m) for m in args.marker) if args.marker else DEFAULT_MARKERS
        markdown = run(args.dirs, args.out or args.dirs[0], args.metric, args.permutations,
                       not args.no_significance, markers)
    except XltError as err:
        print(f"xlt-report: error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(markdown)
    return 0
