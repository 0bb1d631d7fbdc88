"""The stage-2 tables of docs/study2/report.md, from the job folders of docs/study2/confirm.sh.

    python docs/study2/confirm_table.py multirun/study2/confirm --out docs/study2/confirm

``<task>.md|csv`` (task = xnli, ner; whichever has finished jobs): per model,
language and eval set, mean ± sample std over seeds with xlt-report's markers
(``summarise``, the code behind ``xlt-report``: * p < 0.05 against the
original model, ** p < 0.05 of continual against the adjusted model with the
same settings, the test each task declares: XNLI a paired t-test on
per-example correctness averaged over seeds, NER the paper's 1,000-iteration
approximate randomization on seed-concatenated sentences, entity F1 and
word-level F1), then the gains: each model against the original, continual
against its adjusted model, and the question of this study, contrastive
against L2 (the same test on the seeds both have).
``seeds.md|csv``: the headline metric (XNLI accuracy, NER entity F1) of every
seed; ``seeds.png|pdf`` plots it.
``distances.md|csv``: the held-out related/unrelated distances of the adjusted
models before adjustment, after it, and after each task's English
fine-tuning (the first study's reader), mean over seeds.
Copies nothing by hand: the report's tables are these files.

``--keep-missing``: the rows of a model (or a whole task) with no finished job
under SWEEP are kept from the tables already in --out, and printed as kept.
A session can start on a fresh machine that has lost the job folders of
finished stages (report, "What the machinery got wrong"); their rows stay as
computed, while the models rerun since are recomputed, and every recomputed
value that differs from the kept table is printed (none should: same code,
same seeds).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

import pandas as pd

from xlt import results
from xlt.evaluation import significance
from xlt.report import collect, summarise

# (mode, adjustment.objective) -> row label; the settings are in confirm.sh.
ROWS = {("original", ""): "original", ("adjusted", "l2"): "L2 (A)", ("adjusted", "contrastive"): "contrastive",
        ("continual", "contrastive"): "continual (contrastive)"}
# The comparisons of the gains table: (row, against, name of the column).
GAINS = (("L2 (A)", "original", "vs original"), ("contrastive", "original", "vs original"),
         ("continual (contrastive)", "original", "vs original"), ("contrastive", "L2 (A)", "contrastive vs L2"),
         ("continual (contrastive)", "contrastive", "continual vs adjusted"))
TASKS = {"xnli": {"sets": ("xnli", "xnli_mixed"), "metrics": ("accuracy",)},
         "ner": {"sets": ("wikiann",), "metrics": ("f1", "token_f1")}}
LANGS = ("ru", "hi")
NAMES = {"xnli": "XNLI", "xnli_mixed": "mixed XNLI", "wikiann": "WikiANN", "accuracy": "accuracy", "f1": "entity F1",
         "token_f1": "token F1"}


def _first_study():
    """docs/study/confirm_table.py, whose held-out distance reader this table shares."""
    path = Path(__file__).resolve().parents[1] / "study" / "confirm_table.py"
    spec = importlib.util.spec_from_file_location("first_confirm_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row_label(mode: str, objective) -> str:
    key = (mode, "" if objective is None or (isinstance(objective, float) and math.isnan(objective)) else str(objective))
    if key not in ROWS:
        raise SystemExit(f"confirm_table.py: no row label for mode={mode} adjustment.objective={objective}; add it to ROWS")
    return ROWS[key]


def ok_jobs(task_sweep: Path) -> pd.DataFrame:
    """xlt's ``collect`` over the stage folders of one task: finished jobs, one row per
    job, eval set and metric, with the table's row label and the set without its language."""
    jobs = collect([str(p) for p in sorted(task_sweep.iterdir()) if p.is_dir()])
    unfinished = jobs[jobs["status"] != "ok"].drop_duplicates("run_dir")
    if len(unfinished):
        print(f"{task_sweep}: {len(unfinished)} job(s) not finished (left out): "
              + ", ".join(f"{r.mode} {r.lang} seed {r.seed} ({r.status})" for r in unfinished.itertuples()))
    jobs = jobs[jobs["status"] == "ok"]
    objective = jobs["adjustment.objective"] if "adjustment.objective" in jobs else [None] * len(jobs)
    return jobs.assign(row=[row_label(m, o) for m, o in zip(jobs["mode"], objective)],
                       set=jobs["eval_set"].str.rsplit(".", n=1).str[0])


