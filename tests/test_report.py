"""xlt-report end to end on a fake sweep tree with known answers."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ttest_rel

from tests.helpers import write_composed_job
from xlt import report
from xlt.evaluation.significance import marker

N_EXAMPLES = 60
SEEDS = (1, 2, 3)
LANGS = ("hi", "ru")
# Per-mode, per-lang probability that an example is correct.
ACCURACY = {("original", "ru"): 0.55, ("adjusted", "ru"): 0.8, ("original", "hi"): 0.5, ("adjusted", "hi"): 0.52}


def _config(mode: str, lang: str, seed: int, task: str = "xnli", code_version: str = "0.1.0+gitabc",
            size: int = 30000) -> dict:
    """As xlt.stages.job writes it: adjustment axes are null for mode=original."""
    axes = {"corpus": "shared", "size": size, "aggregation": "avg", "tokens": "all", "aligner": "fast_align"}
    if mode == "original":
        axes = dict.fromkeys(axes)
    return {
        "model": "e5_small", "lang": lang, "task": task, "mode": mode, **axes, "seed": seed,
        "config_hash": f"{task}-{mode}-{lang}-{axes['size']}", "code_version": code_version,
        "data_checksums": {"xnli.test.tsv": "c0ffee"},
    }


def _correct(mode: str, lang: str, seed: int) -> list[int]:
    rng = np.random.default_rng(zlib.crc32(f"{mode}/{lang}/{seed}".encode()))
    return [int(x) for x in rng.random(N_EXAMPLES) < ACCURACY[(mode, lang)]]


def write_job(root: Path, name: str, config: dict, metrics: dict | None, predictions: dict[str, list[dict]],
              status: str = "ok", error: str = "", report_info: dict | None = None) -> Path:
    run = root / name
    (run / "predictions").mkdir(parents=True)
    data = {"config": config, "metrics": metrics or {}, "status": status, "runtime_s": 1.0}
    if report_info:
        data["report"] = report_info
    if error:
        data["error"] = error
    (run / "results.json").write_text(json.dumps(data))
    for eval_set, records in predictions.items():
        (run / "predictions" / f"{eval_set}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def write_nli_job(root: Path, name: str, mode: str, lang: str, seed: int, title: str = "",
                  **config_args: Any) -> list[int]:
    correct = _correct(mode, lang, seed)
    records = [{"id": f"{lang}-{i}", "gold": 0, "prediction": 1 - c, "correct": c} for i, c in enumerate(correct)]
    metrics = {f"xnli.{lang}": {"accuracy": float(np.mean(correct)), "n": N_EXAMPLES}}
    report_info = {"title": title, "significance": "paired_ttest", "headline": ["accuracy"]} if title else None
    write_job(root, name, _config(mode, lang, seed, **config_args), metrics, {f"xnli.{lang}": records},
              report_info=report_info)
    return correct


@pytest.fixture
def sweep(tmp_path: Path) -> dict:
    """2 modes × 3 seeds × 2 langs; adjusted/hi seed 2 failed, adjusted/ru seed 3 never ran."""
    root = tmp_path / "multirun" / "2024-01-01" / "12-00-00"
    correct: dict[tuple[str, str, int], list[int]] = {}
    n = 0
    for mode in ("original", "adjusted"):
        for lang in LANGS:
            for seed in SEEDS:
                n += 1
                if (mode, lang, seed) == ("adjusted", "ru", 3):
                    continue
                if (mode, lang, seed) == ("adjusted", "hi", 2):
                    write_job(root, str(n), _config(mode, lang, seed), None, {}, status="failed",
                              error="RuntimeError: CUDA out of memory")
                    continue
                correct[(mode, lang, seed)] = write_nli_job(root, str(n), mode, lang, seed)
    return {"root": tmp_path / "multirun", "correct": correct, "out": tmp_path / "report"}


def _hand_mean(correct: dict, mode: str, lang: str) -> tuple[float, float, list[int]]:
    accs = [float(np.mean(c)) for (m, l, s), c in sorted(correct.items()) if (m, l) == (mode, lang)]
    seeds = [s for (m, l, s) in sorted(correct) if (m, l) == (mode, lang)]
    return float(np.mean(accs)), float(np.std(accs, ddof=1)), seeds


def test_collect_rows_and_failed(sweep: dict) -> None:
    df = report.collect([sweep["root"]])
    assert len(df) == 10 + 1  # 10 ok jobs × 1 eval set × 1 metric, plus the failed job
    failed = df[df["status"] == "failed"]
    assert len(failed) == 1 and failed.iloc[0]["error"].startswith("RuntimeError")
    assert set(df["metric"].dropna()) == {"accuracy"}


def test_end_to_end_report(sweep: dict, capsys: pytest.CaptureFixture) -> None:
    code = report.main([str(sweep["root"]), "--out", str(sweep["out"])])
    assert code == 0
    md = (sweep["out"] / "report.md").read_text()
    assert capsys.readouterr().out == md
    assert (sweep["out"] / "report.tex").read_text().count("\\begin{tabular}") >= 1

    csv = pd.read_csv(sweep["out"] / "report.csv")
    correct = sweep["correct"]
    for mode in ("original", "adjusted"):
        for lang in LANGS:
            row = csv[(csv["mode"] == mode) & (csv["lang"] == lang)].iloc[0]
            mean, std, seeds = _hand_mean(correct, mode, lang)
            assert row["mean"] == pytest.approx(mean, abs=1e-12)
            assert row["std"] == pytest.approx(std, abs=1e-12)
            assert row["n_seeds"] == len(seeds)
            assert row["expected_seeds"] == 3
            assert row["missing_seeds"] == 3 - len(seeds)

    # Significance: per-example means over the seeds both configurations have.
    for lang in LANGS:
        row = csv[(csv["mode"] == "adjusted") & (csv["lang"] == lang)].iloc[0]
        common = [s for s in SEEDS if ("adjusted", lang, s) in correct]
        a = np.mean([correct[("adjusted", lang, s)] for s in common], axis=0)
        b = np.mean([correct[("original", lang, s)] for s in common], axis=0)
        p = ttest_rel(a, b).pvalue
        assert row["p_vs_original"] == pytest.approx(p, rel=1e-9)
        assert row["seeds_vs_original"] == 2
        assert (row["marker"] if isinstance(row["marker"], str) else "") == marker(p, 0.05, "*")

    ru = csv[(csv["mode"] == "adjusted") & (csv["lang"] == "ru")].iloc[0]
    assert ru["p_vs_original"] < 0.01  # 0.80 vs 0.55 over 60 examples
    mean, std, _ = _hand_mean(correct, "adjusted", "ru")
    assert f"{mean * 100:.1f} ± {std * 100:.1f}* (1/3 missing)" in md

    assert "## Failed jobs (1)" in md
    assert "xnli/e5_small/hi/adjusted seed 2 [failed]: RuntimeError: CUDA out of memory" in md
    assert "## Provenance" in md and "xnli-adjusted-ru-30000" in md and "0.1.0+gitabc" in md
    assert "| hub commits | environments |" in md
    assert "WARNING" not in md


def test_full_gap_shows_missing_count(tmp_path: Path) -> None:
    """A configuration with no result at all for a language is a gap, not a crash."""
    root = tmp_path / "runs"
    for seed in SEEDS:
        for lang in LANGS:
            write_nli_job(root, f"o-{lang}-{seed}", "original", lang, seed)
        write_nli_job(root, f"a-ru-{seed}", "adjusted", "ru", seed)  # adjusted/hi never ran
    assert report.main([str(root), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    adjusted_line = next(line for line in md.splitlines() if line.startswith("| adjusted |"))
    assert adjusted_line.split(" | ")[1] == "— (3/3 missing)"  # columns: hi, ru


def test_mixed_code_versions_warn_and_mark(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed in (1, 2):
        write_nli_job(root, f"o{seed}", "original", "ru", seed)
        write_nli_job(root, f"a{seed}", "adjusted", "ru", seed, code_version=f"0.1.0+git{seed}")
    assert report.main([str(root), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Warnings" in md
    warning = next(line for line in md.splitlines() if line.startswith("- WARNING"))
    assert "0.1.0+git1" in warning and "0.1.0+git2" in warning
    adjusted_line = next(line for line in md.splitlines() if line.startswith("| adjusted |"))
    assert report.MIXED_MARK in adjusted_line
    assert "% WARNING" in (tmp_path / "out" / "report.tex").read_text()


def test_a_test_pairing_jobs_of_two_environments_is_warned_about(tmp_path: Path) -> None:
    """Seed 2's adjusted job ran on another CPU than its original baseline:
    the paired test mixes the machines' difference with the models' (study 2:
    an AMD EPYC and an Intel Xeon gave the same NER job numbers 0.5 points
    apart), so the report says so, once for the row, naming the two jobs.
    Seed 1 (same machine) and jobs that recorded no environment are not
    flagged."""
    root = tmp_path / "runs"
    intel = {"python": "3.11", "packages": {"torch": "2.13.0+cpu"}, "cpu": "Intel(R) Xeon(R) Processor", "gpus": []}
    amd = {**intel, "cpu": "AMD EPYC 7763"}
    for seed, (theirs, mine) in {1: (intel, intel), 2: (intel, amd), 3: (None, amd)}.items():
        for mode, env in (("original", theirs), ("adjusted", mine)):
            run = root / f"{mode}-{seed}"
            write_nli_job(root, run.name, mode, "ru", seed)
            if env:
                record = json.loads((run / "results.json").read_text())
                (run / "results.json").write_text(json.dumps({**record, "environment": env}))
    assert report.main([str(root), "--out", str(tmp_path / "out")]) == 0
    warnings = [line for line in (tmp_path / "out" / "report.md").read_text().splitlines() if line.startswith("- WARNING")]
    crossed = [line for line in warnings if "different environments" in line]
    assert len(crossed) == 1, warnings
    assert crossed[0].startswith("- WARNING: xnli/e5_small/ru/adjusted on xnli.ru against original: ")
    assert "(1 of 3 seeds; seed 2: AMD EPYC 7763, no GPU; torch 2.13.0+cpu in " in crossed[0]
    assert f"{root / 'adjusted-2'}, Intel(R) Xeon(R) Processor, no GPU; torch 2.13.0+cpu in {root / 'original-2'})" in crossed[0]


def test_a_configuration_read_with_two_data_checksums_keeps_its_provenance_row_in_its_columns(tmp_path: Path) -> None:
    """Two checksums of one configuration (its data changed between seeds) are
    joined inside one cell: a ``|`` between them, even in a code span, splits
    the GitHub table row and shifts every later column."""
    root = tmp_path / "runs"
    for seed, digest in ((1, "c0ffee"), (2, "decaf0")):
        config = {**_config("original", "ru", seed), "data_checksums": {"xnli.test.tsv": digest}}
        write_job(root, f"o{seed}", config, {"xnli.ru": {"accuracy": 0.5, "n": 1}}, {})
    assert report.main([str(root), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    table = md.split("## Provenance", 1)[1].strip().splitlines()
    header, row = table[0], next(line for line in table if line.startswith("| xnli-original-ru"))
    assert "c0ffee" in row and "decaf0" in row
    assert row.count("|") == header.count("|")


def test_no_results_dir_exit_2_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main([str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(empty) in err and "Traceback" not in err
    assert report.main([str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_unreadable_results_are_skipped(sweep: dict, caplog: pytest.LogCaptureFixture) -> None:
    bad = sweep["root"] / "broken"
    bad.mkdir()
    (bad / "results.json").write_text("{not json")
    df = report.collect([sweep["root"]])
    assert len(df) == 11
    assert any("broken" in s for s in df.attrs["skipped"])
    assert "skipping" in caplog.text
    assert report.main([str(sweep["root"]), "--out", str(sweep["out"])]) == 0
    assert "## Skipped files (1)" in (sweep["out"] / "report.md").read_text()


@pytest.mark.parametrize("edit", [{"report": {"headline": "accuracy"}}, {"metrics": {"xnli.ru": None}}])
def test_a_malformed_report_field_or_eval_set_is_a_skipped_file_not_a_silently_dropped_table(
        sweep: dict, edit: dict) -> None:
    """A headline given as a string became the metric names "a,c,c,..." (no
    table at all) and an eval set's null metrics vanished; both now skip the
    file with a warning, as any other malformed results.json."""
    bad = next(p for p in sorted(sweep["root"].rglob("results.json")))
    bad.write_text(json.dumps({**json.loads(bad.read_text()), **edit}))
    df = report.collect([sweep["root"]])
    assert [s.split(":")[0] for s in df.attrs["skipped"]] == [str(bad)]
    assert ("report.headline is 'accuracy'" in df.attrs["skipped"][0]
            or "metrics['xnli.ru'] is None" in df.attrs["skipped"][0])


def _ner_qa_tree(root: Path) -> dict:
    """NER (entity F1, permutation test) and QA (F1/EM in %, cross-lingual) jobs, 2 seeds."""
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "O"], ["B-LOC", "O", "O", "B-PER"]] * 40
    qa = {}
    for mode in ("original", "adjusted"):
        for seed in (1, 2):
            ner_pred = [list(s) if (mode == "adjusted" or i % 3) else ["O"] * len(s) for i, s in enumerate(gold)]
            ner_records = [{"id": f"s{i}", "gold": g, "prediction": p} for i, (g, p) in enumerate(zip(gold, ner_pred))]
            from seqeval.metrics import f1_score

            ner_metrics = {"wikiann.hi": {"f1": float(f1_score(gold, ner_pred)), "precision": 1.0, "recall": 0.5,
                                          "token_f1": 0.6, "n": len(gold)}}
            write_job(root, f"ner-{mode}-{seed}", {**_config(mode, "hi", seed, task="ner")}, ner_metrics,
                      {"wikiann.hi": ner_records})
            f1s = [80.0 + 10 * (mode == "adjusted") + seed + (i * (3 + seed + (mode == "adjusted")) % 7) for i in range(30)]
            qa[(mode, seed)] = f1s
            qa_records = [{"id": f"q{i}", "prediction": "x", "f1": f, "em": float(f > 85)} for i, f in enumerate(f1s)]
            qa_metrics = {
                name: {"f1": float(np.mean(f1s)), "exact_match": float(np.mean([f > 85 for f in f1s]) * 100), "n": 30}
                for name in ("xquad.ru", "xquad.q-ru.c-en")
            }
            write_job(root, f"qa-{mode}-{seed}", {**_config(mode, "ru", seed, task="qa")}, qa_metrics,
                      {"xquad.ru": qa_records, "xquad.q-ru.c-en": qa_records})
    return qa


def test_ner_and_qa_tables(tmp_path: Path) -> None:
    qa = _ner_qa_tree(tmp_path / "runs")
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--permutations", "200"]) == 0
    csv = pd.read_csv(tmp_path / "out" / "report.csv")
    ner = csv[(csv["eval_set"] == "wikiann.hi") & (csv["metric"] == "f1") & (csv["mode"] == "adjusted")].iloc[0]
    assert ner["p_vs_original"] == pytest.approx(1 / 201)  # perfect vs. a third of sentences emptied
    token = csv[(csv["metric"] == "token_f1") & (csv["mode"] == "adjusted")].iloc[0]
    assert token["p_vs_original"] == pytest.approx(1 / 201)  # word-level F1: the same test on its own counts
    assert math.isnan(csv[(csv["metric"] == "precision") & (csv["mode"] == "adjusted")].iloc[0]["p_vs_original"])
    qa_row = csv[(csv["eval_set"] == "xquad.q-ru.c-en") & (csv["metric"] == "f1") & (csv["mode"] == "adjusted")]
    # these files predate the "report" block: their QA F1 (0-100) is read as a fraction, the one scale
    assert qa_row.iloc[0]["mean"] == pytest.approx(np.mean([np.mean(qa[("adjusted", s)]) for s in (1, 2)]) / 100)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## ner — wikiann F1" in md and "## qa — xquad F1" in md and "## qa — xquad EM" in md
    assert "Table 3" not in md and "token_f1" not in md.split("## Failed")[0]  # headline metrics only
    qa_table = md[md.index("qa — xquad F1"):]
    header = qa_table.splitlines()[2]
    assert header == "| | ru | q-ru.c-en |"
    original = next(line for line in qa_table.splitlines() if line.startswith("| original |"))
    assert f"{np.mean([np.mean(qa[('original', s)]) for s in (1, 2)]):.1f}" in original  # in %, as NER and NLI


def test_sweep_tables_show_gains(tmp_path: Path) -> None:
    """Varying size gives a table of gains over the original, titled by the
    task (here as the table5_size preset titles it)."""
    root = tmp_path / "runs"
    title = "Table 5: corpus size"
    for seed in (1, 2):
        write_nli_job(root, f"o{seed}", "original", "ru", seed, title=title)
        write_nli_job(root, f"a{seed}", "adjusted", "ru", seed, title=title)
        write_nli_job(root, f"s{seed}", "adjusted", "ru", seed, size=1000, title=title)
    assert report.main([str(root), "--out", str(tmp_path / "out"), "--no-significance"]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Table 5: corpus size — xnli accuracy: gain over original by size" in md
    csv = pd.read_csv(tmp_path / "out" / "report.csv")
    small = csv[(csv["size"] == 1000)].iloc[0]
    base = csv[(csv["mode"] == "original")].iloc[0]
    assert small["gain"] == pytest.approx(small["mean"] - base["mean"])
    assert f"| adjusted (size=1000) | {small['gain'] * 100:+.1f} |" in md


def test_all_jobs_failed_and_odd_files_never_crash(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "runs"
    write_job(root, "f1", _config("adjusted", "ru", 1), None, {}, status="failed", error="boom")
    write_job(root, "odd", _config("original", "ru", 1), None, {})  # ok but no metrics
    (root / "nocfg").mkdir()
    (root / "nocfg" / "results.json").write_text('{"metrics": []}')
    (root / "badmetrics").mkdir()
    (root / "badmetrics" / "results.json").write_text(json.dumps({"config": _config("original", "ru", 2),
                                                                   "metrics": ["x"]}))
    assert report.main([str(root), "--out", str(tmp_path / "out")]) == 0
    md = capsys.readouterr().out
    assert "## Failed jobs (2)" in md and "boom" in md and "results.json has no metrics" in md
    assert "## Skipped files (2)" in md


def test_duplicate_seed_counts_once(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed in (1, 2):
        write_nli_job(root, f"o{seed}", "original", "ru", seed)
        write_nli_job(root, f"a{seed}", "adjusted", "ru", seed)
    write_nli_job(root, "z-rerun", "adjusted", "ru", 2)  # a second run of seed 2
    summary = report.summarise(report.collect([root]))
    adjusted = summary[summary["mode"] == "adjusted"].iloc[0]
    assert adjusted["n_seeds"] == 2 and adjusted["missing_seeds"] == 0
    assert any("duplicate" in w for w in summary.attrs["warnings"])


def test_an_original_cell_expects_the_seeds_of_the_cells_compared_with_it(tmp_path: Path) -> None:
    """Original seeds 1-2 against adjusted 1-5: the original cell showed no
    gap (it expected only its own seeds) while the gain set a 5-seed mean
    against a 2-seed one."""
    root = tmp_path / "runs"
    for seed in (1, 2, 3, 4, 5):
        write_nli_job(root, f"a{seed}", "adjusted", "ru", seed)
        if seed <= 2:
            write_nli_job(root, f"o{seed}", "original", "ru", seed)
    summary = report.summarise(report.collect([root])).set_index("mode")
    assert (summary.loc["original", "expected_seeds"], summary.loc["original", "missing_seeds"]) == (5, 3)
    assert (summary.loc["adjusted", "expected_seeds"], summary.loc["adjusted", "missing_seeds"]) == (5, 0)
    assert report.main([str(root), "--out", str(tmp_path / "out"), "--no-significance"]) == 0
    original = next(line for line in (tmp_path / "out" / "report.md").read_text().splitlines()
                    if line.startswith("| original"))
    assert "(3/5 missing)" in original, original


def test_a_row_whose_languages_ran_with_different_settings_is_named(tmp_path: Path) -> None:
    """ru at task.lr=5e-5 and hi at 1e-2 (in both modes) made one row whose
    label named neither: the setting differs between languages, never within one."""
    root = tmp_path / "runs"
    for mode in ("original", "adjusted"):
        for lang, lr in (("ru", "5e-05"), ("hi", "0.01")):
            for seed in (1, 2):
                write_composed_job(root, f"{mode}-{lang}-{seed}", ["model=tiny", "corpus=demo", f"mode={mode}",
                                                                   f"lang={lang}", f"seed={seed}", f"task.lr={lr}"],
                                   [1, 0, 1, 1], eval_set=f"xnli.{lang}")
    summary = report.summarise(report.collect([root]))
    assert sorted(w for w in summary.attrs["warnings"] if "language columns" in w) == [
        f"xnli/tiny/{mode}: its language columns ran with different settings, which its row label does not name: "
        "task.lr (hi: 0.01, ru: 5e-05)" for mode in ("adjusted", "original")]
    for lang, lr in (("ru", "5e-05"), ("hi", "0.01")):  # a second adjusted row, at another corpus size
        write_composed_job(root, f"small-{lang}", ["model=tiny", "corpus=demo", "corpus.size=100", "mode=adjusted",
                                                   f"lang={lang}", "seed=1", f"task.lr={lr}"], [1, 0, 1, 1],
                           eval_set=f"xnli.{lang}")
    named = sorted(w.split(":")[0] for w in report.summarise(report.collect([root])).attrs["warnings"]
                   if "language columns" in w)
    assert named == ["xnli/tiny/adjusted (size=100)", "xnli/tiny/adjusted (size=1000)", "xnli/tiny/original"], named
    same = tmp_path / "same"
    for lang in ("ru", "hi"):
        write_composed_job(same, lang, ["model=tiny", "mode=original", f"lang={lang}", "seed=1"], [1, 0, 1, 1],
                           eval_set=f"xnli.{lang}")
    assert not [w for w in report.summarise(report.collect([same])).attrs["warnings"] if "language columns" in w]


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_a_seed_without_predictions_is_named_and_left_out_of_the_test(tmp_path: Path, damage: str) -> None:
    """A run whose per-example predictions are missing (or empty) dropped the
    whole test without a word: the `*` vanished as if not significant.  Now
    the run is named, and the test uses the other common seeds."""
    root = tmp_path / "runs"
    for seed in SEEDS:
        write_nli_job(root, f"o{seed}", "original", "ru", seed)
        write_nli_job(root, f"a{seed}", "adjusted", "ru", seed)
    complete = report.summarise(report.collect([root])).set_index("mode").loc["adjusted"]
    predictions = root / "a2" / "predictions" / "xnli.ru.jsonl"
    predictions.unlink() if damage == "deleted" else predictions.write_text("")
    summary = report.summarise(report.collect([root]))
    adjusted = summary.set_index("mode").loc["adjusted"]
    assert complete["seeds_vs_original"] == 3 and adjusted["seeds_vs_original"] == 2
    assert adjusted["p_vs_original"] < 0.05 and adjusted["p_vs_original"] != complete["p_vs_original"]
    assert adjusted["mean"] == complete["mean"]  # the score itself still counts every seed
    assert [w for w in summary.attrs["warnings"] if "per-example" in w] == [
        "xnli/e5_small/ru/adjusted on xnli.ru against original: no per-example predictions (predictions/xnli.ru.jsonl "
        f"missing, empty or unreadable) in {root / 'a2'}; tested on the other 2 common seed(s)"]


# ---- configs written by the real writer (xlt.results) -----------------------------


def test_lr_sweep_gives_two_cells(tmp_path: Path) -> None:
    """`task.lr=5e-5,1e-2` used to merge into one cell ("duplicate results"); now each lr is a row."""
    root, correct = tmp_path / "runs", {}
    for lr, accuracy in (("5e-5", 0.8), ("1e-2", 0.3)):
        for seed in (1, 2):
            rng = np.random.default_rng(seed)
            correct[(lr, seed)] = [int(x) for x in rng.random(40) < accuracy]
            write_composed_job(root, f"lr{lr}-s{seed}", ["model=tiny", "lang=ru", f"task.lr={lr}", f"seed={seed}"],
                               correct[(lr, seed)])
    assert report.main([str(root), "--out", str(tmp_path / "out")]) == 0
    csv = pd.read_csv(tmp_path / "out" / "report.csv")
    assert len(csv) == 2 and sorted(csv["task.lr"]) == [5e-5, 1e-2]
    for lr, value in (("5e-5", 5e-5), ("1e-2", 1e-2)):
        row = csv[csv["task.lr"] == value].iloc[0]
        assert row["n_seeds"] == 2
        assert row["mean"] == pytest.approx(np.mean([np.mean(correct[(lr, s)]) for s in (1, 2)]))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| original (task.lr=5e-05) |" in md and "| original (task.lr=0.01) |" in md
    assert "duplicate" not in md


def test_seeds_differing_only_in_bookkeeping_are_one_cell(tmp_path: Path) -> None:
    """A checkpoint interval, the logger or the progress bar cannot change a
    result: two seeds that differ only there are one cell with two seeds,
    grouped by the identity the caches use (xlt.keys.result_config)."""
    root = tmp_path / "runs"
    write_composed_job(root, "s1", ["model=tiny", "lang=ru", "seed=1", "trainer.checkpoint_every_n_steps=7"], [1, 0, 1, 1])
    write_composed_job(root, "s2", ["model=tiny", "lang=ru", "seed=2", "logger=tensorboard",
                                    "trainer.enable_progress_bar=false"], [1, 1, 1, 1])
    summary = report.summarise(report.collect([root]))
    assert len(summary) == 1 and summary.iloc[0]["n_seeds"] == 2 and summary.attrs["axes"] == []
    assert summary.iloc[0]["config_hashes"].count(";") == 0  # and their job hashes are one


def test_killed_job_is_listed_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed in (1, 2):
        write_composed_job(root, f"s{seed}", ["model=tiny", "lang=ru", f"seed={seed}"], [1, 0, 1, 1])
    write_composed_job(root, "s3", ["model=tiny", "lang=ru", "seed=3"], None)  # killed: no results.json
    assert report.main([str(root), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "3 jobs read: 2 ok, 0 failed, 1 killed/incomplete" in md
    assert "## Killed or incomplete jobs (1)" in md and "xnli/tiny/ru/original seed 3 [killed]" in md
    assert "75.0 ± 0.0 (1/3 missing)" in md


def test_unknown_metric_exit_2_one_line(sweep: dict, capsys: pytest.CaptureFixture) -> None:
    assert report.main([str(sweep["root"]), "--out", str(sweep["out"]), "--metric", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err == "xlt-report: error: unknown metric 'bogus'; available: accuracy\n"
    assert not (sweep["out"] / "report.md").exists()


def _flip(vector: list[int], ones_to_zero: int, zeros_to_one: int, offset: int) -> list[int]:
    """``vector`` with the first n ones (from ``offset``) set to 0 and m zeros set to 1."""
    out, ones, zeros = list(vector), 0, 0
    for i in range(offset, len(out)):
        if out[i] == 1 and ones < ones_to_zero:
            out[i], ones = 0, ones + 1
        elif out[i] == 0 and zeros < zeros_to_one:
            out[i], zeros = 1, zeros + 1
    return out


def test_continual_beats_adjusted_not_original_gets_double_star(tmp_path: Path) -> None:
    """The paper's markers: ** = continual vs adjusted at p < 0.05, * = vs original."""
    root = tmp_path / "runs"
    continual = [int(x) for x in np.random.default_rng(0).random(100) < 0.6]
    adjusted = _flip(continual, 5, 0, offset=0)  # 5 examples worse: p ~ 0.03
    original = _flip(continual, 3, 1, offset=50)  # 3 worse, 1 better: p ~ 0.3
    vectors = {"original": original, "adjusted": adjusted, "continual": continual}
    common = ["model=tiny", "lang=ru", "corpus=demo"]
    for mode, vector in vectors.items():
        for seed in (1, 2):
            write_composed_job(root, f"{mode}-{seed}", [*common, f"mode={mode}", f"seed={seed}"], vector)
    assert report.main([str(root), "--out", str(tmp_path / "out")]) == 0
    csv = pd.read_csv(tmp_path / "out" / "report.csv").fillna({"marker": ""})
    row = csv[csv["mode"] == "continual"].iloc[0]
    p_adjusted, p_original = ttest_rel(continual, adjusted).pvalue, ttest_rel(continual, original).pvalue
    assert 0.02 < p_adjusted < 0.04 and p_original > 0.05
    assert row["p_vs_adjusted"] == pytest.approx(p_adjusted, rel=1e-9)
    assert row["p_vs_original"] == pytest.approx(p_original, rel=1e-9)
    assert row["marker"] == "**"
    assert csv[csv["mode"] == "original"].iloc[0]["marker"] == ""
    line = next(l for l in (tmp_path / "out" / "report.md").read_text().splitlines() if l.startswith("| continual"))
    assert line.endswith(f"| {np.mean(continual) * 100:.1f} ± 0.0** |")

    # Thresholds and baselines are options: only "* vs original at 0.5" now.
    assert report.main([str(root), "--out", str(tmp_path / "out2"), "--marker", "*=original:0.5"]) == 0
    csv = pd.read_csv(tmp_path / "out2" / "report.csv").fillna({"marker": ""})
    assert csv[csv["mode"] == "continual"].iloc[0]["marker"] == "*"
    assert "p_vs_adjusted" not in csv


