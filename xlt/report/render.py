"""Tables laid out like the paper, written as report.md, report.tex, report.csv.

One table per task, evaluation family and metric (the task's headline
metrics unless ``--metric`` says otherwise), titled by the task
(``task.title``: "XNLI", or a preset's "Table 2: XNLI ..."), and one table
of gains over the original model per swept axis (corpus size, aggregation,
tokens, or any other swept config value, e.g. ``task.lr``).  Rows are
configurations labelled by what distinguishes them, columns the eval sets'
languages.  Every metric is a fraction in results.json and report.csv and
is shown in % here.  report.csv is the full summary (one row per cell),
loadable with ``pandas.read_csv``.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from xlt import results
from xlt.report.collect import AXES
from xlt.report.summarise import DEFAULT_MARKERS, describe, sort_key

PERCENT = 100.0  # metrics are fractions; tables show them in %
METRIC_NAMES = {"accuracy": "accuracy", "f1": "F1", "exact_match": "EM"}
MIXED_MARK = "†"



@dataclass
class Cell:
    """What one table cell shows; ``mean`` None is a gap."""

    mean: float | None = None
    std: float | None = None
    marker: str = ""
    missing: int = 0
    expected: int = 0
    mixed: bool = False


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[tuple[str, list[Cell]]]
    gains: bool = False



def _split_eval_set(eval_set: str) -> tuple[str, str]:
    """``xnli_mixed_premise.ru`` → (``xnli_mixed_premise``, ``ru``)."""
    family, _, column = str(eval_set).partition(".")
    return family, column or family


def _column_order(columns: Iterable[str]) -> list[str]:
    """Plain languages first, then cross-lingual pairs (``q-ru.c-en``); numbers
    in natural order (retrieval layers ``L2`` before ``L10``)."""
    return sorted(set(columns), key=lambda c: ("-" in c or "." in c, _natural(c)))


def _natural(text: str) -> tuple:
    """``en-ru.L10`` → ``("en-ru.l", 10, "")``: digit runs compare as numbers."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text))


def row_keys(summary: pd.DataFrame) -> list[str]:
    """What tells table rows apart: model, mode, the adjustment axes and every swept config value."""
    return ["model", "mode", *AXES, *summary.attrs.get("axes", [])]


def _config_rows(frame: pd.DataFrame, keys: list[str], ranks: dict[str, int]) -> list[tuple]:
    """Distinct (model, mode, axes…) rows in paper order."""
    configs = frame[keys].drop_duplicates()
    configs = configs.sort_values(by=keys, key=sort_key(ranks), kind="stable")
    return [tuple(r) for r in configs.itertuples(index=False)]


def _row_label(config: tuple, keys: list[str], models: int, varying: Sequence[str], first: str | None = None) -> str:
    """``model / mode (axis=value, …)``; only what distinguishes rows is printed."""
    named = dict(zip(keys, config))
    axes = [a for a in ([first] if first else []) + [a for a in varying if a != first] if a]
    label = named["mode"] + (f" ({', '.join(f'{a}={named[a]}' for a in axes)})" if axes else "")
    return f"{named['model']} / {label}" if models > 1 else label


def build_tables(summary: pd.DataFrame, metrics: Sequence[str] | None = None) -> list[Table]:
    """Main tables per (task, eval family, metric), then sweep tables of gains per varying axis."""
    if summary.empty:
        return []
    frame = summary.assign(
        family=summary["eval_set"].map(lambda e: _split_eval_set(e)[0]),
        column=summary["eval_set"].map(lambda e: _split_eval_set(e)[1]),
    )
    keys = row_keys(summary)
    titles, headlines = summary.attrs.get("titles", {}), summary.attrs.get("headlines", {})
    ranks = summary.attrs.get("mode_ranks", {})
    main, sweeps = [], []
    for (task, family), fam in frame.groupby(["task", "family"], sort=True):
        wanted = list(metrics or headlines.get(task) or sorted(set(fam["metric"])))
        for metric in [m for m in wanted if m in set(fam["metric"])]:
            part = fam[fam["metric"] == metric]
            name = f"{titles.get(task) or task} — {family} {METRIC_NAMES.get(metric, metric)}"
            main.append(_main_table(part, keys, name, ranks))
            sweeps.extend(_sweep_tables(part, keys, name, ranks))
    return main + sorted(sweeps, key=lambda t: t.title)


def _varying(rows: pd.DataFrame, keys: list[str]) -> list[str]:
    """The label keys (after model and mode) with more than one value among ``rows``."""
    return [a for a in keys[2:] if rows[a].nunique() > 1]


