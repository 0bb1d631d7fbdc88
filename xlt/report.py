"""``xlt-report``: turn a sweep's run directories into the paper's tables.

Every job writes ``results.json`` (config, metrics per eval set, status) and
``predictions/<eval set>.jsonl``.  This module

1. ``collect``s them into one long table (job × eval set × metric),
2. ``summarize``s it per *cell* — (task, eval set, lang, model, mode, corpus,
   size, aggregation, tokens, aligner, metric) — as mean ± std over seeds,
   counting missing seeds and testing significance against ``mode=original``
   on the seeds both have (see ``xlt.evaluation.significance``),
3. writes ``report.md``, ``report.tex`` and ``report.csv`` laid out like the
   paper: XNLI / mixed XNLI (Table 2), NER F1 (Table 3), QA F1 and EM (Table
   4), and sweeps over size / aggregation / tokens (Tables 5–7) as gains over
   the original model.

A sweep is read while it runs and after parts of it crashed, so nothing here
may crash on a missing or failed job: gaps are printed with the number of
missing seeds, failed jobs are listed, unreadable files are skipped with a
warning.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xlt.artifacts import atomic_write_text
from xlt.errors import XltError

log = logging.getLogger(__name__)

AXES = ("corpus", "size", "aggregation", "tokens", "aligner")
CONFIG_KEYS = ("task", "model", "lang", "mode", *AXES)
CELL = ("task", "eval_set", "lang", "model", "mode", *AXES, "metric")
BASELINE_MATCH = ("task", "eval_set", "lang", "model", "metric")
JOB_COLUMNS = (
    *CONFIG_KEYS, "seed", "eval_set", "metric", "value", "n", "status", "error",
    "config_hash", "code_version", "data_checksums", "runtime_s", "run_dir",
)
MODE_ORDER = {"original": 0, "adjusted": 1, "continual": 2}
# Per-example field of a prediction record that averages to each metric.
SCORE_KEYS = {"accuracy": "correct", "f1": "f1", "exact_match": "em"}
DEFAULT_METRICS = ("accuracy", "f1", "exact_match")
SWEEP_TABLES = {"size": 5, "aggregation": 6, "tokens": 7}
METRIC_NAMES = {"accuracy": "accuracy", "f1": "F1", "exact_match": "EM"}
MIXED_MARK = "†"


# ---- collect -------------------------------------------------------------------


def collect(dirs: Iterable[str | Path]) -> pd.DataFrame:
    """One row per job × eval set × metric, read from every ``results.json`` below ``dirs``.

    A failed job (or one with no metrics) contributes one row with no eval
    set, so it can be counted and listed.  Unreadable or malformed files are
    skipped with a warning and listed in ``df.attrs["skipped"]``.
    """
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for directory in dirs:
        for path in sorted(Path(directory).rglob("results.json")):
            try:
                rows.extend(_job_rows(path))
            except (OSError, ValueError, TypeError, KeyError) as err:
                log.warning("skipping %s: %s", path, err)
                skipped.append(f"{path}: {err}")
    df = pd.DataFrame(rows, columns=list(JOB_COLUMNS))
    df.attrs["skipped"] = skipped
    return df


def _job_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of one job; raises ValueError/TypeError/KeyError on a malformed file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ValueError("no 'config' object")
    cfg = data["config"]
    if "seed" not in cfg:
        raise KeyError("config has no 'seed'")
    base = {key: "" if cfg.get(key) is None else str(cfg[key]) for key in CONFIG_KEYS}
    base.update(
        seed=int(cfg["seed"]),
        status=str(data.get("status", "ok")),
        error=str(data.get("error", "") or ""),
        config_hash=str(cfg.get("config_hash", "")),
        code_version=str(cfg.get("code_version", "")),
        data_checksums=json.dumps(cfg.get("data_checksums") or {}, sort_keys=True),
        runtime_s=data.get("runtime_s"),
        run_dir=str(path.parent),
    )
    rows = [] if base["status"] != "ok" else list(_metric_rows(base, data.get("metrics") or {}))
    if not rows:
        if base["status"] == "ok":
            base.update(status="empty", error="results.json has no metrics")
        rows = [{**base, "eval_set": None, "metric": None, "value": math.nan, "n": None}]
    return rows


def _metric_rows(base: dict[str, Any], metrics: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """One row per numeric metric of each eval set (``n`` rides along as a column)."""
    if not isinstance(metrics, dict):
        raise TypeError("'metrics' is not an object")
    for eval_set, values in metrics.items():
        if not isinstance(values, dict):
            continue
        for metric, value in values.items():
            if metric != "n" and isinstance(value, (int, float)) and not isinstance(value, bool):
                yield {**base, "eval_set": eval_set, "metric": metric, "value": float(value), "n": values.get("n")}


# ---- summarize -----------------------------------------------------------------


class _Predictions:
    """Reads ``predictions/<eval set>.jsonl`` once per run (cells share baselines)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], list[dict[str, Any]] | None] = {}

    def get(self, run_dir: str, eval_set: str) -> list[dict[str, Any]] | None:
        key = (run_dir, eval_set)
        if key not in self._cache:
            self._cache[key] = self._read(Path(run_dir) / "predictions" / f"{eval_set}.jsonl")
        return self._cache[key]

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]] | None:
        if not path.is_file():
            return None
        try:
            with path.open(encoding="utf-8") as handle:
                return [json.loads(line) for line in handle if line.strip()]
        except (OSError, ValueError) as err:
            log.warning("unreadable predictions %s: %s", path, err)
            return None