def test_bad_marker_option_exit_2(sweep: dict, capsys: pytest.CaptureFixture) -> None:
    assert report.main([str(sweep["root"]), "--marker", "**=adjusted"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SYMBOL=MODE:ALPHA" in err


def test_a_misspelt_marker_mode_is_one_line_and_an_absent_one_a_warning(sweep: dict, capsys: pytest.CaptureFixture,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """``*=orignal:0.05`` tested nothing: the report said "* p < 0.05 vs
    orignal" with no marker anywhere, which reads as "nothing significant"
    (walkthrough audit).  A mode of conf/mode/ that no job has: a warning."""
    assert report.main([str(sweep["root"]), "--out", str(sweep["out"]), "--marker", "*=orignal:0.05"]) == 2
    assert capsys.readouterr().err == ("xlt-report: error: --marker '*=orignal:0.05': unknown mode 'orignal'; "
                                       "valid: adjusted, continual, original\n")
    assert not (sweep["out"] / "report.md").exists()
    assert report.main([str(sweep["root"]), "--out", str(sweep["out"]), "--marker", "**=continual:0.05"]) == 0
    assert [r.getMessage() for r in caplog.records if "--marker" in r.getMessage()] == [
        f"--marker '**=continual:0.05': no job under {sweep['root']} has mode=continual, so no cell gets **"]


def test_significance_test_is_chosen_by_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """retrieval: paired permutation on per-query correctness (the test its
    results.json names; files from before the "report" block get their task's test)."""
    from xlt.evaluation import significance

    root = tmp_path / "runs"
    vectors = {}
    for mode, p in (("original", 0.4), ("adjusted", 0.6)):
        for seed in (1, 2):
            vectors[(mode, seed)] = [int(x) for x in np.random.default_rng(seed + 10 * (mode == "adjusted")).random(50) < p]
            records = [{"id": f"q{i}", "gold": i, "prediction": i, "correct": c} for i, c in enumerate(vectors[(mode, seed)])]
            write_job(root, f"{mode}-{seed}", _config(mode, "ru", seed, task="retrieval"),
                      {"retrieval.ru": {"accuracy": float(np.mean(vectors[(mode, seed)])), "n": 50}},
                      {"retrieval.ru": records})
    means = {m: np.mean([vectors[(m, s)] for s in (1, 2)], axis=0) for m in ("original", "adjusted")}
    expected = significance.paired_permutation(means["adjusted"], means["original"], iterations=300, seed=0)
    summary = report.summarise(report.collect([root]), iterations=300)
    assert summary[summary["mode"] == "adjusted"].iloc[0]["p_vs_original"] == expected

    monkeypatch.setitem(significance.TESTS, "sign_flip", lambda metric, a, b, iterations: 0.001)
    summary = report.summarise(report.collect([root]), iterations=300)
    assert summary[summary["mode"] == "adjusted"].iloc[0]["p_vs_original"] == 0.001


def test_old_results_without_resolved_config_do_not_split_cells(tmp_path: Path) -> None:
    """A failed job recorded before results.json held the resolved config joins its cell."""
    root = tmp_path / "runs"
    for seed in (1, 2):
        write_composed_job(root, f"s{seed}", ["model=tiny", "lang=ru", f"seed={seed}"], [1, 0, 1, 1])
    identity = {"model": "tiny", "lang": "ru", "task": "xnli", "mode": "original", "seed": 3}
    write_job(root, "old", identity, None, {}, status="failed", error="boom")
    summary = report.summarise(report.collect([root]))
    assert len(summary) == 1 and summary.iloc[0]["missing_seeds"] == 1 and summary.attrs["axes"] == []


def test_layer_columns_in_natural_order() -> None:
    """Retrieval layers read L0, L1, L2, ..., L10, L11 (not L0, L1, L10, L11, L2)."""
    from xlt.report.render import _column_order

    columns = [f"ru.en-ru.L{k}" for k in (11, 2, 10, 0, 1)] + ["ru"]
    assert _column_order(columns) == ["ru", *(f"ru.en-ru.L{k}" for k in (0, 1, 2, 10, 11))]


@pytest.mark.parametrize("count", ["0", "-5"])
def test_permutations_below_one_exit_2_one_line(sweep: dict, capsys: pytest.CaptureFixture, count: str) -> None:
    """--permutations 0 used to drop every randomization test silently (p = NaN)."""
    assert report.main([str(sweep["root"]), "--out", str(sweep["out"]), "--permutations", count]) == 2
    err = capsys.readouterr().err
    assert err == (f"xlt-report: error: --permutations must be at least 1, got {count} (the randomization tests "
                   "need permutations; --no-significance skips every test)\n")
    assert not (sweep["out"] / "report.md").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0.61", None])
def test_a_metric_that_is_not_a_finite_number_is_warned_about(tmp_path: Path, value: Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A NaN, infinite or string metric used to become a silent "—" (or vanish):
    it is named in a warning and its seed counts as missing in its cell."""
    root = tmp_path / "runs"
    for seed in SEEDS:
        write_nli_job(root, f"o{seed}", "original", "ru", seed)
    bad = json.loads((root / "o2" / "results.json").read_text())
    bad["metrics"]["xnli.ru"]["accuracy"] = value
    (root / "o2" / "results.json").write_text(json.dumps(bad))
    assert report.main([str(root), "--out", str(tmp_path / "out"), "--no-significance"]) == 0
    warning = f"{root / 'o2'}/results.json: xnli.ru accuracy = {value!r} is not a finite number; that seed counts as missing"
    assert warning in caplog.text
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"- WARNING: {warning}" in md
    line = next(line for line in md.splitlines() if line.startswith("| original |"))
    assert "(1/3 missing)" in line and "—" not in line  # the mean of the two good seeds, the third missing


# ---- a baseline has the same settings, or there is none -----------------------------


def _vector(accuracy: float, seed: int, n: int = 80) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).random(n) < accuracy]


def _unmatched(md: str) -> list[str]:
    return [line for line in md.splitlines() if "with the same settings" in line]


def test_no_gain_or_marker_against_a_baseline_with_other_settings(tmp_path: Path) -> None:
    """Original runs on 100 test pairs in bf16, adjusted ones on 1000 in fp32:
    the adjusted cell used to get a gain and * against them.  Now it gets
    neither, and the report says why, naming the settings that differ."""
    root = tmp_path / "runs"
    common = ["model=tiny", "lang=ru", "corpus=demo"]
    for seed in (1, 2):
        write_composed_job(root, f"o{seed}", [*common, "task.eval_limit=100", "trainer.precision=bf16-mixed",
                                              f"seed={seed}"], _vector(0.4, seed))
        write_composed_job(root, f"a{seed}", [*common, "mode=adjusted", "task.eval_limit=1000", f"seed={seed}"],
                           _vector(0.9, seed))
    assert report.main([str(root), "--out", str(tmp_path / "out")]) == 0
    csv = pd.read_csv(tmp_path / "out" / "report.csv").fillna({"marker": ""})
    adjusted = csv[csv["mode"] == "adjusted"].iloc[0]
    assert adjusted["n_seeds"] == 2 and adjusted["mean"] == pytest.approx(np.mean([_vector(0.9, s) for s in (1, 2)]))
    assert math.isnan(adjusted["baseline_mean"]) and math.isnan(adjusted["gain"])
    assert math.isnan(adjusted["p_vs_original"]) and adjusted["marker"] == ""
    md = (tmp_path / "out" / "report.md").read_text()
    assert "*" not in next(line for line in md.splitlines() if line.startswith("| adjusted |"))
    assert _unmatched(md) == [
        "- WARNING: xnli/tiny/ru/adjusted: no original cell with the same settings (task.eval_limit: 1000 here, "
        "100 in original; trainer.precision: 32-true here, bf16-mixed in original): no gain or marker against "
        "original in its 1 cell(s) (xnli; accuracy)"]


def test_a_null_setting_is_a_value_not_a_wildcard(tmp_path: Path) -> None:
    """The original model trained on all English pairs (task.train_limit null),
    adjusted ones on all of them and on 100: only the first has a baseline
    (a null used to match anything, so the 100-pair cell was compared with
    the full-data original)."""
    root = tmp_path / "runs"
    common = ["model=tiny", "lang=ru", "corpus=demo"]
    for seed in (1, 2):
        write_composed_job(root, f"o{seed}", [*common, f"seed={seed}"], _vector(0.5, seed))
        write_composed_job(root, f"a{seed}", [*common, "mode=adjusted", f"seed={seed}"], _vector(0.9, seed))
        write_composed_job(root, f"l{seed}", [*common, "mode=adjusted", "task.train_limit=100", f"seed={seed}"],
                           _vector(0.1, seed))
    assert report.main([str(root), "--out", str(tmp_path / "out")]) == 0
    csv = pd.read_csv(tmp_path / "out" / "report.csv", keep_default_na=False)
    full, limited = (csv[(csv["mode"] == "adjusted") & (csv["task.train_limit"] == v)].iloc[0] for v in ("null", "100"))
    original = csv[csv["mode"] == "original"].iloc[0]
    assert float(full["gain"]) == pytest.approx(float(full["mean"]) - float(original["mean"]))
    assert full["marker"] == "*"
    assert limited["gain"] == limited["baseline_mean"] == limited["p_vs_original"] == limited["marker"] == ""
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| adjusted (task.train_limit=null) |" in md and "| adjusted (task.train_limit=100) |" in md
    assert _unmatched(md) == [
        "- WARNING: xnli/tiny/ru/adjusted (task.train_limit=100): no original cell with the same settings "
        "(task.train_limit: 100 here, null in original): no gain or marker against original in its 1 cell(s) "
        "(xnli; accuracy)"]


def test_settings_a_mode_does_not_read_keep_their_one_baseline(tmp_path: Path) -> None:
    """The paper's sweeps: corpus sizes (which the original model does not
    read) all compare with the one original cell, continual with the adjusted
    cell of the same adjustment; a continual run of another adjustment has no
    ** and is named."""
    root = tmp_path / "runs"
    common = ["model=tiny", "lang=ru", "corpus=demo"]
    for seed in (1, 2):
        write_composed_job(root, f"o{seed}", [*common, f"seed={seed}"], _vector(0.4, seed))
        for size in (100, 200):
            write_composed_job(root, f"a{size}-{seed}", [*common, "mode=adjusted", f"corpus.size={size}",
                                                         f"seed={seed}"], _vector(0.6, seed))
        write_composed_job(root, f"c{seed}", [*common, "mode=continual", "corpus.size=100", f"seed={seed}"],
                           _vector(0.9, seed))
        write_composed_job(root, f"x{seed}", [*common, "mode=continual", "corpus.size=100", "adjustment.lr=1e-4",
                                              f"seed={seed}"], _vector(0.9, seed))
    summary = report.summarise(report.collect([root]), iterations=100)
    original = summary[summary["mode"] == "original"].iloc[0]
    for size in ("100", "200"):
        row = summary[(summary["mode"] == "adjusted") & (summary["size"] == size)].iloc[0]
        assert row["gain"] == pytest.approx(row["mean"] - original["mean"]) and row["marker"] == "*"
    continual = summary[(summary["mode"] == "continual") & (summary["adjustment.lr"] != "0.0001")].iloc[0]
    assert continual["marker"] == "*,**" and continual["seeds_vs_adjusted"] == 2
    other = summary[(summary["mode"] == "continual") & (summary["adjustment.lr"] == "0.0001")].iloc[0]
    assert other["marker"] == "*" and math.isnan(other["p_vs_adjusted"]) and other["seeds_vs_adjusted"] == 0
    assert [w for w in summary.attrs["warnings"] if "same settings" in w] == [
        "xnli/tiny/ru/continual (adjustment.lr=0.0001): no adjusted cell with the same settings "
        "(adjustment.lr: 0.0001 here, 5e-05 in adjusted): no gain or marker against adjusted in its 1 cell(s) "
        "(xnli; accuracy)"]


def test_skipped_evaluation_sets_are_named_in_the_warnings(tmp_path: Path) -> None:
    """data=shared skips a set whose file is missing (results.json's
    skipped_eval_sets); the report used to say nothing, and a set skipped by
    every seed was simply absent.  One line per set names its jobs and why."""
    root = tmp_path / "runs"
    why = "sentence-pair file not found: /data/nli/xnli_mixed/test-ru.tsv"
    for name, overrides in (("o1", ["seed=1"]), ("o2", ["seed=2"]), ("a1", ["mode=adjusted", "seed=1"]),
                            ("h1", ["lang=hi", "seed=1"])):
        lang = "hi" if "lang=hi" in overrides else "ru"
        run = write_composed_job(root, name, ["model=tiny", "lang=ru", "corpus=demo", *overrides], [1, 0, 1, 1],
                                 eval_set=f"xnli.{lang}")
        if lang == "ru":
            data = json.loads((run / "results.json").read_text())
            (run / "results.json").write_text(json.dumps({**data, "skipped_eval_sets": {"xnli_mixed": why}}))
    assert report.main([str(root), "--out", str(tmp_path / "out"), "--no-significance"]) == 0
    line = ("evaluation set xnli_mixed (xnli, ru) was skipped by 3 job(s) (xnli/tiny/ru/original seeds 1,2; "
            f"xnli/tiny/ru/adjusted seed 1), so it is missing from their cells: {why}")
    md = (tmp_path / "out" / "report.md").read_text()
    assert [w for w in md.splitlines() if "skipped" in w] == [f"- WARNING: {line}"]
    assert f"% WARNING: {line}" in (tmp_path / "out" / "report.tex").read_text()


def test_predictions_are_held_one_eval_set_at_a_time_and_read_once(sweep: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The paired tests read every run's per-example predictions; kept for the
    whole report they grew with the sweep (497 MB for study 2's 40 XNLI
    jobs): an eval set's are dropped after its last cell, and none is read twice."""
    import importlib

    from xlt import results

    summarise = importlib.import_module("xlt.report.summarise")  # xlt.report.summarise is also a function's name
    held, reads = [], []
    read = results.read_predictions

    def reading(run_dir, eval_set):
        reads.append((str(run_dir), eval_set))
        return read(run_dir, eval_set)

    get = summarise._Predictions.get

    def getting(self, run_dir, eval_set):
        value = get(self, run_dir, eval_set)
        held.append({key[1] for key in self._cache})
        return value

    monkeypatch.setattr(results, "read_predictions", reading)
    monkeypatch.setattr(summarise._Predictions, "get", getting)
    assert report.main([str(sweep["root"]), "--out", str(sweep["out"])]) == 0
    assert {e for _, e in reads} == {"xnli.hi", "xnli.ru"} and len(reads) == len(set(reads))
    assert held and max(len(sets) for sets in held) == 1