def _main_table(part: pd.DataFrame, keys: list[str], title: str, ranks: dict[str, int]) -> Table:
    columns = _column_order(part["column"])
    varying = _varying(part[part["mode"] != "original"], keys)
    originals_vary = _varying(part[part["mode"] == "original"], keys)
    models = part["model"].nunique()
    rows = []
    for config in _config_rows(part, keys, ranks):
        axes = originals_vary if config[1] == "original" else varying
        cells = [_cell(part, keys, config, column, gain=False) for column in columns]
        rows.append((_row_label(config, keys, models, axes), cells))
    return Table(title, columns, rows)


def _sweep_tables(part: pd.DataFrame, keys: list[str], name: str, ranks: dict[str, int]) -> list[Table]:
    """One table per swept value (the paper's Tables 5–7: size, aggregation,
    tokens): the gain over the original by value."""
    tables = []
    columns = _column_order(part["column"])
    adjusted = part[part["mode"] != "original"]
    models = part["model"].nunique()
    varying = _varying(adjusted, keys)
    for axis in varying:
        rows = [(_row_label(c, keys, models, varying, first=axis),
                 [_cell(part, keys, c, col, gain=True) for col in columns])
                for c in _config_rows(adjusted, keys, ranks)]
        tables.append(Table(f"{name}: gain over original by {axis}", columns, rows, gains=True))
    return tables


def _cell(part: pd.DataFrame, keys: list[str], config: tuple, column: str, gain: bool) -> Cell:
    """The table cell of one configuration row and eval-set column (a gap when absent)."""
    named = dict(zip(keys, config))
    mask = part["column"] == column
    for key, value in named.items():
        mask &= part[key] == value
    hit = part[mask]
    if hit.empty:
        return _gap(part, named, column)
    row = hit.iloc[0]
    value = row["gain"] if gain else row["mean"]
    if row["n_seeds"] == 0 or pd.isna(value):
        return Cell(missing=int(row["expected_seeds"]) if row["n_seeds"] == 0 else int(row["missing_seeds"]),
                    expected=int(row["expected_seeds"]))
    return Cell(
        mean=float(value),
        std=None if gain or pd.isna(row["std"]) else float(row["std"]),
        marker=str(row["marker"]) if row["mode"] != "original" else "",
        missing=int(row["missing_seeds"]),
        expected=int(row["expected_seeds"]),
        mixed=bool(row["mixed_provenance"]),
    )


def _gap(part: pd.DataFrame, named: dict[str, Any], column: str) -> Cell:
    """A cell with no job at all: all seeds of the comparable original cell are missing."""
    base = part[(part["column"] == column) & (part["model"] == named["model"]) & (part["mode"] == "original")]
    expected = int(base["expected_seeds"].max()) if not base.empty else 0
    return Cell(missing=expected, expected=expected)


# ---- writers -------------------------------------------------------------------


def format_cell(cell: Cell, gain: bool, latex: bool = False) -> str:
    """``71.2 ± 0.8**``, ``+1.3*`` or ``— (2/5 missing)`` (in %); ``†`` for mixed provenance."""
    missing = f" ({cell.missing}/{cell.expected} missing)" if cell.missing else ""
    if cell.mean is None:
        return ("---" if latex else "—") + missing
    value = cell.mean * PERCENT
    text = f"{value:+.1f}" if gain else f"{value:.1f}"
    if cell.std is not None:
        text += (" $\\pm$ " if latex else " ± ") + f"{cell.std * PERCENT:.1f}"
    if cell.marker:
        text += f"$^{{{cell.marker}}}$" if latex else cell.marker
    if cell.mixed:
        text += "$^\\dagger$" if latex else MIXED_MARK
    return text + missing


def _jobs_with(jobs: pd.DataFrame, killed: bool) -> pd.DataFrame:
    """Failed (or, with ``killed``, killed/incomplete) jobs, one row each."""
    bad = jobs[jobs["status"] == results.KILLED] if killed else jobs[~jobs["status"].isin([results.OK, results.KILLED])]
    return bad.drop_duplicates(subset=["run_dir"]).sort_values(["task", "model", "lang", "mode", "seed"])


def legend(summary: pd.DataFrame, latex: bool = False) -> str:
    """What the markers mean, from the markers the summary was computed with."""
    markers = summary.attrs.get("markers", DEFAULT_MARKERS)
    if latex:
        return "; ".join(f"$^{{{_tex(m.symbol)}}}$ p $<$ {m.alpha:g} vs.\\ {_tex(m.baseline)}" for m in markers)
    return "; ".join(m.describe() for m in markers)


