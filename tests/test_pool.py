"""WikiMatrix scale (issue 23): the ``corpus.pool_size`` pool, fast_align's
streamed EM in bounded memory, every core for tokenising and the E-step, and
progress lines."""

from __future__ import annotations

import logging
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from xlt import cores, keys
from xlt.config import CorpusConfig
from xlt.contract import compose as compose_config
from xlt.data import fast_align as F
from xlt.data import parallel as P
from xlt.data.sentences import Sentences
from xlt.errors import XltError
from xlt.stages.align import align_stage

# --------------------------------------------------------------------------- the pool


def _corpus(tmp_path: Path, n: int = 60) -> str:
    """``target ||| English``; line k is marked by k on both sides; line 7 is too long."""
    rows = [(f"e{k} a b c", f"t{k} x y") for k in range(n)]
    rows[7] = (" ".join(["long"] * 11), "t7 x")
    path = tmp_path / "c.ru-en"
    path.write_text("".join(f"{target} ||| {english}\n" for english, target in rows), encoding="utf-8")
    return str(path)


def _cfg(tmp_path: Path, corpus: str, *overrides: str):
    return compose_config(["model=tiny", "corpus=local", "corpus.format=fast_align", f"corpus.path={corpus}",
                           "corpus.max_words=10", "corpus.heldout=3", "corpus.pool_size=12", "corpus.size=5", "seed=1",
                           f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides])


def _pool_lines(path: Path) -> list[int]:
    return [int(row.split("\t")[0]) for row in (path / "pairs.tsv").read_text(encoding="utf-8").splitlines()]


def test_pool_size_aligns_one_seeded_draw_that_every_size_and_seed_samples(tmp_path: Path) -> None:
    """The pool is a draw of pool_size + heldout usable pairs, the same for every
    job seed; samples and held-out pairs of every size and seed come from it and
    share its one alignment; another pool_size is another artifact."""
    corpus = _corpus(tmp_path)
    export = tmp_path / "export.align"
    runs = [align_stage(_cfg(tmp_path, corpus, f"corpus.size={size}", f"seed={seed}", f"aligner.export={export}"))
            for size, seed in ((5, 1), (12, 2), (8, 3))]
    assert len({run.path for run in runs}) == 1
    assert len([p for p in (tmp_path / "cache" / "alignments").iterdir() if p.is_dir()]) == 1
    lines = _pool_lines(runs[0].path)
    assert len(lines) == 15 and lines == sorted(lines)
    assert lines != list(range(1, 16)) and 8 not in lines  # a draw, of usable pairs (line 8 = row 7 is too long)
    pool_words = {f"e{line - 1}" for line in lines}
    for run in runs:
        assert {p.english[0] for p in run.train + run.heldout} <= pool_words
        assert len(run.heldout) == 3
    assert [len(run.train) for run in runs] == [5, 12, 8]
    exported = export.read_text().split("\n")[:-1]
    assert len(exported) == 60 and all((text == "") == (k + 1 not in lines) for k, text in enumerate(exported))

    other = align_stage(_cfg(tmp_path, corpus, "corpus.pool_size=20"))
    assert other.path != runs[0].path and len(_pool_lines(other.path)) == 23


