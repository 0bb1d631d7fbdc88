"""Distance analysis: exact distances, top-k shares, separation, states, plots, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from xlt.evaluation.distances import (
    fixed_topk_share,
    histogram_overlap,
    pair_differences,
    pair_vectors,
    related_unrelated,
    separation_auc,
    state_summary,
    topk_share,
)
from xlt.data.words import AlignedExample


# --------------------------------------------------------------------------- exact distances
def tiny_bert(vocab: int = 40) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, pad_token_id=0)
    return BertModel(config, add_pooling_layer=False).eval()


def hand_examples() -> list[AlignedExample]:
    """Three pairs of different lengths with multi-subword spans."""
    rng = np.random.default_rng(3)
    ids = lambda n: [1] + rng.integers(3, 40, n - 2).tolist() + [2]  # noqa: E731
    return [
        AlignedExample(ids(7), ids(9), [(1, 3), (3, 4), (5, 6)], [(2, 3), (3, 6), (6, 8)], [(1, 3), (3, 4)]),
        AlignedExample(ids(5), ids(4), [(1, 2), (2, 4)], [(1, 3), (0, 1)], [(1, 2)]),
        AlignedExample(ids(11), ids(6), [(4, 6), (1, 2), (8, 10), (6, 7)], [(1, 2), (2, 5), (5, 6), (3, 4)], [(4, 6)]),
    ]


def direct_vectors(model: BertModel, ids: list[int], spans: list[tuple[int, int]]) -> np.ndarray:
    """Each sentence alone, no padding, span means in numpy."""
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
    return np.stack([hidden[s:e].mean(axis=0) for s, e in spans])


def test_distances_equal_direct_computation():
    model, examples = tiny_bert(), hand_examples()
    en = [direct_vectors(model, e.en_ids, e.pair_en) for e in examples]
    tgt = [direct_vectors(model, e.tgt_ids, e.pair_tgt) for e in examples]
    related_expected = np.concatenate([np.linalg.norm(a - b, axis=1) for a, b in zip(en, tgt)])
    unrelated_expected = []
    for i in range(len(examples)):
        other = tgt[(i + 1) % len(examples)]
        k = min(len(en[i]), len(other))
        unrelated_expected.append(np.linalg.norm(en[i][:k] - other[:k], axis=1))
    unrelated_expected = np.concatenate(unrelated_expected)

    model.train()  # as during adjustment: measured without dropout, mode restored after
    vectors = pair_vectors(model, examples, pad_id=0, batch_size=2)  # padding and two batches
    assert model.training
    related, unrelated = related_unrelated(vectors)
    np.testing.assert_allclose(related, related_expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(unrelated, unrelated_expected, rtol=1e-5, atol=1e-5)
    assert len(related) == 9 and len(unrelated) == 2 + 2 + 3  # min(3,2), min(2,4), min(4,3)

    rel_diffs, _ = pair_differences(vectors)
    squared = np.concatenate([a - b for a, b in zip(en, tgt)]) ** 2
    top3 = np.sort(squared, axis=1)[:, ::-1][:, :3].sum(axis=1) / squared.sum(axis=1)
    assert topk_share(rel_diffs, 3) == pytest.approx(top3.mean(), rel=1e-5)
    summary = state_summary(*pair_differences(vectors))
    assert summary["related_mean"] == pytest.approx(related_expected.mean(), rel=1e-5)
    assert summary["unrelated_median"] == pytest.approx(np.median(unrelated_expected), rel=1e-5)
    assert summary["mean_ratio"] == pytest.approx(related_expected.mean() / unrelated_expected.mean(), rel=1e-5)


def test_measuring_a_state_logs_progress_outside_a_terminal(monkeypatch, caplog):
    """xlt-analyze's measurement of a state logs a line every $XLT_PROGRESS_S
    seconds outside a terminal (a Slurm .out showed nothing for minutes); the
    probes inside an adjustment log none."""
    import logging
    from types import SimpleNamespace

    import xlt.progress
    from xlt.analysis.cli import measure

    monkeypatch.setenv("XLT_PROGRESS_S", "0")
    monkeypatch.setattr(xlt.progress, "is_terminal", lambda: False)
    state = SimpleNamespace(name="adjusted", label="adjusted", source="test", load=tiny_bert)
    with caplog.at_level(logging.INFO, logger="xlt.progress"):
        pair_vectors(tiny_bert(), hand_examples(), pad_id=0, batch_size=2)  # as a probe: no lines
        assert caplog.messages == []
        summary, related, _ = measure(state, hand_examples(), pad_id=0, batch_size=2)
    assert [m.split(" (")[0] for m in caplog.messages] == ["measuring adjusted: 1/2 batches", "measuring adjusted: 2/2 batches",
                                                           "measuring adjusted: 2/2 batches"]
    assert summary["label"] == "adjusted" and len(related) == 9


# --------------------------------------------------------------------------- top-k shares
def test_topk_share_on_constructed_vectors():
    hidden = 20
    base = torch.ones(4, hidden)
    base[:, 0] = 3.0  # one dimension holds 9 of the 28 squared units
    assert topk_share(base, 1) == pytest.approx(9 / 28)
    assert topk_share(base, 10) == pytest.approx(18 / 28)
    assert topk_share(base, hidden) == pytest.approx(1.0)
    assert topk_share(base, 500) == pytest.approx(1.0)
    assert fixed_topk_share(base, 1) == pytest.approx(9 / 28)
    # The large coordinate in a different dimension per pair: the per-pair
    # share is unchanged, the share of one fixed dimension drops.
    moved = torch.ones(4, hidden)
    moved[torch.arange(4), torch.arange(4)] = 3.0
    assert topk_share(moved, 1) == pytest.approx(9 / 28)
    assert fixed_topk_share(moved, 1) == pytest.approx((9 + 3) / 112)  # dim 0: one 9, three 1s
    # Equal coordinates: k/H; signs do not matter; zero rows are left out.
    uniform = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    assert topk_share(uniform, 1) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        topk_share(uniform, 0)


# --------------------------------------------------------------------------- separation
def test_auc_and_overlap():
    near, far = np.array([0.5, 1.0, 1.5, 2.0]), np.array([3.0, 4.0, 5.0])
    assert separation_auc(near, far) == 1.0
    assert separation_auc(far, near) == 0.0
    same = np.random.default_rng(0).normal(size=200)
    assert separation_auc(same, same.copy()) == pytest.approx(0.5)
    assert histogram_overlap(near, far) == 0.0
    assert histogram_overlap(same, same.copy()) == pytest.approx(1.0)
    # Against the definition, with ties: P(unrelated > related) + P(tie) / 2.
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 6, 50).astype(float), rng.integers(2, 9, 40).astype(float)
    brute = ((b[None, :] > a[:, None]).sum() + 0.5 * (b[None, :] == a[:, None]).sum()) / (a.size * b.size)
    assert separation_auc(a, b) == pytest.approx(brute)
    assert np.isnan(separation_auc(a, np.zeros(0)))


# --------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def ru_examples(shared_data, e5_tokenizer, tmp_path_factory):
    """100 held-out and 100 training en-ru pairs (of the first 600 of the
    shared en-ru file), aligned together by fast_align."""
    from xlt.config import AlignerConfig, CorpusConfig, TokensConfig
    from xlt.data.align import align_corpus
    from xlt.data.parallel import load_pool, sample_pool
    from xlt.data.words import build_aligned_examples

    root = tmp_path_factory.mktemp("corpus")
    lines = (shared_data / "parallel/en-ru/all.en-ru.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (root / "en-ru.tsv").write_text("".join(lines[:600]), encoding="utf-8")
    corpus = CorpusConfig(name="shared", path="{data_root}/en-{lang}.tsv", size=100, heldout=100, max_words=30)
    pool = load_pool(corpus, "ru", str(root))
    train_ids, heldout_ids = sample_pool(pool, corpus, seed=1)
    train, heldout = [pool.pair(k) for k in train_ids], [pool.pair(k) for k in heldout_ids]
    alignments = align_corpus(heldout + train, AlignerConfig())
    words = TokensConfig(name="words", use_words=True, use_cls=False, use_sep=False)
    probe = build_aligned_examples(e5_tokenizer, heldout, alignments[: len(heldout)], "avg", words)
    sample = build_aligned_examples(e5_tokenizer, train, alignments[len(heldout):], "avg", TokensConfig())
    return probe, sample


def short_adjustment(encoder, examples, pad_id: int, steps: int = 10, batch: int = 8, top_layers: int = 2):
    """Eq. 1 for a few steps on the top layers only (CPU budget of a test)."""
    from xlt.models.adjust import AlignmentLoss, collate_aligned, freeze_copy

    loss = AlignmentLoss(freeze_copy(encoder), reduction="sum")  # the setting the thresholds below were measured with
    encoder.requires_grad_(False)
    trained = encoder.encoder.layer[-top_layers:]
    trained.requires_grad_(True)
    optimizer = torch.optim.Adam(trained.parameters(), lr=2e-4, betas=(0.9, 0.98), eps=1e-9)
    encoder.train()
    for step in range(steps):
        indices = [(step * batch + i) % len(examples) for i in range(batch)]
        terms = loss(encoder, collate_aligned([examples[i] for i in indices], pad_id, indices))
        optimizer.zero_grad()
        (terms["pairs"] + terms["regularizer"]).backward()
        optimizer.step()
    return encoder.eval()


@pytest.mark.slow
def test_adjustment_pulls_related_pairs_together(ru_examples, e5_dir, e5_tokenizer):
    from transformers import AutoModel

    probe, sample = ru_examples
    assert len(probe) > 90 and sum(len(e.pair_en) for e in probe) > 800
    torch.manual_seed(0)
    encoder = AutoModel.from_pretrained(e5_dir, add_pooling_layer=False)
    pad = e5_tokenizer.pad_token_id
    before = state_summary(*pair_differences(pair_vectors(encoder, probe, pad)))
    after = state_summary(*pair_differences(pair_vectors(short_adjustment(encoder, sample, pad), probe, pad)))
    assert before["related_mean"] < before["unrelated_mean"]  # aligned words are already closer
    assert after["mean_ratio"] < before["mean_ratio"] - 0.02, (before, after)  # measured: 0.62 -> 0.58
    assert after["related_mean"] < before["related_mean"]
    assert 0.5 < before["auc"] <= 1.0 and after["auc"] >= before["auc"] - 0.01
    for summary in (before, after):  # k / H = 2.6% and 26% when nothing dominates
        assert 10 / 384 < summary["related_top10_share"] < summary["related_top100_share"] < 1.0


# --------------------------------------------------------------------------- plots
def test_plots_are_written(tmp_path):
    from matplotlib.image import imread

    from xlt.analysis.plots import plot_grid, plot_states

    rng = np.random.default_rng(0)
    states = {name: (rng.normal(2 + i, 0.5, 300), rng.normal(4, 0.5, 250)) for i, name in enumerate(("original", "adjusted", "continual"))}
    single = plot_states(states, tmp_path / "one" / "histograms", "ru", {"original": "original"})
    grid = plot_grid({"es": states, "hi": {k: v for k, v in states.items() if k != "adjusted"}}, tmp_path / "grid")
    for png, pdf in (single, grid):
        assert png.stat().st_size > 15_000 and pdf.stat().st_size > 5_000
        assert pdf.read_bytes().startswith(b"%PDF")
    height, width = imread(single[0]).shape[:2]
    grid_height, grid_width = imread(grid[0]).shape[:2]
    assert width > 2.5 * height  # three panels side by side
    assert grid_width == width and grid_height > 1.6 * height  # two rows, same columns


# --------------------------------------------------------------------------- states and CLI
def tiny_overrides(cache: Path, shared_data: Path) -> list[str]:
    return ["model=tiny", "lang=ru", f"paths.cache_dir={cache}", f"data.root={shared_data}",
            "corpus.size=60", "corpus.heldout=40", "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_cli_end_to_end_with_tiny_model(tiny_cache, shared_data, tmp_path, capsys):
    from xlt.analysis.cli import main

    out = tmp_path / "analysis"
    argv = tiny_overrides(tiny_cache, shared_data) + ["analysis.states=original,adjusted_ft", f"--out={out}"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "state adjusted_ft" in captured.err and "original" in captured.out
    summary = json.loads((out / "ru" / "summary.json").read_text())
    assert list(summary["states"]) == ["original"]
    values = summary["states"]["original"]
    assert values["related_n"] > 100 and 0.0 <= values["auc"] <= 1.0
    assert summary["config"]["lang"] == "ru" and summary["heldout_sentences"] <= 40
    assert (out / "ru" / "histograms.png").stat().st_size > 10_000
    distances = np.load(out / "ru" / "distances.npz")
    assert distances["original_related"].shape == (values["related_n"],)


@pytest.mark.parametrize("argv, message", [
    (["lang=xx"], "unknown lang 'xx'"),
    (["--bogus"], "unknown option"),
    (["analysis.batch_size=0"], "positive integer"),
    (["nosuchkey=1"], "nosuchkey"),
])
def test_cli_bad_input_is_one_line_and_code_2(argv, message, capsys, tmp_path):
    from xlt.analysis.cli import main

    assert main(argv + [f"--out={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_bad_second_language_fails_before_the_first_is_measured(tmp_path, capsys, monkeypatch):
    from xlt.analysis import cli

    monkeypatch.setattr(cli, "analyze_language", lambda *a: pytest.fail("measured before checking every language"))
    assert cli.main(["model=tiny", "lang=ru,xx", f"--out={tmp_path / 'analysis'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xlt-analyze: error: unknown lang 'xx'; valid: ") and "\n" not in err


def test_read_only_out_fails_before_measuring(tmp_path, capsys, monkeypatch):
    from xlt.analysis import cli

    monkeypatch.setattr(cli, "analyze_language", lambda *a: pytest.fail("measured before checking --out"))
    out = tmp_path / "ro"
    out.write_text("a file, so nothing can be created below it (chmod does not stop root)")
    assert cli.main(["model=tiny", f"--out={out / 'analysis'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not writable" in err and str(out) in err and "\n" not in err


def test_a_state_path_that_does_not_exist_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    """states.<name>=/typo was a warning, and the run went on without it."""
    from xlt.analysis import cli

    monkeypatch.setattr(cli, "analyze_language", lambda *a: pytest.fail("measured with a missing state path"))
    assert cli.main(["model=tiny", f"states.mine={tmp_path / 'typo'}", f"--out={tmp_path / 'analysis'}"]) == 2
    assert capsys.readouterr().err == f"xlt-analyze: error: states.mine={tmp_path / 'typo'}: no such file\n"
    assert not (tmp_path / "analysis").exists()


@pytest.mark.parametrize("argv, key", [(["--out"], "--out"), (["--out="], "--out"),
                                       (["analysis.out="], "analysis.out")])
def test_an_empty_out_is_one_line_not_the_working_directory(argv, key, tmp_path, capsys, monkeypatch):
    """str(Path("")) is ".": the "--out needs a directory" check never fired
    and the results went into the working directory."""
    from xlt.analysis import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "analyze_language", lambda *a: pytest.fail("measured into the working directory"))
    assert cli.main(["model=tiny", *argv]) == 2
    assert capsys.readouterr().err == f"xlt-analyze: error: {key} needs a directory (got an empty value)\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["--out", "lang=ru"], ["--out=lang=ru"], ["--out", "+corpus.size=5"]])
def test_an_override_given_as_out_is_one_line(argv, tmp_path, capsys, monkeypatch):
    """``--out lang=ru`` (the folder left out) wrote into a folder named
    "lang=ru" and measured the default language; ``./lang=ru`` still names one."""
    from xlt.analysis import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "analyze_language", lambda *a: pytest.fail("measured"))
    assert cli.main(["model=tiny", *argv]) == 2
    value = argv[-1].removeprefix("--out=")
    assert capsys.readouterr().err == (f"xlt-analyze: error: --out needs a directory, got the override {value} "
                                       f"(write --out DIR {value}, or --out ./{value} for a folder of that name)\n")
    assert list(tmp_path.iterdir()) == []
    assert cli.parse_args(["--out", "./lang=ru"]).out == Path("./lang=ru")
    assert cli.parse_args(["--out", "runs/lang=ru"]).out == Path("runs/lang=ru")


@pytest.mark.parametrize("value, message", [
    ("", "states.mine= is empty: give a model folder, a .ckpt or a job folder"),
    ("{sweep}", "states.mine={sweep}: holds no model (no config.json; give a save_pretrained model folder"),
])
def test_a_state_path_that_holds_no_model_is_one_line_before_any_work(value, message, tmp_path, capsys, monkeypatch):
    """states.mine=<a sweep folder> (or empty: ".") reached
    AutoModel.from_pretrained after the other states were measured, a
    ValueError traceback."""
    from xlt.analysis import cli

    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    monkeypatch.setattr(cli, "analyze_language", lambda *a: pytest.fail("measured with a state that is no model"))
    out = tmp_path / "analysis"
    assert cli.main(["model=tiny", "analysis.states=original", f"states.mine={value.format(sweep=sweep)}",
                     f"--out={out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"xlt-analyze: error: {message.format(sweep=sweep)}") and err.count("\n") == 1
    assert not out.exists()


def test_a_bad_config_creates_no_out_folder(tmp_path, capsys):
    """--out was created (ensure_writable) before the config was checked."""
    from xlt.analysis.cli import main

    assert main(["model=tiny", "lang=xx", f"--out={tmp_path / 'analysis'}"]) == 2
    assert capsys.readouterr().err.startswith("xlt-analyze: error: unknown lang 'xx'")
    assert list(tmp_path.iterdir()) == []


def test_a_corpus_too_small_in_a_later_language_fails_before_the_first_is_measured(tiny_cache, tmp_path, capsys,
                                                                                    monkeypatch):
    """lang=ru,hi with a corpus.size only ru's corpus holds: the size check
    ran when hi's corpus was read, after ru was measured and written."""
    from xlt.analysis import cli

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(cli, "analyze_language", lambda *a: pytest.fail("measured before every corpus was checked"))
    out = tmp_path / "analysis"
    argv = ["model=tiny", "corpus=demo", f"corpus.path='{repo}/data/demo/parallel/en-{{lang}}.tsv'",
            f"paths.cache_dir={tiny_cache}", "lang=ru,hi", "corpus.max_words=20", "corpus.size=380",
            "analysis.states=original", f"--out={out}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("xlt-analyze: error: corpus.size=380 but ") and "en-hi.tsv" in err and err.count("\n") == 1
    assert not out.exists()