def summarize(df: pd.DataFrame, iterations: int = 1000, significance: bool = True) -> pd.DataFrame:
    """Mean ± std over seeds per cell, missing seeds, and p-value vs ``mode=original``.

    * ``std`` is the sample std (ddof=1); NaN for a single seed.
    * ``expected_seeds`` = seeds seen in this cell or its original baseline
      (failed jobs included), so a seed that crashed or never ran counts as
      missing; ``missing_seeds`` = expected − seeds with a result.
    * ``p_value`` compares per-example predictions on the seeds both cells
      have (``sig_seeds``); NaN when predictions are missing.
    * ``mixed_provenance``: the cell's seeds come from different code versions
      or data checksums, so its mean may not be one experiment.
    """
    warnings: list[str] = []
    cells = _with_failed_cells(df)
    cells = _dedupe_seeds(cells, warnings)
    groups = {key: group for key, group in cells.groupby(list(CELL), sort=False, dropna=False)}
    baselines = _baseline_index(groups)
    predictions = _Predictions()
    rows = []
    for key, group in groups.items():
        cell = dict(zip(CELL, key))
        base_key = _pick_baseline(cell, baselines, groups, warnings)
        base = groups[base_key] if base_key is not None else None
        rows.append(_summary_row(cell, group, base, predictions, iterations if significance else 0))
    summary = pd.DataFrame(rows, columns=list(CELL) + list(_SUMMARY_COLUMNS))
    summary = summary.sort_values(by=list(CELL), key=_sort_key, kind="stable").reset_index(drop=True)
    summary.attrs["warnings"] = warnings
    return summary


_SUMMARY_COLUMNS = (
    "mean", "std", "n_seeds", "expected_seeds", "missing_seeds", "seeds", "failed",
    "baseline_mean", "gain", "p_value", "marker", "sig_seeds",
    "code_versions", "data_checksums", "config_hashes", "mixed_provenance",
)


