"""The stage-2 tables of docs/study/report.md, from xlt-report's report.csv and the job folders.

    xlt-report multirun/study/confirm --out docs/study/confirm
    python docs/study/confirm_table.py multirun/study/confirm --out docs/study/confirm

``accuracy.md``: XNLI accuracy per model and eval set, mean ± sample std over
seeds with xlt-report's markers (* p < 0.05 vs the original model, ** p < 0.05
continual vs adjusted; paired t-test over per-example correctness averaged
over seeds), then the difference to the original with its p-value.
``seeds.md``: XNLI and mixed accuracy of every seed, and the per-seed
difference to the original model (the fine-tuning order and head of seed k
are the same for every model, so seed-to-seed noise cancels in it);
``seeds.png|pdf`` plots them.
``distances.md``: the held-out related/unrelated last-layer distances of
the adjusted jobs before adjustment, after it, and after the English
fine-tuning (does fine-tuning undo the adjustment?), mean over seeds.
``english.md`` (with ``--english``, the sweeps of ``confirm.sh <stage> english``
and xlt-report's output on them): English XNLI test accuracy of the same
checkpoints, its difference to the original (p), and the transfer gap
English − target per seed.
Both also as .csv.  Copies nothing by hand: the report's tables are these files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from xlt import results
from xlt.report import collect

# (mode, corpus.size) -> row label; the settings are in confirm.sh (A, B).
ROWS = {("original", None): "original", ("adjusted", 1000): "adjusted A", ("adjusted", 5000): "adjusted B",
        ("continual", 1000): "continual (A)"}
SETS = ("xnli", "xnli_mixed", "xnli_mixed_premise", "xnli_mixed_hypothesis")
LANGS = ("ru", "hi")


def row_label(mode: str, size) -> str:
    key = (mode, None if pd.isna(size) or size == "" else int(float(size)))
    if key not in ROWS:
        raise SystemExit(f"confirm_table.py: no row label for mode={mode} corpus.size={size}; add it to ROWS")
    return ROWS[key]


def accuracy(report_csv: Path) -> pd.DataFrame:
    """One row per (model, eval set, language) of xlt-report's report.csv, in %."""
    report = pd.read_csv(report_csv)
    report = report[report["metric"] == "accuracy"].copy()
    report["row"] = [row_label(m, s) for m, s in zip(report["mode"], report["size"])]
    report["set"] = report["eval_set"].str.rsplit(".", n=1).str[0]
    for column in ("mean", "std", "gain"):
        report[column] = 100 * report[column]
    keep = ["row", "set", "lang", "mean", "std", "n_seeds", "gain", "p_vs_original", "p_vs_adjusted", "marker",
            "mixed_provenance"]
    return report[keep]


