"""The screen table of docs/study/report.md, from the screen sweep's job folders.

    python docs/study/screen_table.py multirun/study/screen --out docs/study/screen

One row per (language, adjustment setting): the settings that differ, the
held-out distances and English drift the adjustment recorded
(``evidence.json`` of the adjusted model, 1,000 held-out pairs, never
trained on), and retrieval accuracy on the same held-out pairs (layer 7 =
the paper code's default, layer 11 = e5_small's last, and the mean over all
12 layers and both directions) with ``xlt-report``'s paired permutation test
against the original model.  Writes ``screen.csv``, ``screen.md`` and
``screen.png|pdf`` (English drift vs retrieval gain).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from xlt import results
from xlt.report import collect, summarise

SETTINGS = ("corpus.size", "adjustment.lr", "adjustment.reduction", "adjustment.dropout", "adjustment.freeze_embeddings")
LAYERS = (7, 11)


def evidence(run_dir: str) -> dict:
    """The adjusted model's evidence.json (empty for the original model)."""
    states = results.read(Path(run_dir)).get("retrieval", {}).get("evaluated_states", {})
    path = states.get("adjusted")
    return json.loads((Path(path) / "evidence.json").read_text()) if path else {}


def screen(dirs: list[str], settings: tuple[str, ...] = SETTINGS, more=lambda probe, before: {}) -> pd.DataFrame:
    """One row per job; ``settings`` are the swept config columns, ``more(probe, before)``
    extra distance columns from the adjusted and the original probes (study 2 passes both)."""
    jobs = collect(dirs)
    ok = jobs[(jobs["status"] == "ok") & jobs["metric"].eq("accuracy")]
    summary = summarise(ok, iterations=1000)
    rows = []
    for run_dir, job in ok.groupby("run_dir"):
        first = job.iloc[0]
        row = {"lang": first["lang"], "mode": first["mode"]}
        row.update({key: first.get(key) if first["mode"] != "original" else "" for key in settings})
        found = evidence(run_dir)
        probe = found.get("adjusted", {})
        row["_before"] = found.get("original", {})
        row.update(
            job_s=first["runtime_s"], steps=found.get("steps", 0), adjust_s=found.get("seconds", 0.0),
            related=probe.get("related_mean"), unrelated=probe.get("unrelated_mean"),
            ratio=(probe["related_mean"] / probe["unrelated_mean"]) if probe else None,
            drift=probe.get("english_drift_mean", 0.0),
            **more(probe, row["_before"]),
        )
        lang = first["lang"]
        values = job.set_index("eval_set")["value"]
        row["retrieval_mean"] = 100 * values[[s for s in values.index if s.startswith(f"retrieval.{lang}.")]].mean()
        cells = summary[summary["config_hashes"].str.contains(first["config_hash"], regex=False)]
        for layer in LAYERS:
            for direction in (f"en-{lang}", f"{lang}-en"):
                name = f"retrieval.{lang}.{direction}.L{layer}"
                cell = cells[cells["eval_set"] == name].iloc[0]
                row[f"L{layer} {direction.replace(lang, 'xx')}"] = 100 * cell["mean"]
                row[f"p L{layer} {direction.replace(lang, 'xx')}"] = cell.get("p_vs_original")
        rows.append(row)
    frame = _original_distances(pd.DataFrame(rows))
    frame["sort"] = frame["mode"].ne("original")
    return frame.sort_values(["lang", "sort", *settings], key=lambda c: c.astype(str)).drop(columns="sort").reset_index(drop=True)


def _original_distances(frame: pd.DataFrame) -> pd.DataFrame:
    """The original model's distances: the "before" of an adjusted model of the
    same language (the held-out pairs do not depend on corpus.size)."""
    for index, row in frame[frame["mode"] == "original"].iterrows():
        befores = [b for b in frame.loc[(frame["lang"] == row["lang"]) & (frame["mode"] != "original"), "_before"] if b]
        if befores:
            b = befores[0]
            frame.loc[index, ["related", "unrelated", "ratio", "drift"]] = [
                b["related_mean"], b["unrelated_mean"], b["related_mean"] / b["unrelated_mean"], 0.0]
    return frame.drop(columns="_before")


def markdown(frame: pd.DataFrame) -> str:
    """Short settings labels, distances to 3 digits, accuracies to 1 with * when p < 0.05."""
    lines = ["| lang | setting | steps | related | unrelated | ratio | drift | ret. mean | L7 en→xx | L7 xx→en | L11 en→xx | L11 xx→en |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        accs = []
        for layer in LAYERS:
            for d in ("en-xx", "xx-en"):
                p = r[f"p L{layer} {d}"]
                accs.append(f"{r[f'L{layer} {d}']:.1f}" + ("*" if pd.notna(p) and p < 0.05 else ""))
        lines.append(f"| {r['lang']} | {label(r)} | {int(r['steps'])} | {r['related']:.3f} | {r['unrelated']:.3f} | "
                     f"{r['ratio']:.3f} | {r['drift']:.3f} | {r['retrieval_mean']:.1f} | " + " | ".join(accs) + " |")
    return "\n".join(lines) + "\n"


def label(r) -> str:
    if r["mode"] == "original":
        return "original"
    return (f"{int(r['corpus.size']) // 1000}K lr {float(r['adjustment.lr']):g} {r['adjustment.reduction']}"
            + (" dropout" if str(r["adjustment.dropout"]) == "True" else "")
            + (" emb-trained" if str(r["adjustment.freeze_embeddings"]) == "False" else ""))


def reduction_colour(r) -> str:
    return "C0" if r["adjustment.reduction"] == "sum" else "C1"


def figure(frame: pd.DataFrame, out: Path, label=label, colour=reduction_colour) -> None:
    """English drift vs retrieval gain over the original, one panel per language
    (``label`` and ``colour`` of a row: study 2 passes its own)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = sorted(frame["lang"].unique())
    fig, axes = plt.subplots(1, len(langs), figsize=(6 * len(langs), 4.5), squeeze=False)
    for ax, lang in zip(axes[0], langs):
        rows = frame[frame["lang"] == lang]
        base = rows.loc[rows["mode"] == "original", "retrieval_mean"].iloc[0]
        for _, r in rows[rows["mode"] != "original"].iterrows():
            ax.scatter(r["drift"], r["retrieval_mean"] - base, color=colour(r))
            ax.annotate(label(r), (r["drift"], r["retrieval_mean"] - base), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(title=f"en-{lang}: adjusted e5_small, 1,000 held-out pairs", xlabel="English drift (mean L2 to the original, last layer)",
               ylabel="retrieval gain over the original (points)")
    fig.tight_layout()
    for suffix in ("png", "pdf"):
        fig.savefig(out / f"screen.{suffix}", dpi=150)
    plt.close(fig)


def main(doc: str = __doc__, table=screen, text=markdown, plot=figure) -> None:
    """Parse ``dirs --out``, write screen.csv / .md / .png / .pdf (study 2 passes its own pieces)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    frame = table(args.dirs)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "screen.csv", index=False)
    (args.out / "screen.md").write_text(text(frame))
    plot(frame, args.out)
    print(text(frame))


if __name__ == "__main__":
    main()