def _job_list(title: str, jobs: pd.DataFrame) -> str:
    lines = [f"## {title} ({len(jobs)})", "", *([] if len(jobs) else ["none"])]
    lines += [f"- {describe(row)} seed {row['seed']} [{row['status']}]: {row['error'] or '?'} (`{row['run_dir']}`)"
              for _, row in jobs.iterrows()]
    return "\n".join(lines) + "\n"


def _provenance(jobs: pd.DataFrame) -> pd.DataFrame:
    """One row per config hash: what it is, its seeds, code versions, data
    checksums, the hub commits its jobs loaded (two commits under one hash:
    the repository moved between seeds, and the tables split the cell) and
    the environments they ran in (``xlt.environment``: not identity)."""
    runs = jobs.drop_duplicates(subset=["run_dir"])
    revisions = sorted(c for c in runs.columns if str(c).startswith(results.REVISION_COLUMN))
    runs = runs.assign(ok_seed=runs["seed"].where(runs["status"] == "ok"),
                       failed_seed=runs["seed"].where(runs["status"] != "ok"),
                       hub_commits=[_hub_commits(row, revisions) for _, row in runs.iterrows()])
    grouped = runs.groupby("config_hash", sort=True, dropna=False)
    return grouped.agg(
        task=("task", "first"), model=("model", "first"), lang=("lang", "first"), mode=("mode", "first"),
        seeds=("ok_seed", _join_seeds), failed_seeds=("failed_seed", _join_seeds),
        code_versions=("code_version", lambda s: ", ".join(sorted(set(s)))),
        # "; " as between hub commits: a "|", even inside a code span, splits a GitHub table cell
        data_checksums=("data_checksums", lambda s: "; ".join(sorted(set(s)))),
        hub_commits=("hub_commits", lambda s: "; ".join(sorted(set(s) - {""}))),
        environments=("environment", lambda s: " · ".join(sorted(set(s.fillna("")) - {""}))),
    ).reset_index()


def _hub_commits(run: pd.Series, columns: list[str]) -> str:
    """``model:bert-base-multilingual-cased@1a2b3c4d5e6f, ...``: what one job loaded."""
    return ", ".join(f"{c[len(results.REVISION_COLUMN):]}@{run[c][:12]}" for c in columns if isinstance(run[c], str))


def _join_seeds(seeds: pd.Series) -> str:
    return ",".join(str(int(x)) for x in sorted(set(seeds.dropna())))


def _checksum_conflicts(jobs: pd.DataFrame) -> dict[str, set[str]]:
    """Data files read with more than one checksum anywhere in the sweep."""
    seen: dict[str, set[str]] = {}
    for blob in set(jobs["data_checksums"].dropna()):
        for name, digest in json.loads(blob).items():
            seen.setdefault(name, set()).add(str(digest))
    return seen


def report_warnings(summary: pd.DataFrame) -> list[str]:
    """Lines that must be read before trusting the numbers."""
    lines = list(summary.attrs.get("warnings", []))
    for _, row in summary[summary["mixed_provenance"].astype(bool)].iterrows():
        lines.append(
            f"{MIXED_MARK} {row['task']} {row['eval_set']} {row['model']} {row['mode']} ({row['metric']}) mixes "
            f"code versions [{row['code_versions']}] / data checksums [{row['data_checksums']}]"
        )
    return lines


def skipped_set_warnings(jobs: pd.DataFrame) -> list[str]:
    """One line per evaluation set (task, set, language) that finished jobs
    skipped (``data.skip_missing_eval``: its file is missing), naming them by
    cell and seeds and saying why: a set skipped by every seed would
    otherwise just be absent from the tables."""
    runs = jobs[jobs["status"] == results.OK].drop_duplicates(subset=["run_dir"])
    runs = runs.sort_values(["model", "mode_rank", "mode", "seed"], kind="stable")
    skipped: dict[tuple[str, str, str], list[tuple[Any, str]]] = {}
    for _, row in runs.iterrows():
        text = row["skipped_eval_sets"]
        for name, why in (json.loads(text) if isinstance(text, str) and text else {}).items():
            skipped.setdefault((row["task"], name, row["lang"]), []).append((row, str(why)))
    lines = []
    for (task, name, lang), found in sorted(skipped.items()):
        seeds: dict[str, set[int]] = {}
        for row, _ in found:
            seeds.setdefault(describe(row), set()).add(int(row["seed"]))
        who = "; ".join(f"{cell} seed{'s' * (len(s) > 1)} {','.join(map(str, sorted(s)))}" for cell, s in seeds.items())
        reasons = " | ".join(dict.fromkeys(why for _, why in found))
        lines.append(f"evaluation set {name} ({task}, {lang}) was skipped by {len(found)} job(s) ({who}), "
                     f"so it is missing from their cells: {reasons}")
    return lines


