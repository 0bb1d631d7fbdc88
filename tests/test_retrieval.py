"""Sentence retrieval: the search arithmetic, pooling, data readers and one job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import HUB_COMMIT, hub_at, tiny_encoder
from xlt.errors import XltError
from xlt.evaluation.retrieval import embed, pool, retrieve, similarity

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- search
def test_accuracy_equals_hand_computation():
    """Three queries, three candidates, worked out by hand (cosine)."""
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    candidates = torch.tensor([[2.0, 0.1], [1.0, 0.0], [0.0, 3.0]])
    # cosine rows: q0 -> c1 (1.0) > c0 (0.9988) > c2 (0); gold 0 is rank 2, nearest 1.
    #              q1 -> c2 (1.0) > c0 (0.0499) > c1 (0); gold 1 is rank 3, nearest 2.
    #              q2 -> c0 (0.7422) > c1 = c2 (0.7071); gold 2 ties with c1 (lower index ahead): rank 3.
    result = retrieve(queries, candidates, "cosine")
    assert result.nearest.tolist() == [1, 2, 0]
    assert result.rank.tolist() == [2, 3, 3]
    assert result.correct.tolist() == [0, 0, 0]
    result = retrieve(queries, candidates, "cosine", gold=[1, 2, 0])
    assert result.correct.tolist() == [1, 1, 1] and result.accuracy == 1.0
    assert result.rank.tolist() == [1, 1, 1]
    records = result.records()
    assert records[2] == {"id": 2, "gold": 0, "prediction": 0, "rank": 1, "correct": 1, "score": 1}


def test_l2_hand_computation_differs_from_cosine():
    """L2 sees length, cosine does not: a long vector in the right direction
    wins under cosine, a short one nearby wins under L2."""
    queries = torch.tensor([[1.0, 0.0]])
    candidates = torch.tensor([[10.0, 0.0], [0.8, 0.5]])
    assert retrieve(queries, candidates, "cosine", gold=[0]).correct.tolist() == [1]
    l2 = retrieve(queries, candidates, "l2", gold=[0])
    assert l2.nearest.tolist() == [1] and l2.rank.tolist() == [2]  # |q-c0|^2 = 81, |q-c1|^2 = 0.29
    assert torch.allclose(similarity(queries, candidates, "l2"), torch.tensor([[-81.0, -0.29]]))


def test_identical_embeddings_give_full_accuracy():
    vectors = torch.randn(300, 32, generator=torch.Generator().manual_seed(0))
    for distance in ("cosine", "l2"):
        result = retrieve(vectors, vectors.clone(), distance)
        assert result.accuracy == 1.0 and (result.rank == 1).all()


def test_shuffled_pairing_gives_chance():
    """Perfectly aligned vectors with the pairing shuffled: a query is right
    only at a fixed point of the permutation, about 1/n of them."""
    generator = torch.Generator().manual_seed(1)
    vectors = torch.randn(500, 32, generator=generator)
    permutation = torch.randperm(500, generator=generator)
    result = retrieve(vectors, vectors[permutation], "cosine")
    assert result.accuracy == pytest.approx(float((permutation == torch.arange(500)).float().mean()))
    assert result.accuracy < 0.02
    assert abs(float(np.mean(result.rank)) - 250) < 40  # gold sits at a random rank, mean ~ n/2
    # and the right pairing is recovered: gold = where each candidate went
    assert retrieve(vectors, vectors[permutation], "cosine", gold=torch.argsort(permutation).tolist()).accuracy == 1.0


def test_cosine_and_l2_agree_on_normalised_vectors():
    generator = torch.Generator().manual_seed(2)
    queries = torch.nn.functional.normalize(torch.randn(200, 16, generator=generator), dim=-1)
    candidates = torch.nn.functional.normalize(queries + 0.3 * torch.randn(200, 16, generator=generator), dim=-1)
    cosine, l2 = retrieve(queries, candidates, "cosine"), retrieve(queries, candidates, "l2")
    assert 0.2 < cosine.accuracy < 1.0  # a non-trivial case
    assert (cosine.nearest == l2.nearest).all() and (cosine.rank == l2.rank).all()


def test_chunked_search_equals_one_block(monkeypatch):
    import xlt.evaluation.retrieval as module

    generator = torch.Generator().manual_seed(3)
    queries, candidates = torch.randn(50, 8, generator=generator), torch.randn(50, 8, generator=generator)
    whole = retrieve(queries, candidates, "l2")
    monkeypatch.setattr(module, "QUERY_CHUNK", 7)
    chunked = retrieve(queries, candidates, "l2")
    assert (whole.nearest == chunked.nearest).all() and (whole.rank == chunked.rank).all()


# --------------------------------------------------------------------------- embedding
def test_pooling_hand_computation():
    hidden = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    special = torch.tensor([[1, 0, 0, 1], [1, 1, 1, 0]])  # row 1: only special tokens
    assert torch.equal(pool(hidden, attention, special, "cls", False), hidden[:, 0])
    assert torch.allclose(pool(hidden, attention, special, "mean", False)[0], hidden[0].mean(0))
    assert torch.allclose(pool(hidden, attention, special, "mean", False)[1], hidden[1, :3].mean(0))
    assert torch.allclose(pool(hidden, attention, special, "mean", True)[0], hidden[0, 1:3].mean(0))
    assert torch.allclose(pool(hidden, attention, special, "mean", True)[1], hidden[1, :3].mean(0))  # fallback


class _Tokenizer:
    """Ids are given directly: '3 4 5' -> [1, 3, 4, 5, 2] (1 = [CLS], 2 = [SEP])."""

    pad_token_id = 0

    def __call__(self, sentences, truncation, max_length, return_special_tokens_mask):
        ids = [[1, *map(int, s.split()), 2][:max_length] for s in sentences]
        return {"input_ids": ids, "special_tokens_mask": [[int(t in (1, 2)) for t in row] for row in ids]}


def test_embed_matches_one_sentence_at_a_time():
    """Length-sorted padded batches give each sentence's own vectors, layer k
    is the output of block k + 1, and order is restored."""
    encoder = tiny_encoder(seed=0)
    sentences = ["3 4 5 6 7 8", "9", "10 11 12", "13 14 15 16", "17 18"]
    batched = embed(encoder, _Tokenizer(), sentences, layers=[0, 1], batch_size=3)
    for i, sentence in enumerate(sentences):
        ids = torch.tensor([[1, *map(int, sentence.split()), 2]])
        with torch.no_grad():
            states = encoder(input_ids=ids, output_hidden_states=True).hidden_states
        for k in (0, 1):
            assert torch.allclose(batched[k, i], states[k + 1][0].mean(0), atol=1e-5)
    skipped = embed(encoder, _Tokenizer(), sentences, layers=[1], skip_special=True, batch_size=2)
    ids = torch.tensor([[1, 3, 4, 5, 6, 7, 8, 2]])
    with torch.no_grad():
        last = encoder(input_ids=ids, output_hidden_states=True).hidden_states[2][0]
    assert torch.allclose(skipped[0, 0], last[1:-1].mean(0), atol=1e-5)


def test_embedding_logs_progress_outside_a_terminal(monkeypatch, caplog):
    """A Slurm .out showed nothing for the minutes a retrieval pass takes:
    outside a terminal embedding logs a line every $XLT_PROGRESS_S seconds."""
    import logging

    import xlt.progress

    monkeypatch.setenv("XLT_PROGRESS_S", "0")
    monkeypatch.setattr(xlt.progress, "is_terminal", lambda: False)
    with caplog.at_level(logging.INFO, logger="xlt.progress"):
        embed(tiny_encoder(seed=0), _Tokenizer(), ["3 4", "5", "6 7 8", "9 10", "11"], layers=[0], batch_size=2,
              desc="retrieval original: English sentences")
    lines = [m for m in caplog.messages if m.startswith("retrieval original: English sentences: ")]
    assert [line.split(": ")[2].split(" (")[0] for line in lines] == ["1/3 batches", "2/3 batches", "3/3 batches", "3/3 batches"]


@pytest.mark.filterwarnings("ignore:User provided device_type of 'cuda'")
def test_half_precision_only_when_the_job_asks_for_it(monkeypatch):
    """On CUDA, embeddings are fp32 for a 32-true job (the paper code's) and
    bf16/fp16 autocast only for a bf16-*/16-* job; never on the CPU."""
    from xlt.evaluation import retrieval

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not isinstance(retrieval.autocast(cuda, "32-true"), torch.autocast)
    assert retrieval.autocast(cuda, "bf16-mixed").fast_dtype == torch.bfloat16
    assert retrieval.autocast(cuda, "16-mixed").fast_dtype == torch.float16
    assert not isinstance(retrieval.autocast(cpu, "bf16-mixed"), torch.autocast)
    seen = []
    real = retrieval.autocast
    monkeypatch.setattr(retrieval, "autocast", lambda device, precision: seen.append(precision) or real(device, precision))
    embed(tiny_encoder(seed=0), _Tokenizer(), ["3 4", "5"], layers=[0], precision="bf16-mixed")
    assert seen == ["bf16-mixed"]


@pytest.mark.slow
def test_real_encoder_retrieves_real_translations(e5_dir, e5_tokenizer, shared_data):
    """e5_small on 60 real en-ru pairs: far above chance (1/60) at layer 7."""
    from transformers import AutoModel

    from xlt.data.parallel import read_pairs

    pairs = read_pairs("tsv", str(shared_data / "parallel/en-ru/all.en-ru.tsv"), "ru")[:60]
    encoder = AutoModel.from_pretrained(e5_dir, add_pooling_layer=False)
    english = embed(encoder, e5_tokenizer, [e for e, _ in pairs], layers=[7])[0]
    russian = embed(encoder, e5_tokenizer, [r for _, r in pairs], layers=[7])[0]
    assert retrieve(english, russian).accuracy > 0.8
    assert retrieve(russian, english).accuracy > 0.8


# --------------------------------------------------------------------------- data
def write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_laser_layout_reader(tmp_path):
    from xlt.tasks.retrieval import read_laser

    write(tmp_path / "tatoeba.rus-eng.rus", ["Привет.", "Как дела?"])
    write(tmp_path / "tatoeba.rus-eng.eng", ["Hello.", "How are you?"])
    pairs = read_laser(str(tmp_path), "rus")
    assert pairs.english == ["Hello.", "How are you?"] and pairs.target == ["Привет.", "Как дела?"]


@pytest.mark.parametrize(
    "rus, eng, named",
    [
        (["a", "b", "c"], ["x", "y"], "tatoeba.rus-eng.eng: line counts differ"),
        (["a"], None, "Tatoeba file not found: {dir}/tatoeba.rus-eng.eng"),
        (["a", "", "c"], ["x", "y", "z"], "tatoeba.rus-eng.rus:2: empty line"),
    ],
)
def test_laser_reader_errors_name_the_file(tmp_path, rus, eng, named):
    from xlt.tasks.retrieval import read_laser

    write(tmp_path / "tatoeba.rus-eng.rus", rus)
    if eng is not None:
        write(tmp_path / "tatoeba.rus-eng.eng", eng)
    with pytest.raises(XltError) as err:
        read_laser(str(tmp_path), "rus")
    message = str(err.value)
    assert named.format(dir=tmp_path) in message and "\n" not in message


def test_hub_loader_reads_xtreme_columns(monkeypatch):
    """XTREME's Tatoeba schema: source_sentence = target language,
    target_sentence = English (the paper code reads it the same way)."""
    import datasets

    from xlt.tasks.retrieval import load_hub

    calls = []

    def fake_load_dataset(path, name, split, revision=None):
        calls.append((path, name, split, revision))
        return datasets.Dataset.from_dict({
            "source_sentence": ["Привет.\n", "Спасибо."], "target_sentence": ["Hello.\n", "Thanks."],
            "source_lang": ["rus", "rus"], "target_lang": ["eng", "eng"],
        })

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub_at(monkeypatch)
    pairs = load_hub("google/xtreme", "tatoeba.rus", "validation")
    assert calls == [("google/xtreme", "tatoeba.rus", "validation", HUB_COMMIT)]
    assert pairs.english == ["Hello.", "Thanks."] and pairs.target == ["Привет.", "Спасибо."]

    monkeypatch.setattr(datasets, "load_dataset", lambda path, name, split, revision: datasets.Dataset.from_dict({"text": ["a"]}))
    with pytest.raises(XltError, match="columns source_sentence, target_sentence missing"):
        load_hub("google/xtreme", "tatoeba.rus", "validation")


# --------------------------------------------------------------------------- jobs
@pytest.fixture(scope="module")
def small_corpus(shared_data, tmp_path_factory) -> Path:
    """The first 400 real en-ru pairs of the shared pool (aligning all 28.9K
    takes minutes): a data root for corpus=shared."""
    root = tmp_path_factory.mktemp("data")
    (root / "parallel" / "en-ru").mkdir(parents=True)
    lines = (shared_data / "parallel/en-ru/all.en-ru.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (root / "parallel/en-ru/all.en-ru.tsv").write_text("".join(lines[:400]), encoding="utf-8")
    return root


def compose(tmp_path: Path, cache: Path, data_root: Path, *overrides: str):
    from xlt.contract import compose as compose_job

    return compose_job(["model=tiny", "lang=ru", "task=retrieval", f"paths.cache_dir={cache}",
                        f"data.root={data_root}", "corpus.size=60", "corpus.heldout=40",
                        "trainer.enable_progress_bar=false", f"paths.output_dir={tmp_path}", *overrides])


@pytest.mark.parametrize(
    "override, message",
    [
        ("+task.options.layers=3", "task.options.layers: Key 'layers' not in 'RetrievalOptions'"),
        ("task.options.pooling=max", "task.options.pooling=max: valid: mean, cls"),
        ("task.options.layer=-1", "task.options.layer=-1: must be a layer index"),
        ("task.options.skip_special=true", None),
        ("+task.options.checkpoints.mine=", "^task.options.checkpoints.mine= is empty: give a model folder"),
    ],
)
def test_options_are_checked(tmp_path, shared_data, override, message):
    from xlt.contract import validate

    overrides = [override] + (["task.options.pooling=cls"] if message is None else [])
    with pytest.raises(XltError, match=message or "skip_special=true needs pooling=mean"):
        validate(compose(tmp_path, tmp_path, shared_data, *overrides))


@pytest.mark.slow
def test_retrieval_job_writes_results_predictions_and_figure(tmp_path, tiny_cache, small_corpus):
    """mode=adjusted: the adjusted state (built and cached), every layer, the
    held-out pairs of the alignment artifact; a missing fine-tuned state is
    skipped.  An evaluation-only task, run by the ordinary job."""
    from xlt.stages.align import align_stage
    from xlt.stages.job import run_job

    out = tmp_path / "run"
    cfg = compose(out, tiny_cache, small_corpus, "mode=adjusted", "task.options.layer=all", "task.eval_limit=30")
    results = run_job(cfg)
    assert results["status"] == "ok" and results["config"]["task"] == "retrieval"
    assert results["report"] == {"title": "Sentence retrieval", "significance": "sign_flip", "headline": ["accuracy"]}
    assert set(results["retrieval"]["evaluated_states"]) == {"adjusted"}  # adjusted_ft: no checkpoint
    names = {f"retrieval.ru.{d}.L{k}" for d in ("en-ru", "ru-en") for k in (0, 1)}
    assert set(results["metrics"]) == names
    heldout = align_stage(cfg).heldout
    assert results["retrieval"]["pairs"] == 30 and len(heldout) == 40
    for name in names:
        records = [json.loads(line) for line in (out / "predictions" / f"{name}.jsonl").read_text().splitlines()]
        assert len(records) == 30 == results["metrics"][name]["n"]
        assert np.mean([r["correct"] for r in records]) == pytest.approx(results["metrics"][name]["accuracy"])
        assert all(r["correct"] == int(r["rank"] == 1) == int(r["prediction"] == r["gold"]) for r in records)
    assert json.loads((out / "results.json").read_text())["metrics"] == results["metrics"]
    assert (out / "retrieval_layers.png").stat().st_size > 0 and (out / "retrieval_layers.pdf").stat().st_size > 0
    import csv

    from xlt.tracking import evaluation_scalars

    with (out / "logs" / "metrics.csv").open(newline="") as handle:  # the job's record, as every tracker gets it
        logged = {k: float(v) for k, v in list(csv.DictReader(handle))[-1].items() if k.startswith("eval/")}
    assert logged == pytest.approx(evaluation_scalars(results["metrics"])) and len(logged) == 8


@pytest.mark.slow
def test_a_checkpoints_path_that_is_no_model_fails_before_any_state_is_evaluated(tmp_path, tiny_cache, small_corpus):
    """task.options.checkpoints.mine=<a sweep folder>: the original state
    was evaluated and its predictions written, then AutoModel raised a
    ValueError (a traceback, no results.json).  Now one line naming the
    setting when the job starts, and nothing evaluated."""
    from xlt.stages.job import run_job

    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    out = tmp_path / "run"
    cfg = compose(out, tiny_cache, small_corpus, "task.options.layer=1", "task.options.states=[original,mine]",
                  f"+task.options.checkpoints.mine={sweep}")
    with pytest.raises(XltError, match=rf"^task.options.checkpoints.mine={sweep}: holds no model \(no config.json"):
        run_job(cfg)
    assert not (out / "predictions").exists() and not (tiny_cache / "alignments").exists()


def test_adjusted_and_adjusted_ft_are_one_adjustment(tmp_path, tiny_cache, small_corpus):
    """Fine-tuned with bf16 (a GPU's), evaluated with the default fp32
    trainer (a CPU's): the job's "adjusted" is the encoder the fine-tuning
    started from, not a second adjustment it builds (walkthrough audit), and
    results.json says so."""
    import shutil

    from xlt.stages.job import run_job

    root = tmp_path / "data"  # the parallel slice, and the demo's English NLI to fine-tune on
    shutil.copytree(small_corpus, root)
    (root / "nli").symlink_to(REPO / "data" / "demo" / "nli")
    finetuning = compose(tmp_path / "ft", tiny_cache, root, "task=xnli", "mode=adjusted", "trainer.precision=bf16-mixed",
                         "task.train_limit=32", "task.eval_limit=8", "task.epochs=1")
    trained = run_job(finetuning)
    results = run_job(compose(tmp_path / "ret", tiny_cache, root, "mode=adjusted", "task.options.layer=1"))
    evaluated = results["retrieval"]["evaluated_states"]
    assert evaluated == {"adjusted": trained["states"]["adjusted"], "adjusted_ft": trained["states"]["finetuned"]}
    assert results["retrieval"]["state_notes"] == {"adjusted": "the encoder adjusted_ft was fine-tuned from "
                                                   "(trainer.precision=bf16-mixed, this job: 32-true), not this job's own adjustment"}
    assert [p.name for p in (tiny_cache / "adjusted").iterdir()] == [Path(trained["states"]["adjusted"]).name]


@pytest.mark.slow
def test_cli_bad_laser_folder_is_one_line(tmp_path):
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "xlt", "task=retrieval", "model=tiny", "task.options.source=tatoeba_local",
         f"task.local.tatoeba={tmp_path}", f"hydra.run.dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=REPO, capture_output=True, text=True, env=environment, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"xlt: error: Tatoeba file not found: {tmp_path}/tatoeba.rus-eng.rus"


def test_per_layer_figure_from_several_jobs(tmp_path):
    """A sweep over mode puts each state in its own job; the figure joins them."""
    from xlt.evaluation.retrieval import layer_curves, main

    def job(mode: str, metrics: dict) -> Path:
        folder = tmp_path / mode
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({"config": {"mode": mode}, "metrics": metrics}))
        return folder

    original = {"retrieval.ru.en-ru.L0": {"accuracy": 0.5, "n": 4}, "retrieval.ru.en-ru.L1": {"accuracy": 0.75, "n": 4},
                "retrieval_ft.ru.ru-en.L1": {"accuracy": 0.25, "n": 4}, "xnli.ru": {"accuracy": 0.4, "n": 9}}
    assert layer_curves({"metrics": original}, "original") == {
        "original, en-ru": {0: 0.5, 1: 0.75}, "original fine-tuned, ru-en": {1: 0.25}}
    runs = [job("original", original), job("adjusted", {"retrieval_original.ru.en-ru.L0": {"accuracy": 1.0, "n": 4}})]
    assert main([*map(str, runs), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig.png").stat().st_size > 0 and (tmp_path / "fig.pdf").stat().st_size > 0
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2


def test_heldout_pairs_are_never_the_adjustment_sample(tmp_path, tiny_cache, small_corpus):
    from xlt.stages.align import align_stage, detokenize, heldout_sentences

    cfg = compose(tmp_path, tiny_cache, small_corpus)
    (english, target, _, _), corpus = heldout_sentences(cfg), align_stage(cfg)
    assert len(english) == len(target) == 40
    assert english == [detokenize(p.english, "en") for p in corpus.heldout]
    assert not set(english) & {detokenize(p.english, "en") for p in corpus.train}
    assert all(not e.endswith(" .") for e in english)  # running text again, not Moses tokens
    # aggregation=subword aligns subword tokens; retrieval still reads the same sentences
    assert heldout_sentences(compose(tmp_path, tiny_cache, small_corpus, "aggregation=subword"))[0] == english