def cells(jobs: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """``summarise`` per cell (mean, std, seeds, p-values, markers), labelled by row."""
    summary = summarise(jobs[jobs["metric"].isin(metrics)], iterations=1000)
    label = jobs.drop_duplicates("config_hash").set_index("config_hash")["row"]
    rows = [{label[h] for h in hashes.split(";")} for hashes in summary["config_hashes"]]
    merged = [sorted(r) for r in rows if len(r) != 1]
    if merged:
        raise SystemExit(f"confirm_table.py: one report cell holds the jobs of several models {merged[0]}")
    summary["row"] = [r.pop() for r in rows]
    summary["set"] = summary["eval_set"].str.rsplit(".", n=1).str[0]
    return summary


def versus(jobs: pd.DataFrame, row: str, base: str, eval_set: str, metric: str) -> tuple[float, float, int]:
    """Mean difference (points) and p-value of ``row`` against ``base`` on the seeds both
    have, with the test the task declared."""
    pick = jobs[(jobs["eval_set"] == eval_set) & (jobs["metric"] == metric)]
    a = pick[pick["row"] == row].set_index("seed")
    b = pick[pick["row"] == base].set_index("seed")
    common = sorted(set(a.index) & set(b.index))
    if not common:
        return math.nan, math.nan, 0
    gain = 100 * (a.loc[common, "value"].mean() - b.loc[common, "value"].mean())
    recs_a = [results.read_predictions(a.loc[s, "run_dir"], eval_set) for s in common]
    recs_b = [results.read_predictions(b.loc[s, "run_dir"], eval_set) for s in common]
    test = a["significance"].iloc[0]
    return float(gain), significance.compare(test, metric, recs_a, recs_b, iterations=1000), len(common)


def task_columns(task: str) -> list[tuple[str, str, str]]:
    """The (eval set, metric, language) columns of a task's tables."""
    spec = TASKS[task]
    return [(s, m, lang) for s in spec["sets"] for m in spec["metrics"] for lang in LANGS]


def table(task: str, jobs: pd.DataFrame) -> pd.DataFrame:
    """The task's 5-seed table and gains table as one frame (``kind`` cell / gain)."""
    summary = cells(jobs, TASKS[task]["metrics"])
    columns = task_columns(task)
    rows = []
    for label in ROWS.values():
        for s, m, lang in columns:
            hit = summary[(summary["row"] == label) & (summary["set"] == s) & (summary["metric"] == m)
                          & (summary["lang"] == lang)]
            if len(hit):
                r = hit.iloc[0]
                rows.append({"row": label, "set": s, "metric": m, "lang": lang, "mean": 100 * r["mean"],
                             "std": 100 * r["std"], "seeds": int(r["n_seeds"]), "marker": r["marker"] or ""})
    frame = pd.DataFrame(rows)
    gains = []
    for label, base, name in GAINS:
        for s, m, lang in columns:
            gain, p, n = versus(jobs, label, base, f"{s}.{lang}", m)
            if n:
                gains.append({"row": label, "against": base, "comparison": name, "set": s, "metric": m, "lang": lang,
                              "gain": gain, "p": p, "seeds": n})
    gains = pd.DataFrame(gains)
    return pd.concat([frame.assign(kind="cell"), gains.assign(kind="gain")], ignore_index=True)


def ordered(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A task frame's cells in ``ROWS`` order and its gains in ``GAINS`` order
    (rows kept from a committed table come after the recomputed ones)."""
    row_rank = {label: i for i, label in enumerate(ROWS.values())}
    gain_rank = {(row, base): i for i, (row, base, _) in enumerate(GAINS)}
    cells_ = frame[frame["kind"] == "cell"]
    gains = frame[frame["kind"] == "gain"]
    cells_ = cells_.assign(rank=cells_["row"].map(row_rank), marker=cells_["marker"].fillna(""))  # csv: "" reads as NaN
    gains = gains.assign(rank=[gain_rank[pair] for pair in zip(gains["row"], gains["against"])])
    return tuple(part.sort_values("rank", kind="stable").drop(columns="rank").astype({"seeds": int})
                 for part in (cells_, gains))


def _markdown(frame: pd.DataFrame, gains: pd.DataFrame, columns: list[tuple[str, str, str]]) -> str:
    names = [f"{NAMES[s]} {NAMES[m]} {lang}" if len(set(c[1] for c in columns)) > 1 else f"{NAMES[s]} {lang}"
             for s, m, lang in columns]
    rule = "|---" * (len(columns) + 1) + "|"
    lines = ["| model | " + " | ".join(names) + " |", rule]
    for label in ROWS.values():
        if len(frame) and (frame["row"] == label).any():
            lines.append(f"| {label} | " + _cells(frame[frame["row"] == label], columns, _mean_text) + " |")
    if len(gains):  # none while only the original model is done
        lines += ["", "| points, p | " + " | ".join(names) + " |", rule]
        for (label, base), pairs in gains.groupby(["row", "against"], sort=False):
            lines.append(f"| {label} − {base} | " + _cells(pairs, columns, _gain_text) + " |")
    return "\n".join(lines) + "\n"


def _cells(rows: pd.DataFrame, columns: list[tuple[str, str, str]], text) -> str:
    """One table line's cells: ``text`` of the row of each (set, metric, lang), blank where there is none."""
    cells = []
    for s, m, lang in columns:
        hit = rows[(rows["set"] == s) & (rows["metric"] == m) & (rows["lang"] == lang)]
        cells.append("" if hit.empty else text(hit.iloc[0]))
    return " | ".join(cells)


def _mean_text(r) -> str:
    spread = "" if pd.isna(r["std"]) else f" ± {r['std']:.1f}"
    return f"{r['mean']:.1f}{spread}{r['marker']}{_seeds(r['seeds'])}"


def _gain_text(r) -> str:
    p = "" if math.isnan(r["p"]) else f", p={r['p']:.3f}" if r["p"] >= 0.001 else ", p<0.001"
    return f"{r['gain']:+.1f}{p}{_seeds(r['seeds'])}"


def _seeds(n: int) -> str:
    """A cell's seed count, shown only when it is not the study's five."""
    return "" if n == 5 else f" ({n} seed{'s' if n > 1 else ''})"


def seeds(by_task: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The headline metric (XNLI accuracy, NER entity F1) of every seed, in %."""
    frames = []
    for task, jobs in by_task.items():
        headline = jobs[(jobs["set"] == TASKS[task]["sets"][0]) & (jobs["metric"] == TASKS[task]["metrics"][0])]
        frames.append(headline.assign(task=task, value=100 * headline["value"])[["task", "lang", "seed", "row", "value"]])
    frame = pd.concat(frames).pivot_table(index=["task", "lang", "seed"], columns="row", values="value")
    return frame[[label for label in ROWS.values() if label in frame.columns]].reset_index()


def seeds_markdown(frame: pd.DataFrame) -> str:
    models = [c for c in frame.columns if c not in ("task", "lang", "seed")]
    lines = ["| task | lang | seed | " + " | ".join(models) + " |", "|---" * (len(models) + 3) + "|"]
    for _, r in frame.iterrows():
        values = ["" if pd.isna(r[m]) else f"{r[m]:.1f}" for m in models]
        lines.append(f"| {r['task']} | {r['lang']} | {int(r['seed'])} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def seeds_figure(frame: pd.DataFrame, out: Path) -> None:
    """One panel per task and language, one line per model over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(frame.groupby(["task", "lang"], sort=False))
    models = [c for c in frame.columns if c not in ("task", "lang", "seed")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4), squeeze=False)
    for ax, ((task, lang), rows) in zip(axes[0], panels):
        for model in models:
            ax.plot(rows["seed"], rows[model], marker="o", label=model)
        metric = NAMES[TASKS[task]["metrics"][0]]
        ax.set(title=f"{NAMES[TASKS[task]['sets'][0]]} {lang}", xlabel="seed", ylabel=f"{metric}, %",
               xticks=sorted(rows["seed"].astype(int)))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    for suffix in ("png", "pdf"):
        fig.savefig(out / f"seeds.{suffix}", dpi=150)
    plt.close(fig)


def read_table(path: Path) -> pd.DataFrame | None:
    """A committed table, or None where there is none yet."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.is_file() else None


def keep_missing(new: pd.DataFrame, old: pd.DataFrame | None, name: str, labels: set[str], label_of,
                 key: list[str], values: list[str]) -> pd.DataFrame:
    """``new`` plus the rows of the committed table ``old`` (file ``name``) that
    read a model not among ``labels`` (``label_of(row)``: the models a row
    reads), the models recomputed now; rows both have are compared on ``values``."""
    if old is None:
        return new
    new = new.reindex(columns=list(dict.fromkeys([*new.columns, *old.columns])))
    reads = old.apply(lambda r: " vs ".join(label_of(r)), axis=1)
    recomputed = old.apply(lambda r: set(label_of(r)) <= labels, axis=1)
    kept = old[~recomputed]
    for models, count in reads[~recomputed].value_counts(sort=False).items():
        print(f"kept from {name}: {count} row(s) of {models} (no finished job here)")
    both = old[recomputed].merge(new, on=key, how="inner", suffixes=(" kept", ""))
    for _, r in both.iterrows():
        for v in values:
            a, b = r[f"{v} kept"], r[v]
            if not _same(a, b):
                print(f"DIFFERS from {name}: " + ", ".join(f"{k}={r[k]}" for k in key) + f": {v} {a} -> {b}")
    return pd.concat([new, kept], ignore_index=True)


def _same(a, b) -> bool:
    """Equal values, floats to 1e-9 (a csv round trip), blanks equal."""
    if all(pd.isna(v) or v == "" for v in (a, b)):  # a csv reads the blank marker back as NaN
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def task_tables(task: str, jobs: pd.DataFrame, out: Path, keep: bool) -> None:
    """``<task>.csv|md``; with ``keep``, merged with the committed rows of models not rerun."""
    frame = table(task, jobs)
    if keep:
        frame = keep_missing(frame, read_table(out / f"{task}.csv"), f"{task}.csv", set(jobs["row"]),
                             lambda r: [r["row"]] + ([r["against"]] if r["kind"] == "gain" else []),
                             ["kind", "row", "against", "set", "metric", "lang"], ["mean", "std", "seeds", "marker", "gain", "p"])
    cells_, gains = ordered(frame)
    pd.concat([cells_, gains], ignore_index=True).to_csv(out / f"{task}.csv", index=False)
    markdown = _markdown(cells_, gains, task_columns(task))
    (out / f"{task}.md").write_text(markdown)
    print(f"## {task}\n\n{markdown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="the folder of the task sweeps (multirun/study2/confirm)")
    parser.add_argument("--out", type=Path, required=True, help="where the tables go (docs/study2/confirm)")
    parser.add_argument("--keep-missing", action="store_true",
                        help="keep the rows of models and tasks with no finished job from the tables in --out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    by_task = {task: ok_jobs(args.sweep / task) for task in TASKS if (args.sweep / task).is_dir()}
    by_task = {task: jobs for task, jobs in by_task.items() if len(jobs)}
    if not by_task:
        raise SystemExit(f"confirm_table.py: no finished job under {args.sweep}/{{{','.join(TASKS)}}}")
    for task, jobs in by_task.items():
        task_tables(task, jobs, args.out, args.keep_missing)
    per_seed = seeds(by_task)
    if args.keep_missing:  # per (task, lang, seed, model): a model not rerun keeps its committed seeds
        labels = {f"{task}/{row}" for task, jobs in by_task.items() for row in set(jobs["row"])}
        ids = ["task", "lang", "seed"]
        old = read_table(args.out / "seeds.csv")
        long = keep_missing(per_seed.melt(id_vars=ids, var_name="row", value_name="value").dropna(),
                            None if old is None else old.melt(id_vars=ids, var_name="row", value_name="value").dropna(),
                            "seeds.csv", labels, lambda r: [f"{r['task']}/{r['row']}"], [*ids, "row"], ["value"])
        per_seed = long.pivot_table(index=ids, columns="row", values="value")
        per_seed = per_seed[[label for label in ROWS.values() if label in per_seed.columns]].reset_index()
    per_seed.to_csv(args.out / "seeds.csv", index=False)
    (args.out / "seeds.md").write_text(seeds_markdown(per_seed))
    seeds_figure(per_seed, args.out)
    study1 = _first_study()
    adjusted = pd.concat([jobs.assign(row=jobs["row"] + f" → {task}") for task, jobs in by_task.items()])
    if (adjusted["mode"] != "original").any():
        probes = study1.distances(adjusted)
        if args.keep_missing:
            probes = keep_missing(probes, read_table(args.out / "distances.csv"), "distances.csv", set(probes["row"]),
                                  lambda r: [r["row"]],
                                  ["row", "lang"], [c for c in probes.columns if c not in ("row", "lang")])
        probes.to_csv(args.out / "distances.csv", index=False)
        (args.out / "distances.md").write_text(study1.distances_markdown(probes))
        print(study1.distances_markdown(probes))


if __name__ == "__main__":
    main()