def test_a_size_and_seed_sweep_shares_one_alignment_key(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    dirs = {keys.alignment_dir(_cfg(tmp_path, corpus, f"corpus.size={size}", f"seed={seed}"))
            for size in (5, 8, 12) for seed in (1, 2)}
    assert len(dirs) == 1
    assert keys.alignment_dir(_cfg(tmp_path, corpus, "corpus.pool_size=20")) not in dirs
    assert keys.alignment_dir(_cfg(tmp_path, corpus, "corpus.pool_size=null")) not in dirs
    # the pool is the first pool_size + heldout pairs of one draw: the same pairs, the same artifact
    assert keys.alignment_dir(_cfg(tmp_path, corpus, "corpus.pool_size=13", "corpus.heldout=2")) in dirs


def test_every_corpus_field_but_the_sampling_ones_keys_the_alignment(tmp_path: Path) -> None:
    """The key's corpus part is every CorpusConfig field except keys.POOL_FREE
    (it held an allow-list before: a new field that filters pairs would have
    reused a stale alignment).  Today's fields give the key they always gave."""
    from dataclasses import fields

    cfg = _cfg(tmp_path, _corpus(tmp_path))
    corpus = keys.alignment_key(cfg)["corpus"]
    assert set(corpus) == {f.name for f in fields(CorpusConfig)} - set(keys.POOL_FREE)
    assert corpus == {"format": "fast_align", "min_score": None, "max_words": 10}


def prepare_corpus(cfg: CorpusConfig, lang: str, data_root: str, seed: int):
    """``(train, heldout)`` word pairs drawn without aligning anything: with a
    pool, from the pool; without one, only the pairs the seed draws are
    tokenised (the per-seed draw from the whole corpus, independent of the
    alignment stage's path)."""
    if cfg.pool_size is not None:
        pool = P.load_pool(cfg, lang, data_root)
        train, heldout = P.sample_pool(pool, cfg, seed)
        return [pool.pair(k) for k in train], [pool.pair(k) for k in heldout]
    scan = P._scan(cfg, lang, data_root)
    drawn = P.draw(scan, seed, cfg.heldout + cfg.size, cfg.max_words)
    heldout, sample = P._split(drawn.ranks.tolist(), cfg, scan.path, len(scan))
    position = {rank: k for k, rank in enumerate(drawn.ranks.tolist())}

    def pair(rank: int) -> P.SentencePair:
        return P.SentencePair(drawn.english.words(position[rank]), drawn.target.words(position[rank]))

    return [pair(r) for r in sample], [pair(r) for r in heldout]


def test_prepare_corpus_samples_the_same_pool(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    cfg = _cfg(tmp_path, corpus, "corpus.size=9", "seed=4")
    aligned = align_stage(cfg)
    train, heldout = prepare_corpus(cfg.corpus, "ru", str(tmp_path), seed=4)
    assert [p.english for p in train] == [p.english for p in aligned.train]
    assert [p.english for p in heldout] == [p.english for p in aligned.heldout]


def test_a_pool_larger_than_the_corpus_is_all_of_it(tmp_path: Path, caplog) -> None:
    corpus = _corpus(tmp_path, n=12)
    with caplog.at_level(logging.INFO):
        aligned = align_stage(_cfg(tmp_path, corpus, "corpus.pool_size=100", "corpus.size=8"))
    assert len(_pool_lines(aligned.path)) == 11 and "has only 11 usable pairs" in caplog.text


def test_a_carriage_return_inside_a_line_is_a_space(tmp_path: Path) -> None:
    """Web corpora carry stray CRs: one inside a fast_align token must neither
    split the written pool's line nor stay inside a word."""
    corpus = Path(_corpus(tmp_path, n=12))
    lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = "t2 x\ry ||| e2 a b c\r\n"  # a CR inside a target token, and a CRLF ending
    corpus.write_bytes("".join(lines).encode("utf-8"))
    aligned = align_stage(_cfg(tmp_path, str(corpus), "corpus.pool_size=100", "corpus.size=8"))
    pairs = [*aligned.train, *aligned.heldout]
    assert len(_pool_lines(aligned.path)) == 11
    assert ["t2", "x", "y"] in [p.target for p in pairs] and not any("\r" in w for p in pairs for w in p.target)


def test_a_corpus_too_small_for_the_size_fails_before_the_aligner_runs(tmp_path: Path, monkeypatch) -> None:
    """corpus.size beyond what the corpus holds (the README once showed
    corpus.size=30000 on the 28.9K-pair en-ru default): one line before
    aligning (hours at a million pairs), not after, and no artifact."""
    import xlt.data.align as align

    calls = []
    monkeypatch.setattr(align, "align_sentences", lambda *args, **kwargs: calls.append(1))
    cfg = _cfg(tmp_path, _corpus(tmp_path, n=12), "corpus.pool_size=null", "corpus.size=9")
    with pytest.raises(XltError, match=r"^corpus.size=9 but .*c.ru-en has only 8 usable pairs \(at most 10 words "
                                       r"per side, after 3 held out\)$"):
        align_stage(cfg)
    assert calls == [] and not list((tmp_path / "cache" / "alignments").glob("*/meta.json"))


def test_without_pool_size_sampling_is_unchanged(tmp_path: Path) -> None:
    """pool_size=null: the pool is every usable pair and the per-seed draw is the
    one prepare_corpus makes from the whole corpus (issue 23 changed neither)."""
    corpus = _corpus(tmp_path)
    cfg = _cfg(tmp_path, corpus, "corpus.pool_size=null", "corpus.size=20", "seed=7")
    aligned = align_stage(cfg)
    assert len(_pool_lines(aligned.path)) == 59
    train, heldout = prepare_corpus(cfg.corpus, "ru", str(tmp_path), seed=7)
    assert [p.english for p in train] == [p.english for p in aligned.train]
    assert [p.english for p in heldout] == [p.english for p in aligned.heldout]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 8, 9, 17, 100, 1000, 4097, 65537, 200_003])
