"""Per-cell statistics: mean ± std over seeds, missing seeds, significance.

A *cell* is every config value that can change a result except the seed:
the identity columns (task, eval set, lang, model, mode, corpus, size,
aggregation, tokens, aligner, metric) plus every config value that differs
among runs with the same identity (``swept_axes``: a ``task.lr`` sweep gives
one cell per learning rate, never a merged one).

Significance follows the paper: ``*`` = p < 0.05 against the original model,
``**`` = p < 0.05 of continual against adjusted with the same other
settings.  Each ``Marker`` names its symbol, baseline mode and threshold, so
both are configurable; a cell is tested against a baseline mode that comes
before its own (by the modes' switches, ``collect.mode_rank``: original <
adjusted < continual), with the test its task declared (results.json's
``report.significance``, one of ``xlt.evaluation.significance.TESTS``).

A baseline (for the gain and for every marker) is the baseline mode's cell
whose jobs have the same value of every setting that both cells' jobs read
(``xlt.keys.unused_subtrees`` says what a mode does not read: an original
job no ``corpus``, so one original cell is the baseline of every corpus
size).  A null a job reads is a value like any other.  A cell without such a
baseline gets no gain and no marker against that mode, and a warning names
the settings that differ: never a comparison with another configuration.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from xlt import results
from xlt.errors import XltError
from xlt.evaluation import significance
from xlt.report.collect import AXES, CONFIG_KEYS, reads

log = logging.getLogger(__name__)

CELL = ("task", "eval_set", "lang", "model", "mode", *AXES, "metric")
SAME_BASELINE = ("task", "eval_set", "lang", "model", "metric")


@dataclass(frozen=True)
class Marker:
    """``symbol`` when a cell differs from its ``baseline`` mode at p < ``alpha``
    (the paper's two-sided tests: a significant loss is marked as a gain is;
    the gain's sign says which)."""

    symbol: str
    baseline: str
    alpha: float

    @classmethod
    def parse(cls, text: str) -> Marker:
        """``SYMBOL=MODE:ALPHA``, e.g. ``**=adjusted:0.05``."""
        symbol, _, rest = text.partition("=")
        mode, _, alpha = rest.partition(":")
        try:
            value = float(alpha)
        except ValueError:
            value = math.nan
        if not symbol or not mode or not 0 < value < 1:
            raise XltError(f"--marker {text!r}: expected SYMBOL=MODE:ALPHA with 0 < ALPHA < 1, e.g. '**=adjusted:0.05'")
        return cls(symbol, mode, value)

    def describe(self) -> str:
        return f"{self.symbol} p < {self.alpha:g} vs {self.baseline}"

    @property
    def text(self) -> str:
        """The marker as ``--marker`` takes it."""
        return f"{self.symbol}={self.baseline}:{self.alpha:g}"


DEFAULT_MARKERS = (Marker("*", "original", 0.05), Marker("**", "adjusted", 0.05))


def swept_axes(df: pd.DataFrame) -> list[str]:
    """Config columns that differ among finished runs with the same identity.

    Values a run's identity already determines (``lang.name`` for ``lang``)
    are not axes; anything else that differs (``task.lr``) is.  Killed jobs
    are left out (their config is read back from Hydra's copy, where
    environment defaults may resolve differently), and so are results.json
    files without a resolved config (older xlt versions).
    """
    columns = list(df.attrs.get("config_columns", []))
    runs = df[df["status"] != results.KILLED].drop_duplicates("run_dir")
    if not columns or runs.empty:
        return []
    runs = runs[runs["unread"].map(lambda u: isinstance(u, str))]  # files from before the resolved config was recorded
    counts = _labels(runs, columns).groupby(list(CONFIG_KEYS), dropna=False)[columns].nunique()
    return [c for c in columns if int(counts[c].max()) > 1]


def _labels(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Config values as text labels, so they group and compare: "" for a
    setting the job does not read (or unknown), "null" for a null it reads."""
    return df.assign(**{c: [_label(value, reads(unread, c)) for value, unread in zip(df[c], df["unread"])]
                        for c in columns})


def _label(value: Any, read: bool) -> str:
    if not read:
        return ""
    return "null" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


class _Predictions:
    """Reads ``predictions/<eval set>.jsonl`` once per run (cells share
    baselines) and forgets an eval set's once its last cell is done
    (``forget``): a sweep's predictions never have to fit in memory at once."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], list[dict[str, Any]] | None] = {}

    def forget(self, eval_set: str) -> None:
        for key in [key for key in self._cache if key[1] == eval_set]:
            del self._cache[key]

    def get(self, run_dir: str, eval_set: str) -> list[dict[str, Any]] | None:
        key = (run_dir, eval_set)
        if key not in self._cache:
            try:
                self._cache[key] = results.read_predictions(run_dir, eval_set)
            except (OSError, ValueError) as err:
                log.warning("unreadable predictions of %s in %s: %s", eval_set, run_dir, err)
                self._cache[key] = None
        return self._cache[key]


def summarise(df: pd.DataFrame, iterations: int = 1000, significance_tests: bool = True,
              markers: tuple[Marker, ...] = DEFAULT_MARKERS) -> pd.DataFrame:
    """Mean ± std over seeds per cell, missing seeds, p-values and markers.

    * ``std`` is the sample std (ddof=1); NaN for a single seed.
    * ``expected_seeds`` = seeds seen in this cell or its original baseline
      (failed and killed jobs included); ``missing_seeds`` = expected − seeds
      with a result.
    * ``p_vs_<mode>`` / ``seeds_vs_<mode>``: p-value against each marker's
      baseline on the seeds both cells have; NaN when not tested.
    * ``gain`` is over the original cell; ``mixed_provenance``: the seeds come
      from different code versions or data checksums.
    """
    warnings: list[str] = []
    axes = swept_axes(df)
    keys = [*CELL, *axes]
    ranks = mode_ranks(df)
    cells = _dedupe_seeds(_with_failed_cells(_labels(df, axes)), keys, warnings)
    groups = {key: group for key, group in cells.groupby(keys, sort=False, dropna=False)}
    baselines = list(dict.fromkeys(["original", *(m.baseline for m in markers)]))
    predictions = _Predictions()
    by_setting = _index_by_setting(groups, keys)
    settings = {key: cell_settings(group, df.attrs.get("config_columns", [])) for key, group in groups.items()}
    warnings += _rows_across_languages(groups, keys, settings)
    unmatched: dict[tuple[tuple, str, str], list[tuple[int, dict[str, Any]]]] = {}  # (table row, mode, why) -> its cells
    awaited: dict[tuple, set[int]] = {}  # an original cell -> the seeds of the cells compared with it
    items = list(groups.items())
    rows: list[dict[str, Any]] = [{} for _ in items]
    cell_warnings: list[list[str]] = [[] for _ in items]
    # Cells one eval set at a time (a cell and its baselines share it), so its
    # predictions are dropped after its last cell; rows, warnings and the
    # unmatched lines keep the cells' own order.
    eval_sets = [str(key[keys.index("eval_set")]) for key, _ in items]
    order = sorted(range(len(items)), key=eval_sets.__getitem__)
    last = {eval_sets[i]: position for position, i in enumerate(order)}
    for position, i in enumerate(order):
        key, group = items[i]
        cell = dict(zip(keys, key))
        bases = {}
        for mode in baselines:
            if mode != "original" and ranks.get(cell["mode"], 9) <= ranks.get(mode, 9):
                bases[mode] = None  # not tested against this mode (no gain over it either)
                continue
            candidates = by_setting.get((mode, *(cell[k] for k in SAME_BASELINE)), [])
            base_key, problem = _pick_baseline(key, candidates, mode, settings, groups)
            bases[mode] = None if base_key is None else groups[base_key]
            if base_key is not None and mode == "original":  # the seeds its dependents expect of it
                awaited.setdefault(base_key, set()).update(int(seed) for seed in group["seed"])
            if problem:
                row = tuple(v for k, v in cell.items() if k not in ("eval_set", "metric"))
                unmatched.setdefault((row, mode, problem), []).append((i, cell))
        rows[i] = _summary_row(cell, group, bases, predictions, iterations if significance_tests else 0, markers,
                               ranks, cell_warnings[i])
        if last[eval_sets[i]] == position:
            predictions.forget(eval_sets[i])
    for i, (key, group) in enumerate(items):
        if key in awaited:
            _expect_seeds(rows[i], awaited[key] | set(int(seed) for seed in group["seed"]))
    warnings += list(dict.fromkeys(line for lines in cell_warnings for line in lines))  # one per table row, not per metric
    for (_, mode, problem), where in sorted(unmatched.items(), key=lambda item: min(i for i, _ in item[1])):
        cells = [cell for _, cell in sorted(where, key=lambda pair: pair[0])]
        warnings.append(_unmatched_warning(_cell_name(cells[0], keys, groups), mode, problem, cells))
    p_columns = [f"{kind}_vs_{mode}" for mode in baselines for kind in ("p", "seeds")]
    summary = pd.DataFrame(rows, columns=keys + list(_SUMMARY_COLUMNS) + p_columns + ["marker", *_PROVENANCE])
    summary = summary.sort_values(by=keys, key=sort_key(ranks), kind="stable").reset_index(drop=True)
    summary.attrs.update(warnings=warnings, axes=axes, markers=markers, mode_ranks=ranks, **task_declarations(df))
    return summary


def mode_ranks(df: pd.DataFrame) -> dict[str, int]:
    """Each mode's rank (``collect.mode_rank``), from its jobs."""
    ranked = df.dropna(subset=["mode_rank"]).drop_duplicates("mode")
    return {str(mode): int(rank) for mode, rank in zip(ranked["mode"], ranked["mode_rank"])}


def task_declarations(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per task, its table title and headline metrics, as its finished jobs recorded them."""
    ok = df[df["status"] == results.OK].drop_duplicates("task")
    return {"titles": dict(zip(ok["task"], ok["title"])),
            "headlines": {task: [m for m in str(h).split(",") if m] for task, h in zip(ok["task"], ok["headline"])}}


_SUMMARY_COLUMNS = ("mean", "std", "n_seeds", "expected_seeds", "missing_seeds", "seeds", "failed",
                    "baseline_mean", "gain")
_PROVENANCE = ("code_versions", "data_checksums", "config_hashes", "mixed_provenance")


def sort_key(ranks: dict[str, int]):
    """Natural order: modes by rank (original, adjusted, continual), numbers
    numerically, else text (a ``sort_values`` key)."""
    def key(column: pd.Series) -> pd.Series:
        if column.name == "mode":
            return column.map(lambda v: (ranks.get(v, 9), str(v)))
        return column.map(lambda v: (0, float(v), "") if _is_number(v) else (1, 0.0, str(v)))

    return key


def _is_number(value: Any) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _with_failed_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Give failed and killed jobs the (eval set, metric) pairs their task and language have.

    Such a job wrote no metrics, but its seed still belongs to the cells it
    would have filled; without this it would silently vanish from the counts.
    It recorded no hub commits either: it counts in the cells of each commit
    its model's finished runs of the task and language loaded.
    """
    ok = df[(df["status"] == results.OK) & df["eval_set"].notna()]
    failed = df[df["status"] != results.OK]
    if failed.empty:
        return ok
    targets = ok[["task", "lang", "eval_set", "metric"]].drop_duplicates()
    expanded = failed.drop(columns=["eval_set", "metric"]).merge(targets, on=["task", "lang"], how="inner")
    revisions = [c for c in df.columns if str(c).startswith(results.REVISION_COLUMN)]
    if revisions:  # a job records its hub commits only when it finishes: it failed at those its model's runs loaded
        loaded = ok[["task", "lang", "model", *revisions]].drop_duplicates()
        expanded = expanded.drop(columns=revisions).merge(loaded, on=["task", "lang", "model"], how="left")
    return pd.concat([ok, expanded[list(df.columns)]], ignore_index=True)


def _dedupe_seeds(cells: pd.DataFrame, keys: list[str], warnings: list[str]) -> pd.DataFrame:
    """Keep one result per cell and seed (a rerun of the same config must not count twice).

    An ``ok`` result wins over a failed attempt; among ok results the last
    run directory in sort order (usually the newest) wins, with a warning.
    """
    cells = cells.assign(_ok=cells["status"] == results.OK).sort_values(["_ok", "run_dir"], kind="stable")
    ok = cells[cells["_ok"]]
    dup = ok.duplicated(subset=[*keys, "seed"], keep="last")
    for _, row in ok[dup].drop_duplicates(subset=[*keys, "seed"]).iterrows():
        warnings.append(f"duplicate results for {describe(row)} seed {row['seed']} (identical configs): "
                        "kept the last run directory")
    return cells.drop_duplicates(subset=[*keys, "seed"], keep="last").drop(columns="_ok")


def describe(row: Any) -> str:
    return f"{row['task']}/{row['model']}/{row['lang']}/{row['mode']}"


def _index_by_setting(groups: dict[tuple, pd.DataFrame], keys: list[str]) -> dict[tuple, list[tuple]]:
    """Cells by (mode, task, eval set, lang, model, metric): where baselines are looked up."""
    index: dict[tuple, list[tuple]] = {}
    for key in groups:
        cell = dict(zip(keys, key))
        index.setdefault((cell["mode"], *(cell[k] for k in SAME_BASELINE)), []).append(key)
    return index


def cell_settings(group: pd.DataFrame, columns: list[str]) -> dict[str, str | None]:
    """What a cell's jobs ran with, as labels: each config column, and each
    identity axis (``size``...: all that results.json files without a resolved
    config tell); None for a setting they do not read.

    Within a cell every config column but the swept axes has one value
    (``swept_axes``), so one job says it; a finished job's, else a killed one's
    (whose config Hydra's copy holds)."""
    ranked = group.assign(_rank=(group["status"] == results.KILLED).astype(int)
                          + 2 * ~group["unread"].map(lambda u: isinstance(u, str)))
    row = ranked.sort_values("_rank", kind="stable").iloc[0]
    found: dict[str, str | None] = {axis: str(row[axis]) or None for axis in AXES}  # "": the mode does not adjust
    found.update({c: _label(row[c], True) if reads(row["unread"], c) else None for c in columns})
    return found


def differences(cell: dict[str, str | None], other: dict[str, str | None], other_mode: str) -> list[str]:
    """The settings both cells read with different values, as ``name: X here,
    Y in <other_mode>`` (the mode switch itself not counted); by config value
    where the cells have them, else by identity axis."""
    def differing(names: list[str]) -> list[str]:
        return [f"{k}: {cell[k]} here, {other[k]} in {other_mode}" for k in names
                if cell.get(k) is not None and other.get(k) is not None and cell[k] != other[k]]

    config = [k for k in cell if k not in AXES and k.split(".")[0] != "mode"]
    return differing(config) or differing(list(AXES))


def _pick_baseline(key: tuple, candidates: list[tuple], mode: str, settings: dict[tuple, dict[str, str | None]],
                   groups: dict[tuple, pd.DataFrame]) -> tuple[tuple | None, str]:
    """Among the baseline mode's cells of the same task, eval set, language,
    model and metric (``candidates``), the one whose jobs ran with the same
    value of every setting both read; else None and why (for a warning).

    Several such cells (the baseline mode reads a setting this cell does not,
    and they differ in it) are no baseline either: which one is "the same
    settings" is not known.
    """
    found = {other: differences(settings[key], settings[other], mode) for other in candidates}
    same = [other for other, differ in found.items() if not differ]
    if len(same) == 1:
        return same[0], ""
    if same:
        return None, f"{len(same)} of them match, differing in what this cell does not read"
    if not found:
        return None, ""
    closest = min(found, key=lambda other: (len(found[other]), -_ok_seeds(groups[other]).size))
    return None, "; ".join(found[closest])


def _rows_across_languages(groups: dict[tuple, pd.DataFrame], keys: list[str],
                           settings: dict[tuple, dict[str, str | None]]) -> list[str]:
    """A warning per table row whose language columns ran with different
    settings.  Row labels name the settings that differ within a language
    (``swept_axes``), so ru at ``task.lr=5e-05`` and hi at ``0.01`` made one
    row saying neither; each cell and its test are still right.  The
    language's own values (``lang.*``) and settings a cell does not read are
    not compared."""
    rows: dict[tuple, tuple[dict[str, Any], dict[str, dict[str, str]]]] = {}  # row -> (a cell, setting -> lang -> value)
    for key in groups:
        cell = dict(zip(keys, key))
        row = tuple(v for k, v in cell.items() if k not in ("lang", "eval_set", "metric"))
        values = rows.setdefault(row, (cell, {}))[1]
        for name, value in settings[key].items():
            if value is not None and name not in AXES and not name.startswith("lang."):
                values.setdefault(name, {}).setdefault(str(cell["lang"]), value)
    lines = []
    for cell, values in rows.values():
        differing = {name: by_lang for name, by_lang in values.items() if len(set(by_lang.values())) > 1}
        if differing:
            shown = "; ".join(f"{name} (" + ", ".join(f"{lang}: {v}" for lang, v in sorted(by_lang.items())) + ")"
                              for name, by_lang in sorted(differing.items()))
            lines.append(f"{_cell_name(cell, keys, groups, lang=False)}: its language columns ran with different "
                         f"settings, which its row label does not name: {shown}")
    return lines


def _unmatched_warning(name: str, mode: str, problem: str, cells: list[dict[str, Any]]) -> str:
    """One line for the cells of one table row that have no baseline in ``mode``."""
    families = sorted({str(c["eval_set"]).split(".")[0] for c in cells})
    metrics = sorted({str(c["metric"]) for c in cells})
    return (f"{name}: no {mode} cell with the same settings ({problem}): no gain or marker against {mode} in its "
            f"{len(cells)} cell(s) ({', '.join(families)}; {', '.join(metrics)})")


def _cell_name(cell: dict[str, Any], keys: list[str], groups: dict[tuple, pd.DataFrame], lang: bool = True) -> str:
    """``xnli/e5_small/ru/adjusted (size=1000, task.lr=0.01)``: the table row of a cell,
    by the axes that tell its mode's cells apart (``lang=False``: the row
    across its language columns, ``xnli/e5_small/adjusted (...)``)."""
    axes = [*AXES, *keys[len(CELL):]]
    mine = [dict(zip(keys, other)) for other in groups if dict(zip(keys, other))["mode"] == cell["mode"]]
    shown = [f"{a}={cell[a]}" for a in axes if cell[a] and len({m[a] for m in mine}) > 1]
    name = describe(cell) if lang else f"{cell['task']}/{cell['model']}/{cell['mode']}"
    return name + (f" ({', '.join(shown)})" if shown else "")


def _ok_seeds(group: pd.DataFrame) -> np.ndarray:
    return np.unique(group.loc[group["status"] == results.OK, "seed"].to_numpy())


def _summary_row(cell: dict[str, Any], group: pd.DataFrame, bases: dict[str, pd.DataFrame | None],
                 predictions: _Predictions, iterations: int, markers: tuple[Marker, ...], ranks: dict[str, int],
                 warnings: list[str]) -> dict[str, Any]:
    """Statistics of one cell (see ``summarise``); ``bases`` = baseline group per mode."""
    ok = group[(group["status"] == results.OK) & group["value"].notna()]  # NaN: not a finite metric (collect warns)
    values = ok["value"].astype(float)
    seeds = set(int(s) for s in ok["seed"])
    expected = set(int(s) for s in group["seed"])
    row: dict[str, Any] = {**cell}
    for mode, base in bases.items():
        base_ok = base[base["status"] == results.OK] if base is not None else None
        if mode == "original":
            if base is not None:
                expected |= set(int(s) for s in base["seed"])
            row["baseline_mean"] = float(base_ok["value"].mean()) if base_ok is not None and len(base_ok) else math.nan
        tested = base_ok is not None and iterations > 0 and ranks.get(cell["mode"], 9) > ranks.get(mode, 9)
        row[f"p_vs_{mode}"], row[f"seeds_vs_{mode}"] = (
            _significance(cell, ok, base_ok, predictions, iterations, warnings) if tested else (math.nan, 0))
    versions, checksums = sorted(set(ok["code_version"])), sorted(set(ok["data_checksums"]))
    mean = float(values.mean()) if len(values) else math.nan
    row.update(
        mean=mean,
        std=float(values.std(ddof=1)) if len(values) > 1 else math.nan,
        n_seeds=len(seeds), expected_seeds=len(expected), missing_seeds=len(expected - seeds),
        seeds=",".join(str(s) for s in sorted(seeds)),
        failed=int((group["status"] != results.OK).sum()),
        gain=mean - row["baseline_mean"],
        marker=marker_text(row, markers),
        code_versions=";".join(versions), data_checksums=";".join(checksums),
        config_hashes=";".join(sorted(set(ok["config_hash"]))),
        mixed_provenance=len(versions) > 1 or len(checksums) > 1,
    )
    return row


def _expect_seeds(row: dict[str, Any], expected: set[int]) -> None:
    """An original cell expects every seed its cells compare with it have
    (with 2 of 5 seeds it showed no gap, and their gains set a 5-seed mean
    against a 2-seed one), as a cell expects its baseline's."""
    seeds = {int(seed) for seed in row["seeds"].split(",") if seed}
    expected |= seeds
    row.update(expected_seeds=len(expected), missing_seeds=len(expected - seeds))


def marker_text(row: dict[str, Any], markers: tuple[Marker, ...]) -> str:
    """The symbols of every marker the cell earns, comma-separated.

    Against one baseline only the strictest earned marker is shown (so
    ``*``/``**`` at 0.05/0.01 vs original print one of them, as before).
    """
    hits: dict[str, Marker] = {}
    for m in markers:
        if significance.marker(row.get(f"p_vs_{m.baseline}"), m.alpha, m.symbol):
            if m.baseline not in hits or m.alpha < hits[m.baseline].alpha:
                hits[m.baseline] = m
    return ",".join(m.symbol for m in markers if hits.get(m.baseline) is m)


def _significance(cell: dict[str, Any], ok: pd.DataFrame, base_ok: pd.DataFrame, predictions: _Predictions,
                  iterations: int, warnings: list[str]) -> tuple[float, int]:
    """p-value of the cell vs its baseline on their common seeds, with the
    test the cell's task declared, and how many seeds that was.  A seed whose
    per-example predictions are missing, empty or unreadable in either run is
    left out of the test, with a warning naming the run: a dropped seed (or a
    dropped test) must not pass for "not significant"."""
    runs_a = dict(zip(ok["seed"].astype(int), ok["run_dir"]))
    runs_b = dict(zip(base_ok["seed"].astype(int), base_ok["run_dir"]))
    records = {s: (predictions.get(runs_a[s], cell["eval_set"]), predictions.get(runs_b[s], cell["eval_set"]))
               for s in sorted(set(runs_a) & set(runs_b))}
    common = [s for s, (a, b) in records.items() if a and b]
    lacking = [run for s, pair in records.items() for run, recs in zip((runs_a[s], runs_b[s]), pair) if not recs]
    if lacking:
        kept = f"tested on the other {len(common)} common seed(s)" if common else "not tested"
        warnings.append(f"{describe(cell)} on {cell['eval_set']} against {base_ok['mode'].iloc[0]}: no per-example "
                        f"predictions ({results.PREDICTIONS_DIR}/{cell['eval_set']}.jsonl missing, empty or unreadable) "
                        f"in {', '.join(lacking)}; {kept}")
    if not common:
        return math.nan, 0
    recs_a, recs_b = [records[s][0] for s in common], [records[s][1] for s in common]
    if crossed := _crossed_environments(ok, base_ok, common):
        warnings.append(f"{describe(cell)} on {cell['eval_set']} against {base_ok['mode'].iloc[0]}: {crossed}")
    test = next((t for t in ok["significance"] if t), "")
    if test not in significance.TESTS:
        warnings.append(f"{cell['task']} {cell['eval_set']}: no significance test named {test!r} "
                        f"(valid: {', '.join(significance.TESTS)}); not tested")
        return math.nan, 0
    return significance.compare(test, cell["metric"], recs_a, recs_b, iterations), len(common)


def _crossed_environments(ok: pd.DataFrame, base_ok: pd.DataFrame, seeds: list[int]) -> str:
    """What a paired test mixes when a seed's two jobs ran in different
    environments (``xlt.environment``: CPU, GPUs, library versions), or "".

    The same job at the same code and data gives other numbers on another
    CPU class (study 2: up to 0.5 points of entity F1 between an AMD EPYC
    and an Intel Xeon; two Intel Xeons agreed to the last digit), so such a
    test's p-value mixes the machines' difference with the models'.  Jobs
    that recorded no environment (older xlt) are not compared."""
    def by_seed(frame: pd.DataFrame) -> dict[int, tuple[str, str]]:
        return {int(s): (env if isinstance(env, str) else "", str(run))
                for s, env, run in zip(frame["seed"], frame["environment"], frame["run_dir"])}

    mine, theirs = by_seed(ok), by_seed(base_ok)
    crossed = [s for s in seeds if mine[s][0] and theirs[s][0] and mine[s][0] != theirs[s][0]]
    if not crossed:
        return ""
    first = crossed[0]
    return (f"the paired test pairs jobs that ran in different environments ({len(crossed)} of {len(seeds)} seeds; "
            f"seed {first}: {mine[first][0]} in {mine[first][1]}, {theirs[first][0]} in {theirs[first][1]}): "
            "machines move a job's numbers at the level of seed noise, so its p-value mixes the two")