def accuracy_markdown(frame: pd.DataFrame) -> str:
    columns = [(s, lang) for s in SETS for lang in LANGS]
    names = {"xnli": "XNLI", "xnli_mixed": "mixed", "xnli_mixed_premise": "mixed, premise en",
             "xnli_mixed_hypothesis": "mixed, hypothesis en"}
    header = "| model | " + " | ".join(f"{names[s]} {lang}" for s, lang in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    gains = [header.replace("| model |", "| vs original (points, p) |"), lines[1]]
    for label in dict.fromkeys(ROWS.values()):
        rows = frame[frame["row"] == label].set_index(["set", "lang"])
        if rows.empty:
            continue
        cells, deltas = [], []
        for key in columns:
            if key not in rows.index:
                cells.append("")
                deltas.append("")
                continue
            r = rows.loc[key]
            marker = "" if pd.isna(r["marker"]) else r["marker"]
            dagger = "†" if r["mixed_provenance"] is True or str(r["mixed_provenance"]) == "True" else ""
            seeds = "" if r["n_seeds"] == 5 else f" ({int(r['n_seeds'])} seeds)"
            cells.append(f"{r['mean']:.1f} ± {r['std']:.1f}{marker}{dagger}{seeds}")
            if label != "original":
                p = "" if pd.isna(r["p_vs_original"]) else f", p={r['p_vs_original']:.3f}"
                q = "" if pd.isna(r["p_vs_adjusted"]) else f"; vs A p={r['p_vs_adjusted']:.3f}"
                deltas.append(f"{r['gain']:+.1f}{p}{q}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if label != "original":
            gains.append(f"| {label} | " + " | ".join(deltas) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(gains) + "\n"


def ok_jobs(sweep: Path) -> pd.DataFrame:
    """xlt's ``collect`` over the stage folders of ``sweep`` (one per stage): the finished jobs,
    one row per job, eval set and metric, with the table's row label and the set without its language."""
    jobs = collect([str(p) for p in sorted(sweep.iterdir()) if p.is_dir()])
    jobs = jobs[jobs["status"] == "ok"]
    return jobs.assign(row=[row_label(m, s) for m, s in zip(jobs["mode"], jobs["size"])],
                       set=jobs["eval_set"].str.rsplit(".", n=1).str[0])


def accuracies(jobs: pd.DataFrame) -> pd.DataFrame:
    """The accuracy rows of ``ok_jobs``, in %."""
    jobs = jobs[jobs["metric"] == "accuracy"].drop_duplicates(["run_dir", "eval_set"])
    return jobs.assign(accuracy=100 * jobs["value"].astype(float))


def per_seed(jobs: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) per model, language, seed and eval set, with the difference to the original's seed."""
    jobs = accuracies(jobs)
    jobs = jobs[jobs["set"].isin(("xnli", "xnli_mixed"))]
    frame = jobs.pivot_table(index=["set", "lang", "seed"], columns="row", values="accuracy")
    order = [label for label in dict.fromkeys(ROWS.values()) if label in frame.columns]
    frame = frame[order]
    for label in order[1:]:
        frame[f"{label} − original"] = frame[label] - frame["original"]
    return frame.reset_index()


def seeds_markdown(frame: pd.DataFrame) -> str:
    columns = [c for c in frame.columns if c not in ("set", "lang", "seed")]
    lines = ["| set | lang | seed | " + " | ".join(columns) + " |", "|---" * (len(columns) + 3) + "|"]
    for _, r in frame.iterrows():
        cells = [f"{r[c]:+.1f}" if "−" in c else f"{r[c]:.1f}" for c in columns]
        lines.append(f"| {r['set']} | {r['lang']} | {int(r['seed'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seeds_figure(frame: pd.DataFrame, out: Path) -> None:
    """XNLI accuracy per seed, one panel per language, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xnli = frame[frame["set"] == "xnli"]
    models = [c for c in frame.columns if c not in ("set", "lang", "seed") and "−" not in c]
    fig, axes = plt.subplots(1, len(LANGS), figsize=(9, 3.4), sharey=True)
    for ax, lang in zip(axes, LANGS):
        rows = xnli[xnli["lang"] == lang]
        for model in models:
            ax.plot(rows["seed"], rows[model], marker="o", label=model)
        ax.set(title=f"XNLI {lang} (5,010 pairs)", xlabel="seed", xticks=sorted(rows["seed"].astype(int)))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy, %")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    for suffix in ("png", "pdf"):
        fig.savefig(out / f"seeds.{suffix}", dpi=150)
    plt.close(fig)


def english(jobs: pd.DataFrame, report_csv: Path, seeds: pd.DataFrame) -> pd.DataFrame:
    """English accuracy per model and language (mean ± std over seeds, gain and p vs the
    original from xlt-report), and the transfer gap English − target (XNLI), per seed then averaged."""
    jobs = accuracies(jobs).rename(columns={"accuracy": "english"})
    target = seeds[seeds["set"] == "xnli"].melt(id_vars=["set", "lang", "seed"], var_name="row", value_name="target")
    merged = jobs[["row", "lang", "seed", "english"]].merge(target[["row", "lang", "seed", "target"]], on=["row", "lang", "seed"])
    merged["gap"] = merged["english"] - merged["target"]
    stats = merged.groupby(["row", "lang"], sort=False).agg(
        seeds=("seed", "count"), english=("english", "mean"), english_std=("english", "std"),
        target=("target", "mean"), gap=("gap", "mean"), gap_std=("gap", "std")).reset_index()
    stats["gap_change"], stats["gap_p"] = zip(*(_gap_test(merged, row, lang) for row, lang in zip(stats["row"], stats["lang"])))
    tests = accuracy(report_csv)[["row", "lang", "gain", "p_vs_original", "marker"]]
    order = {label: i for i, label in enumerate(dict.fromkeys(ROWS.values()))}
    frame = stats.merge(tests, on=["row", "lang"], how="left")
    return frame.sort_values(["row", "lang"], key=lambda c: c.map(order) if c.name == "row" else c.map(LANGS.index)).reset_index(drop=True)


def _gap_test(merged: pd.DataFrame, row: str, lang: str) -> tuple[float, float]:
    """Change of the transfer gap against the original, paired over the seeds both have
    (t-test over seeds: few samples, but the same fine-tuning order per seed)."""
    from scipy.stats import ttest_rel

    if row == "original":
        return float("nan"), float("nan")
    mine = merged[(merged["row"] == row) & (merged["lang"] == lang)].set_index("seed")["gap"]
    base = merged[(merged["row"] == "original") & (merged["lang"] == lang)].set_index("seed")["gap"]
    common = mine.index.intersection(base.index)
    if len(common) < 2:
        return float("nan"), float("nan")
    return float((mine[common] - base[common]).mean()), float(ttest_rel(mine[common], base[common]).pvalue)


def english_markdown(frame: pd.DataFrame) -> str:
    lines = ["| model | lang | seeds | English | vs original (points, p) | target (XNLI) | gap English − target | gap vs original (points, p over seeds) |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        versus = "" if r["row"] == "original" or pd.isna(r["gain"]) else f"{r['gain']:+.1f}, p={r['p_vs_original']:.3f}"
        marker = "" if pd.isna(r["marker"]) else r["marker"]
        lines.append(f"| {r['row']} | {r['lang']} | {int(r['seeds'])} | {r['english']:.1f} ± {r['english_std']:.1f}{marker} | "
                     f"{versus} | {r['target']:.1f} | {r['gap']:.1f} ± {r['gap_std']:.1f} | "
                     + ("" if pd.isna(r["gap_p"]) else f"{r['gap_change']:+.1f}, p={r['gap_p']:.3f}") + " |")
    return "\n".join(lines) + "\n"


def distances(jobs: pd.DataFrame) -> pd.DataFrame:
    """Held-out distances of every adjusted or continual job, mean over seeds."""
    jobs = jobs.drop_duplicates("run_dir")
    rows = []
    for _, job in jobs[jobs["mode"] != "original"].iterrows():
        found = results.read(Path(job["run_dir"]))
        evidence, after = found["adjustment"], found.get("finetuned_distances", {})
        row = {"row": job["row"], "lang": job["lang"], "seed": job["seed"]}
        for state, probe in (("original", evidence["original"]), ("adjusted", evidence["adjusted"]), ("fine-tuned", after)):
            row[f"ratio {state}"] = probe["related_mean"] / probe["unrelated_mean"] if probe else None
            row[f"related {state}"] = probe.get("related_mean")
        row["English drift"] = evidence["adjusted"]["english_drift_mean"]
        rows.append(row)
    frame = pd.DataFrame(rows)
    means = frame.groupby(["row", "lang"], sort=False).mean(numeric_only=True).drop(columns="seed")
    means["seeds"] = frame.groupby(["row", "lang"], sort=False)["seed"].count()
    return means.reset_index()


def distances_markdown(frame: pd.DataFrame) -> str:
    lines = ["| model | lang | seeds | related/unrelated: original | adjusted | after fine-tuning | related: original | adjusted | after fine-tuning | English drift |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        lines.append(f"| {r['row']} | {r['lang']} | {int(r['seeds'])} | {r['ratio original']:.3f} | {r['ratio adjusted']:.3f} | "
                     f"{r['ratio fine-tuned']:.3f} | {r['related original']:.3f} | {r['related adjusted']:.3f} | "
                     f"{r['related fine-tuned']:.3f} | {r['English drift']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="the folder of the stage sweeps (multirun/study/confirm)")
    parser.add_argument("--out", type=Path, required=True, help="xlt-report's output folder (has report.csv)")
    parser.add_argument("--english", type=Path, help="the folder of the English sweeps (multirun/study/english), "
                        "with xlt-report's output on them in docs/study/english")
    args = parser.parse_args()
    table = accuracy(args.out / "report.csv")
    table.to_csv(args.out / "accuracy.csv", index=False)
    (args.out / "accuracy.md").write_text(accuracy_markdown(table))
    jobs = ok_jobs(args.sweep)
    seeds = per_seed(jobs)
    seeds.to_csv(args.out / "seeds.csv", index=False)
    (args.out / "seeds.md").write_text(seeds_markdown(seeds))
    seeds_figure(seeds, args.out)
    probes = distances(jobs)
    probes.to_csv(args.out / "distances.csv", index=False)
    (args.out / "distances.md").write_text(distances_markdown(probes))
    print(accuracy_markdown(table) + "\n" + distances_markdown(probes))
    if args.english:
        out = args.out.parent / "english"
        frame = english(ok_jobs(args.english), out / "report.csv", seeds)
        frame.to_csv(out / "english.csv", index=False)
        (out / "english.md").write_text(english_markdown(frame))
        print(english_markdown(frame))


if __name__ == "__main__":
    main()