def test_shuffled_is_pythons_shuffle(n: int) -> None:
    """Every pool and sample is the seed's random.shuffle order: the numpy
    emulation must give it exactly (job seeds go up to 2**32; bit lengths
    1 to 18, blocks of every size, block and bit-length boundaries)."""
    import random

    from xlt.data.shuffle import shuffled

    for seed in (0, 1, 7, 12345, 2**32, 2**40 + 3):
        expected = list(range(n))
        random.Random(seed).shuffle(expected)
        assert shuffled(n, seed).tolist() == expected, seed


def test_sample_pool_draws_what_the_python_shuffle_drew() -> None:
    """``sample_pool`` on a pool of 3,000 of 40,000 pairs equals the draw it
    made with a shuffled Python list of every pair (before the numpy order):
    the first heldout + size pool members in the seed's order."""
    import random
    from types import SimpleNamespace

    ranks = np.sort(np.random.default_rng(0).choice(40_000, 3_000, replace=False))
    pool = SimpleNamespace(ranks=ranks, n_read=40_000, path="pool")
    cfg = SimpleNamespace(heldout=100, size=2_500, max_words=64)
    for seed in (1, 2, 2**32):
        order = list(range(40_000))
        random.Random(seed).shuffle(order)
        member = set(ranks.tolist())
        kept = [rank for rank in order if rank in member][:2_600]
        index = {rank: k for k, rank in enumerate(ranks.tolist())}
        train, heldout = P.sample_pool(pool, cfg, seed)
        assert heldout == [index[r] for r in sorted(kept[:100])]
        assert train == [index[r] for r in sorted(kept[100:])]


def test_a_subword_pool_aligns_the_tokenizers_pieces(tmp_path: Path, tiny_cache: Path, shared_data: Path) -> None:
    """aggregation=subword: the pool (drawn as words) is re-tokenised into the
    model's subword pieces chunk by chunk, the pairs over corpus.max_words=64
    pieces a side are dropped and the rest are aligned."""
    from xlt.models.encoder import load_tokenizer

    cfg = compose_config(["model=tiny", "lang=ru", "aggregation=subword", f"paths.cache_dir={tiny_cache}",
                          f"data.root={shared_data}", "corpus.size=60", "corpus.heldout=10", "corpus.pool_size=200",
                          f"paths.output_dir={tmp_path}"])
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    aligned = align_stage(cfg, tokenizer)
    dropped = aligned.subword_filter["dropped"]
    assert aligned.subword_filter == {"max_subwords": 64, "pairs": 210, "dropped": dropped} and dropped > 0
    assert len(_pool_lines(aligned.path)) == 210 - dropped and len(aligned.train) == 60
    vocabulary = tokenizer.get_vocab()
    for pair, links in zip(aligned.train, aligned.train_alignments):
        assert all(piece in vocabulary for piece in pair.english + pair.target)  # the tokenizer's pieces
        assert len(pair.english) <= 64 and len(pair.target) <= 64
        assert all(i < len(pair.english) and j < len(pair.target) for i, j in links)
    words, _ = prepare_corpus(cfg.corpus, "ru", str(shared_data), cfg.seed)  # the same sample, as words
    assert sum(len(p.english) for p in aligned.train) > 1.1 * sum(len(p.english) for p in words)
    assert sum(map(len, aligned.train_alignments)) > 300