def all_warnings(summary: pd.DataFrame, jobs: pd.DataFrame) -> list[str]:
    """Every warning of a report: the summary's, metric values that are not
    numbers, skipped evaluation sets."""
    return report_warnings(summary) + jobs.attrs.get("bad_metrics", []) + skipped_set_warnings(jobs)


def render_markdown(summary: pd.DataFrame, jobs: pd.DataFrame, metrics: Sequence[str] | None = None) -> str:
    """The human-readable report: tables, warnings, failed jobs, provenance."""
    out = io.StringIO()
    ok_runs = jobs[jobs["status"] == results.OK]["run_dir"].nunique()
    failed, killed = _jobs_with(jobs, killed=False), _jobs_with(jobs, killed=True)
    out.write("# xlt report\n\n")
    out.write(f"{ok_runs + len(failed) + len(killed)} jobs read: {ok_runs} ok, {len(failed)} failed, "
              f"{len(killed)} killed/incomplete. "
              "Cells: mean ± std over seeds (std: sample, ddof=1), every metric in %. "
              f"Significance on common seeds, against the same settings in the baseline mode: {legend(summary)} "
              "(each task's own test: paired t-test over examples, NER approximate randomization, retrieval "
              "sign-flip permutation; see xlt.evaluation.significance). "
              f"{MIXED_MARK}: seeds from different code versions or data.\n\n")
    warnings = all_warnings(summary, jobs)
    if warnings:
        out.write("## Warnings\n\n" + "".join(f"- WARNING: {w}\n" for w in warnings) + "\n")
    for table in build_tables(summary, metrics):
        out.write(_markdown_table(table))
    out.write(_job_list("Failed jobs", failed) + "\n" + _job_list("Killed or incomplete jobs", killed))
    skipped = jobs.attrs.get("skipped", [])
    if skipped:
        out.write(f"\n## Skipped files ({len(skipped)})\n\n" + "".join(f"- {s}\n" for s in skipped))
    out.write("\n" + _markdown_provenance(jobs))
    return out.getvalue()


def _markdown_table(table: Table) -> str:
    lines = [f"## {table.title}", "", "| | " + " | ".join(table.columns) + " |",
             "|---|" + "---|" * len(table.columns)]
    for label, cells in table.rows:
        lines.append(f"| {label} | " + " | ".join(format_cell(c, table.gains) for c in cells) + " |")
    return "\n".join(lines) + "\n\n"


def _markdown_provenance(jobs: pd.DataFrame) -> str:
    lines = ["## Provenance", "",
             "| config hash | task | model | lang | mode | seeds | failed seeds | code versions | data checksums "
             "| hub commits | environments |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, row in _provenance(jobs).iterrows():
        lines.append(f"| {row['config_hash']} | {row['task']} | {row['model']} | {row['lang']} | {row['mode']} "
                     f"| {row['seeds']} | {row['failed_seeds']} | {row['code_versions']} | `{row['data_checksums']}` "
                     f"| {row['hub_commits']} | {row['environments']} |")
    conflicts = {k: v for k, v in _checksum_conflicts(jobs).items() if len(v) > 1}
    for name, digests in sorted(conflicts.items()):
        lines.append(f"\nWARNING: data file {name} was read with different checksums: {', '.join(sorted(digests))}")
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text)).replace("—", "---").replace("±", "$\\pm$")


def render_latex(summary: pd.DataFrame, jobs: pd.DataFrame, metrics: Sequence[str] | None = None) -> str:
    """Booktabs tables for the paper; warnings as LaTeX comments so they stay visible in the source."""
    out = io.StringIO()
    out.write("% xlt report (requires \\usepackage{booktabs})\n")
    for warning in all_warnings(summary, jobs):
        out.write(f"% WARNING: {warning}\n")
    for table in build_tables(summary, metrics):
        out.write("\n\\begin{table}[t]\n\\centering\n")
        out.write("\\begin{tabular}{l" + "r" * len(table.columns) + "}\n\\toprule\n")
        out.write(" & " + " & ".join(_tex(c) for c in table.columns) + " \\\\\n\\midrule\n")
        for label, cells in table.rows:
            out.write(_tex(label) + " & " + " & ".join(format_cell(c, table.gains, latex=True) for c in cells)
                      + " \\\\\n")
        out.write("\\bottomrule\n\\end{tabular}\n")
        out.write(f"\\caption{{{_tex(table.title)}. {legend(summary, latex=True)}; "
                  "$^\\dagger$ mixed code versions or data.}\n\\end{table}\n")
    return out.getvalue()


def render_csv(summary: pd.DataFrame) -> str:
    """The full summary, one row per cell × metric, raw values (no %, no rounding)."""
    return summary.to_csv(index=False)