def _with_failed_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Give failed jobs the (eval set, metric) pairs their task and language have.

    A failed job wrote no metrics, but its seed still belongs to the cells it
    would have filled; without this it would silently vanish from the counts.
    """
    ok = df[(df["status"] == "ok") & df["eval_set"].notna()]
    failed = df[df["status"] != "ok"]
    if failed.empty:
        return ok
    targets = ok[["task", "lang", "eval_set", "metric"]].drop_duplicates()
    expanded = failed.drop(columns=["eval_set", "metric"]).merge(targets, on=["task", "lang"], how="inner")
    return pd.concat([ok, expanded[list(JOB_COLUMNS)]], ignore_index=True)


def _dedupe_seeds(cells: pd.DataFrame, warnings: list[str]) -> pd.DataFrame:
    """Keep one result per cell and seed (a rerun must not count twice).

    An ``ok`` result wins over a failed attempt; among ok results the last
    run directory in sort order (usually the newest) wins, with a warning.
    """
    cells = cells.assign(_ok=cells["status"] == "ok").sort_values(["_ok", "run_dir"], kind="stable")
    dup = cells[cells["_ok"]].duplicated(subset=[*CELL, "seed"], keep="last")
    for _, row in cells[cells["_ok"]][dup].drop_duplicates(subset=[*CONFIG_KEYS, "seed"]).iterrows():
        warnings.append(f"duplicate results for {_describe(row)} seed {row['seed']}: kept the last run directory")
    return cells.drop_duplicates(subset=[*CELL, "seed"], keep="last").drop(columns="_ok")


def _baseline_index(groups: dict[tuple, pd.DataFrame]) -> dict[tuple, list[tuple]]:
    """Original-mode cells by (task, eval set, lang, model, metric)."""
    index: dict[tuple, list[tuple]] = {}
    for key in groups:
        cell = dict(zip(CELL, key))
        if cell["mode"] == "original":
            index.setdefault(tuple(cell[k] for k in BASELINE_MATCH), []).append(key)
    return index


def _pick_baseline(
    cell: dict[str, Any], index: dict[tuple, list[tuple]], groups: dict[tuple, pd.DataFrame], warnings: list[str]
) -> tuple | None:
    """The original cell to compare with.

    The adjustment axes (corpus, size, ...) do not affect an original model,
    so any original cell of the same task/eval set/lang/model qualifies; one
    with identical axes is preferred, else the one with the most seeds.
    """
    candidates = index.get(tuple(cell[k] for k in BASELINE_MATCH), [])
    if not candidates:
        return None
    same = [k for k in candidates if all(dict(zip(CELL, k))[a] == cell[a] for a in AXES)]
    if same:
        return same[0]
    best = max(candidates, key=lambda k: _ok_seeds(groups[k]).size)
    if len(candidates) > 1 and cell["mode"] != "original":
        warnings.append(f"several original cells for {cell['task']} {cell['eval_set']} {cell['model']}: "
                        "compared with the one with most seeds")
    return best


def _ok_seeds(group: pd.DataFrame) -> np.ndarray:
    return np.unique(group.loc[group["status"] == "ok", "seed"].to_numpy())


def _summary_row(
    cell: dict[str, Any], group: pd.DataFrame, base: pd.DataFrame | None, predictions: _Predictions, iterations: int
) -> dict[str, Any]:
    """Statistics of one cell (see ``summarize``)."""
    ok = group[group["status"] == "ok"]
    values = ok["value"].astype(float)
    seeds = set(int(s) for s in ok["seed"])
    expected = set(int(s) for s in group["seed"])
    baseline_mean, p_value, sig_seeds = math.nan, math.nan, 0
    if base is not None:
        expected |= set(int(s) for s in base["seed"])
        base_ok = base[base["status"] == "ok"]
        baseline_mean = float(base_ok["value"].mean()) if len(base_ok) else math.nan
        if cell["mode"] != "original" and iterations > 0:
            p_value, sig_seeds = _significance(cell, ok, base_ok, predictions, iterations)
    versions = sorted(set(ok["code_version"]))
    checksums = sorted(set(ok["data_checksums"]))
    mean = float(values.mean()) if len(values) else math.nan
    return {
        **cell,
        "mean": mean,
        "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
        "n_seeds": len(seeds),
        "expected_seeds": len(expected),
        "missing_seeds": len(expected - seeds),
        "seeds": ",".join(str(s) for s in sorted(seeds)),
        "failed": int((group["status"] != "ok").sum()),
        "baseline_mean": baseline_mean,
        "gain": mean - baseline_mean,
        "p_value": p_value,
        "marker": _marker(p_value),
        "sig_seeds": sig_seeds,
        "code_versions": ";".join(versions),
        "data_checksums": ";".join(checksums),
        "config_hashes": ";".join(sorted(set(ok["config_hash"]))),
        "mixed_provenance": len(versions) > 1 or len(checksums) > 1,
    }


def _marker(p: float) -> str:
    from xlt.evaluation.significance import marker

    return marker(p)


def _significance(
    cell: dict[str, Any], ok: pd.DataFrame, base_ok: pd.DataFrame, predictions: _Predictions, iterations: int
) -> tuple[float, int]:
    """p-value of the cell vs its baseline on their common seeds, and how many seeds that was."""
    runs_a = dict(zip(ok["seed"].astype(int), ok["run_dir"]))
    runs_b = dict(zip(base_ok["seed"].astype(int), base_ok["run_dir"]))
    common = sorted(set(runs_a) & set(runs_b))
    recs_a = [predictions.get(runs_a[s], cell["eval_set"]) for s in common]
    recs_b = [predictions.get(runs_b[s], cell["eval_set"]) for s in common]
    if not common or any(r is None or not r for r in recs_a + recs_b):
        return math.nan, 0
    return _test_records(cell["metric"], recs_a, recs_b, iterations), len(common)


def _test_records(metric: str, recs_a: list[list[dict]], recs_b: list[list[dict]], iterations: int) -> float:
    """t-test for per-example scores; randomization for NER (list-valued ``gold``)."""
    from xlt.evaluation import significance as sig

    first = recs_a[0][0]
    if isinstance(first.get("gold"), list):
        if metric != "f1":  # only entity F1 is recomputed under permutation
            return math.nan
        gold, pred_a, pred_b = _concat_sentences(recs_a, recs_b)
        return sig.permutation_test(gold, pred_a, pred_b, None, iterations=iterations, seed=0)
    key = SCORE_KEYS.get(metric)
    if key is None or key not in first:
        return math.nan
    return sig.paired_ttest_records(recs_a, recs_b, key)


def _concat_sentences(
    recs_a: list[list[dict]], recs_b: list[list[dict]]
) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """Seed-concatenated (gold, A, B) sentence lists, sentences matched by id within a seed."""
    gold: list[list[str]] = []
    pred_a: list[list[str]] = []
    pred_b: list[list[str]] = []
    for seed_a, seed_b in zip(recs_a, recs_b):
        by_id = {r["id"]: r for r in seed_b}
        for record in seed_a:
            other = by_id.get(record["id"])
            if other is not None:
                gold.append(record["gold"])
                pred_a.append(record["prediction"])
                pred_b.append(other["prediction"])
    return gold, pred_a, pred_b


# ---- table layout --------------------------------------------------------------


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
    # Display factor: metrics stored as fractions print in %, QA F1/EM (SQuAD
    # script) are stored in % already.
    scale: float = 100.0


def _sort_key(column: pd.Series) -> pd.Series:
    """Natural order: modes as in the paper, numbers numerically, else text."""
    if column.name == "mode":
        return column.map(lambda v: (MODE_ORDER.get(v, 9), str(v)))
    return column.map(lambda v: (0, float(v), "") if _is_number(v) else (1, 0.0, str(v)))


def _is_number(value: Any) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _split_eval_set(eval_set: str) -> tuple[str, str]:
    """``xnli_mixed_premise.ru`` → (``xnli_mixed_premise``, ``ru``)."""
    family, _, column = str(eval_set).partition(".")
    return family, column or family


def _table_number(family: str, metrics: set[str]) -> str:
    if "xnli" in family:
        return "Table 2"
    if "exact_match" in metrics:
        return "Table 4"
    return "Table 3"


def _column_order(columns: Iterable[str]) -> list[str]:
    """Plain languages first, then cross-lingual pairs (``q-ru.c-en``)."""
    return sorted(set(columns), key=lambda c: ("-" in c or "." in c, c))


def _describe(row: Any) -> str:
    return f"{row['task']}/{row['model']}/{row['lang']}/{row['mode']}"


def _config_rows(frame: pd.DataFrame) -> list[tuple]:
    """Distinct (model, mode, axes…) rows in paper order."""
    configs = frame[["model", "mode", *AXES]].drop_duplicates()
    configs = configs.sort_values(by=["model", "mode", *AXES], key=_sort_key, kind="stable")
    return [tuple(r) for r in configs.itertuples(index=False)]


def _row_label(config: tuple, models: int, varying: Sequence[str], first: str | None = None) -> str:
    """``model / mode (axis=value, …)``; only what distinguishes rows is printed."""
    named = dict(zip(["model", "mode", *AXES], config))
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
    wanted = list(metrics or DEFAULT_METRICS)
    main, sweeps = [], []
    for (task, family), fam in frame.groupby(["task", "family"], sort=True):
        number = _table_number(family, set(fam["metric"]))
        scale = 1.0 if "exact_match" in set(fam["metric"]) else 100.0
        for metric in [m for m in wanted if m in set(fam["metric"])]:
            part = fam[fam["metric"] == metric]
            name = f"{family} {METRIC_NAMES.get(metric, metric)}"
            main.append(_main_table(part, f"{number} — {name} (task {task})", scale))
            sweeps.extend(_sweep_tables(part, name, scale))
    return main + sorted(sweeps, key=lambda t: t.title)


def _varying_axes(part: pd.DataFrame) -> list[str]:
    adjusted = part[part["mode"] != "original"]
    return [a for a in AXES if adjusted[a].nunique() > 1]


def _main_table(part: pd.DataFrame, title: str, scale: float) -> Table:
    columns = _column_order(part["column"])
    varying = _varying_axes(part)
    originals_vary = [a for a in AXES if part.loc[part["mode"] == "original", a].nunique() > 1]
    models = part["model"].nunique()
    rows = []
    for config in _config_rows(part):
        axes = originals_vary if config[1] == "original" else varying
        cells = [_cell(part, config, column, gain=False) for column in columns]
        rows.append((_row_label(config, models, axes), cells))
    return Table(title, columns, rows, scale=scale)


def _sweep_tables(part: pd.DataFrame, name: str, scale: float) -> list[Table]:
    """Tables 5–7: the gain over the original for each value of a varying axis."""
    tables = []
    columns = _column_order(part["column"])
    adjusted = part[part["mode"] != "original"]
    models = part["model"].nunique()
    varying = _varying_axes(part)
    for axis in varying:
        number = f"Table {SWEEP_TABLES[axis]}" if axis in SWEEP_TABLES else "Sweep"
        rows = [(_row_label(c, models, varying, first=axis), [_cell(part, c, col, gain=True) for col in columns])
                for c in _config_rows(adjusted)]
        tables.append(Table(f"{number} — {name}: gain over original by {axis}", columns, rows, gains=True, scale=scale))
    return tables


def _cell(part: pd.DataFrame, config: tuple, column: str, gain: bool) -> Cell:
    """The table cell of one configuration row and eval-set column (a gap when absent)."""
    named = dict(zip(["model", "mode", *AXES], config))
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


def format_cell(cell: Cell, scale: float, gain: bool, latex: bool = False) -> str:
    """``71.2 ± 0.8**``, ``+1.3*`` or ``— (2/5 missing)``; ``†`` for mixed provenance."""
    missing = f" ({cell.missing}/{cell.expected} missing)" if cell.missing else ""
    if cell.mean is None:
        return ("---" if latex else "—") + missing
    value = cell.mean * scale
    text = f"{value:+.1f}" if gain else f"{value:.1f}"
    if cell.std is not None:
        text += (" $\\pm$ " if latex else " ± ") + f"{cell.std * scale:.1f}"
    if cell.marker:
        text += f"$^{{{cell.marker}}}$" if latex else cell.marker
    if cell.mixed:
        text += "$^\\dagger$" if latex else MIXED_MARK
    return text + missing


def _failed_jobs(jobs: pd.DataFrame) -> pd.DataFrame:
    failed = jobs[jobs["status"] != "ok"]
    return failed.drop_duplicates(subset=["run_dir"]).sort_values(["task", "model", "lang", "mode", "seed"])


def _provenance(jobs: pd.DataFrame) -> pd.DataFrame:
    """One row per config hash: what it is, its seeds, code versions, data checksums."""
    runs = jobs.drop_duplicates(subset=["run_dir"])
    runs = runs.assign(ok_seed=runs["seed"].where(runs["status"] == "ok"),
                       failed_seed=runs["seed"].where(runs["status"] != "ok"))
    grouped = runs.groupby("config_hash", sort=True, dropna=False)
    return grouped.agg(
        task=("task", "first"), model=("model", "first"), lang=("lang", "first"), mode=("mode", "first"),
        seeds=("ok_seed", _join_seeds), failed_seeds=("failed_seed", _join_seeds),
        code_versions=("code_version", lambda s: ", ".join(sorted(set(s)))),
        data_checksums=("data_checksums", lambda s: " | ".join(sorted(set(s)))),
    ).reset_index()


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


def render_markdown(summary: pd.DataFrame, jobs: pd.DataFrame, metrics: Sequence[str] | None = None) -> str:
    """The human-readable report: tables, warnings, failed jobs, provenance."""
    out = io.StringIO()
    ok_runs = jobs[jobs["status"] == "ok"]["run_dir"].nunique()
    failed = _failed_jobs(jobs)
    out.write("# xlt report\n\n")
    out.write(f"{ok_runs + len(failed)} jobs read: {ok_runs} ok, {len(failed)} failed. "
              "Cells: mean ± std over seeds (std: sample, ddof=1); NLI/NER in %, QA F1/EM as reported. "
              "Significance vs `mode=original` on common seeds: * p < 0.05, ** p < 0.01 "
              "(paired t-test over examples; NER: approximate randomization). "
              f"{MIXED_MARK}: seeds from different code versions or data.\n\n")
    warnings = report_warnings(summary)
    if warnings:
        out.write("## Warnings\n\n" + "".join(f"- WARNING: {w}\n" for w in warnings) + "\n")
    for table in build_tables(summary, metrics):
        out.write(_markdown_table(table))
    out.write(f"## Failed jobs ({len(failed)})\n\n" + ("" if len(failed) else "none\n"))
    for _, row in failed.iterrows():
        out.write(f"- {_describe(row)} seed {row['seed']} [{row['status']}]: {row['error'] or '?'} (`{row['run_dir']}`)\n")
    skipped = jobs.attrs.get("skipped", [])
    if skipped:
        out.write(f"\n## Skipped files ({len(skipped)})\n\n" + "".join(f"- {s}\n" for s in skipped))
    out.write("\n" + _markdown_provenance(jobs))
    return out.getvalue()


def _markdown_table(table: Table) -> str:
    lines = [f"## {table.title}", "", "| | " + " | ".join(table.columns) + " |",
             "|---|" + "---|" * len(table.columns)]
    for label, cells in table.rows:
        lines.append(f"| {label} | " + " | ".join(format_cell(c, table.scale, table.gains) for c in cells) + " |")
    return "\n".join(lines) + "\n\n"


def _markdown_provenance(jobs: pd.DataFrame) -> str:
    lines = ["## Provenance", "",
             "| config hash | task | model | lang | mode | seeds | failed seeds | code versions | data checksums |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, row in _provenance(jobs).iterrows():
        lines.append(f"| {row['config_hash']} | {row['task']} | {row['model']} | {row['lang']} | {row['mode']} "
                     f"| {row['seeds']} | {row['failed_seeds']} | {row['code_versions']} | `{row['data_checksums']}` |")
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
    for warning in report_warnings(summary):
        out.write(f"% WARNING: {warning}\n")
    for table in build_tables(summary, metrics):
        out.write("\n\\begin{table}[t]\n\\centering\n")
        out.write("\\begin{tabular}{l" + "r" * len(table.columns) + "}\n\\toprule\n")
        out.write(" & " + " & ".join(_tex(c) for c in table.columns) + " \\\\\n\\midrule\n")
        for label, cells in table.rows:
            out.write(_tex(label) + " & " + " & ".join(format_cell(c, table.scale, table.gains, latex=True) for c in cells)
                      + " \\\\\n")
        out.write("\\bottomrule\n\\end{tabular}\n")
        out.write(f"\\caption{{{_tex(table.title)}. $^*$ p<0.05, $^{{**}}$ p<0.01 vs.\\ original; "
                  "$^\\dagger$ mixed code versions or data.}\n\\end{table}\n")
    return out.getvalue()


def render_csv(summary: pd.DataFrame) -> str:
    """The full summary, one row per cell × metric, raw values (no %, no rounding)."""
    return summary.to_csv(index=False)


# ---- CLI -----------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="xlt-report",
        description="Summarise xlt job outputs (results.json below DIR) into report.md, report.tex, report.csv.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="multirun/ or outputs/ directories to read")
    parser.add_argument("--out", help="where to write the reports (default: the first DIR)")
    parser.add_argument("--metric", action="append", metavar="METRIC",
                        help="metric(s) to tabulate (repeatable; default: accuracy, f1, exact_match)")
    parser.add_argument("--permutations", type=int, default=1000,
                        help="approximate-randomization iterations for NER (default 1000)")
    parser.add_argument("--no-significance", action="store_true", help="skip significance tests (faster)")
    return parser.parse_args(argv)


def _check_dirs(dirs: Sequence[str]) -> None:
    """Each DIR must exist and contain at least one results.json (else one clear line)."""
    for directory in dirs:
        path = Path(directory)
        if not path.is_dir():
            raise XltError(f"not a directory: {directory}")
        if next(path.rglob("results.json"), None) is None:
            raise XltError(f"no results.json found under {directory}")


def run(dirs: Sequence[str], out: str, metrics: Sequence[str] | None, iterations: int, significance: bool) -> str:
    """Collect, summarise and write the three reports; returns the markdown."""
    _check_dirs(dirs)
    jobs = collect(dirs)
    if jobs.empty:
        raise XltError(f"no readable results.json under {', '.join(dirs)}")
    summary = summarize(jobs, iterations=iterations, significance=significance)
    markdown = render_markdown(summary, jobs, metrics)
    try:
        atomic_write_text(Path(out) / "report.md", markdown)
        atomic_write_text(Path(out) / "report.tex", render_latex(summary, jobs, metrics))
        atomic_write_text(Path(out) / "report.csv", render_csv(summary))
    except OSError as err:
        raise XltError(f"cannot write reports to {out}: {err}") from err
    return markdown


def main(argv: Sequence[str] | None = None) -> int:
    """``xlt-report DIR... [--out DIR] [--metric M]``: exit 0, or 2 with one line on stderr."""
    args = _parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="xlt-report: warning: %(message)s")
    try:
        markdown = run(args.dirs, args.out or args.dirs[0], args.metric, args.permutations,
                       not args.no_significance)
    except XltError as err:
        print(f"xlt-report: error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