def _subword_corpus(tmp_path: Path, n: int = 20) -> str:
    """:func:`_corpus`, but row 9 has 3 English words that are 18 e5 pieces:
    within corpus.max_words=10 as words, beyond it as subwords."""
    path = Path(_corpus(tmp_path, n))
    rows = path.read_text(encoding="utf-8").splitlines()
    rows[9] = "t9 x ||| e9 floccinaucinihilipilification antidisestablishmentarianism"
    path.write_text("".join(f"{row}\n" for row in rows), encoding="utf-8")
    return str(path)


def test_a_subword_pool_drops_the_pairs_over_max_words_subwords(tmp_path: Path, tiny_cache: Path, caplog) -> None:
    """aggregation=subword: corpus.max_words counts subwords a side, as the
    paper's loader counts the tokens of its subword (``ori``) file: a pair
    whose words fit but whose subwords do not leaves the pool (sample and
    held-out pairs alike), whole pairs are kept whole, the log and the
    artifact say how many were dropped; word aggregations keep the pair."""
    from xlt.models.encoder import load_tokenizer

    corpus = _subword_corpus(tmp_path)
    words = align_stage(_cfg(tmp_path, corpus, "corpus.pool_size=null", "corpus.size=16"))
    assert 10 in _pool_lines(words.path) and len(_pool_lines(words.path)) == 19  # line 8: 11 words
    assert "e9" in {p.english[0] for p in words.train + words.heldout} and words.subword_filter is None

    cfg = _cfg(tmp_path, corpus, "corpus.pool_size=null", "corpus.size=15", "aggregation=subword")
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    assert len(tokenizer.tokenize("floccinaucinihilipilification antidisestablishmentarianism")) > 10
    with caplog.at_level(logging.INFO):
        aligned = align_stage(cfg, tokenizer)
    lines = _pool_lines(aligned.path)
    assert 10 not in lines and len(lines) == 18
    pairs = aligned.train + aligned.heldout
    assert len(aligned.heldout) == 3 and len(pairs) == 18  # every pair of the pool: the long one is in neither
    assert all(0 < len(p.english) <= 10 and 0 < len(p.target) <= 10 for p in pairs)
    assert aligned.subword_filter == {"max_subwords": 10, "pairs": 19, "dropped": 1}
    assert "dropped 1 of 19 pairs with more than 10 subwords on a side" in caplog.text


def test_the_size_check_sees_the_subword_pool(tmp_path: Path, tiny_cache: Path, monkeypatch) -> None:
    """corpus.size that the word pool holds but the subword pool does not:
    one line in subwords, before the aligner runs, no artifact."""
    import xlt.data.align as align
    from xlt.models.encoder import load_tokenizer

    calls = []
    monkeypatch.setattr(align, "align_sentences", lambda *args, **kwargs: calls.append(1))
    cfg = _cfg(tmp_path, _subword_corpus(tmp_path), "corpus.pool_size=null", "corpus.size=16", "aggregation=subword")
    with pytest.raises(XltError, match=r"^corpus.size=16 but .*c.ru-en has only 15 usable pairs \(at most 10 subwords "
                                       r"per side, after 3 held out\)$"):
        align_stage(cfg, load_tokenizer(cfg.model, cfg.paths.cache_dir))
    assert calls == [] and not list((tmp_path / "cache" / "alignments").glob("*/meta.json"))


