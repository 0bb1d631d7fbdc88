"""The screen table of docs/study2/report.md, from the screen sweep's job folders.

    python docs/study2/screen_table.py multirun/study2/screen --out docs/study2/screen

The first study's table (docs/study/screen_table.py) with the objective and
temperature as settings and one more column: how much the unrelated distance
shrinks (1 - unrelated after / unrelated before, held-out pairs), the claim
under test being that the contrastive objective does not contract the space.

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

import importlib.util
from pathlib import Path

import pandas as pd



def _first_study():
    """docs/study/screen_table.py, whose job reader, figure and command
    line this table shares."""
    path = Path(__file__).resolve().parents[1] / "study" / "screen_table.py"
    spec = importlib.util.spec_from_file_location("first_screen_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


study1 = _first_study()
LAYERS = study1.LAYERS

SETTINGS = ("adjustment.objective", "adjustment.temperature", "corpus.size", "adjustment.lr", "adjustment.reduction",
            "adjustment.dropout", "adjustment.freeze_embeddings")


def shrink(probe: dict, before: dict) -> dict:
    """How much the adjustment shrank the unrelated distance (0 for the original model)."""
    unrelated = before.get("unrelated_mean")
    return {"shrink": (1 - probe["unrelated_mean"] / unrelated) if probe and unrelated else 0.0}


def screen(dirs: list[str]) -> pd.DataFrame:
    return study1.screen(dirs, SETTINGS, shrink)


def markdown(frame: pd.DataFrame) -> str:
    """Short settings labels, distances to 3 digits, accuracies to 1 with * when p < 0.05."""
    lines = ["| lang | setting | steps | related | unrelated | unrelated shrink | ratio | drift | ret. mean | L7 en→xx | L7 xx→en | L11 en→xx | L11 xx→en |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        accs = []
        for layer in LAYERS:
            for d in ("en-xx", "xx-en"):
                p = r[f"p L{layer} {d}"]
                accs.append(f"{r[f'L{layer} {d}']:.1f}" + ("*" if pd.notna(p) and p < 0.05 else ""))
        lines.append(f"| {r['lang']} | {label(r)} | {int(r['steps'])} | {r['related']:.3f} | {r['unrelated']:.3f} | "
                     f"{100 * r['shrink']:.1f}% | {r['ratio']:.3f} | {r['drift']:.3f} | {r['retrieval_mean']:.1f} | " + " | ".join(accs) + " |")
    return "\n".join(lines) + "\n"


def label(r) -> str:
    if r["mode"] == "original":
        return "original"
    if r["adjustment.objective"] == "contrastive":
        return (f"contrastive T {float(r['adjustment.temperature']):g} lr {float(r['adjustment.lr']):g}"
                + (", English term summed" if r["adjustment.reduction"] == "sum" else ""))
    return f"L2 (A) lr {float(r['adjustment.lr']):g}"


def objective_colour(r) -> str:
    return "C1" if r["adjustment.objective"] == "contrastive" else "C0"


if __name__ == "__main__":
    study1.main(__doc__, screen, markdown, lambda frame, out: study1.figure(frame, out, label, objective_colour))