def test_subword_sentences_must_fit_the_model_whole(tmp_path: Path, tiny_cache: Path) -> None:
    """Subword sentences are never cut, so max_words subwords + specials must
    fit the model's input: one line, before the corpus is read."""
    from xlt.models.encoder import load_tokenizer

    cfg = _cfg(tmp_path, str(tmp_path / "absent.ru-en"), "corpus.max_words=600", "aggregation=subword")
    with pytest.raises(XltError, match=r"^corpus.max_words=600: under aggregation=subword it counts subwords .* "
                                       r"takes at most 512 tokens \(2 of them special\): at most 510$"):
        align_stage(cfg, load_tokenizer(cfg.model, cfg.paths.cache_dir))


# --------------------------------------------------------------------------- the table index


def test_pair_index_numbers_keys_in_sorted_order_through_growth_and_collisions() -> None:
    rng = np.random.default_rng(0)
    distinct = rng.choice(1 << 40, 300_000, replace=False)
    index = F.PairIndex(n_f=1 << 20)
    for batch in np.array_split(rng.permutation(np.concatenate([distinct, distinct[:50_000]])), 7):
        index.add(batch)  # repeats inside and across batches; grows from 65,536 slots
    assert len(index) == len(distinct)
    index.freeze()
    query = rng.choice(distinct, 100_000)
    assert np.array_equal(index.lookup(query), np.searchsorted(np.sort(distinct), query))
    assert np.array_equal(index.rows(slice(None)), np.sort(distinct) // (1 << 20))


# --------------------------------------------------------------------------- the streamed EM


def _repetitive(lines: int) -> tuple[Sentences, Sentences]:
    """Many long lines over a small vocabulary: many cells, a small table."""
    rng = np.random.default_rng(1)
    src = [[f"s{w}" for w in rng.integers(0, 40, rng.integers(20, 30))] for _ in range(lines)]
    trg = [[f"t{w}" for w in rng.integers(0, 40, rng.integers(20, 30))] for _ in range(lines)]
    return Sentences.from_lists(src), Sentences.from_lists(trg)


def test_em_memory_is_the_table_and_one_unit_not_every_cell() -> None:
    """The E-step streams units of at most ``unit_cells`` cells: its peak memory
    stays far below one 4-byte value per cell of the corpus (what holding a
    cell -> table index for every sentence at once takes)."""
    src, trg = _repetitive(7000)
    cells = int((trg.lengths() * (src.lengths() + 1)).sum())
    settings = F.FastAlignSettings(iterations=2)
    tracemalloc.start()
    F.align(src, trg, settings, workers=1, unit_cells=1 << 14)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert cells > 4_000_000 and peak < cells * 4 / 4, (cells, peak)


def test_units_and_threads_do_not_change_the_links() -> None:
    """One unit per shape and one thread, or many small units on two threads:
    the same Viterbi links (the E-step is the same arithmetic, streamed) but for
    near-ties, where the counts' summation order decides (1-3 of 19,600 words
    on this random corpus of 40 words a side, which is full of ties)."""
    src, trg = _repetitive(800)
    settings = F.FastAlignSettings()
    whole = F.align(src, trg, settings, workers=1, unit_cells=1 << 30)
    streamed = F.align(src, trg, settings, workers=2, unit_cells=600)
    assert len(whole) == 19_600 and (whole != streamed).sum() <= 10
    assert (whole >= 0).mean() > 0.5  # most words linked: a real alignment, not all-null


def test_em_logs_progress_per_iteration(monkeypatch, caplog) -> None:
    monkeypatch.setenv("XLT_PROGRESS_S", "0")
    src, trg = _repetitive(50)
    with caplog.at_level(logging.INFO, logger="xlt.progress"):
        F.align(src, trg, F.FastAlignSettings(iterations=3), workers=1, name="fast_align forward")
    for stage in ("initial pass", "iteration 1/3", "iteration 3/3"):
        assert any(f"fast_align forward {stage}: 50/50 pairs (100%)" in line and "pairs/s" in line
                   for line in caplog.messages), stage


# --------------------------------------------------------------------------- links as arrays


def test_intersect_choices_equals_the_set_intersection() -> None:
    """The vectorised intersection of the two directions' choices is
    :func:`intersect` of their link lists, pair by pair (random choices,
    random lengths, nulls included)."""
    from xlt.data.align import intersect, intersect_choices

    rng = np.random.default_rng(3)
    en_len, tg_len = rng.integers(1, 9, 400), rng.integers(1, 9, 400)
    english = Sentences.from_lists([["e"] * k for k in en_len])
    target = Sentences.from_lists([["t"] * k for k in tg_len])
    line_en, line_tg = np.repeat(np.arange(400), en_len), np.repeat(np.arange(400), tg_len)
    forward = (rng.integers(0, 1 << 20, len(line_en)) % (tg_len[line_en] + 1) - 1).astype(np.int32)  # per English word
    reverse = (rng.integers(0, 1 << 20, len(line_tg)) % (en_len[line_tg] + 1) - 1).astype(np.int32)  # per target word
    links = intersect_choices(forward, reverse, english, target)
    forward_lists = [[(i, j) for i, j in enumerate(forward[english.offsets[k]:english.offsets[k + 1]]) if j >= 0]
                     for k in range(400)]
    reverse_lists = [[(i, j) for j, i in enumerate(reverse[target.offsets[k]:target.offsets[k + 1]]) if i >= 0]
                     for k in range(400)]
    expected = [intersect(f, r) for f, r in zip(forward_lists, reverse_lists)]
    assert list(links.lines()) == expected and sum(map(len, expected)) > 100


def test_precomputed_links_outside_a_pair_name_their_line(tmp_path: Path) -> None:
    from xlt.data.align import Links, check_bounds

    english, target = Sentences.from_lists([["a", "b"], ["c"]]), Sentences.from_lists([["x"], ["y", "z"]])
    check_bounds(Links.from_lists([[(1, 0)], [(0, 1)]]), english, target, ["f:1", "f:2"])
    with pytest.raises(XltError, match=r"f:2: link 1-1 outside the sentence pair \(2 target, 1 English words\)"):
        check_bounds(Links.from_lists([[(1, 0)], [(1, 1)]]), english, target, ["f:1", "f:2"])


# --------------------------------------------------------------------------- cores


def test_job_cores_respects_affinity_and_omp_num_threads(monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cores.job_cores() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the local_gpus launcher's share of the machine
    assert cores.job_cores() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    assert cores.job_cores() == 4


def _square_in(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def test_ordered_map_runs_on_the_pool_processes_in_task_order() -> None:
    with cores.process_pool(2) as pool:
        results = list(cores.ordered_map(_square_in, iter(range(40)), pool, in_flight=4))
    assert [square for square, _ in results] == [x * x for x in range(40)]
    assert os.getpid() not in {pid for _, pid in results}
    with cores.process_pool(1) as pool:  # one core: inline, no process started
        assert pool is None
        assert list(cores.ordered_map(_square_in, range(3), pool)) == [(x * x, os.getpid()) for x in range(3)]


def test_tokenising_on_two_processes_gives_the_pool_of_one(shared_data: Path, monkeypatch, caplog) -> None:
    """Reading and tokenising run in worker processes on the job's cores (with
    progress lines); the pool is the same as tokenised inline."""
    cfg = CorpusConfig(name="golden", format="fast_align", path=str(shared_data / "golden/fast_align/corpus.hi-en"),
                       size=100, heldout=10, pool_size=3000)
    pools, started = [], []
    real_pool = cores.process_pool

    def spy(workers: int):
        started.append(workers)
        return real_pool(workers)

    monkeypatch.setattr(P, "process_pool", spy)
    monkeypatch.setenv("XLT_PROGRESS_S", "0")
    for n in (1, 2):
        monkeypatch.setattr(P, "job_cores", lambda n=n: n)
        with caplog.at_level(logging.INFO, logger="xlt.progress"):
            pools.append(P.load_pool(cfg, "hi", str(shared_data)))
    assert started == [1, 2]
    one, two = pools
    assert np.array_equal(one.lines, two.lines) and len(one) == 3010
    assert all(one.pair(k) == two.pair(k) for k in range(0, len(one), 97))
    assert any(line.startswith("reading ") and "lines" in line for line in caplog.messages)
    assert any(line.startswith("tokenising ") and "pairs/s" in line for line in caplog.messages)
