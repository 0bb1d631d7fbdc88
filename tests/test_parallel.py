"""Parallel corpus readers, tokenization and sampling (real data + tiny fixtures)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from xlt.config import CorpusConfig
from xlt.data.parallel import (SentencePair, corpus_path, load_pool, read_pairs, sample_pool,
                               wikimatrix_english_column, word_tokenize)
from xlt.errors import XltError


def write(path: Path, text: str | bytes) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(path)


# --------------------------------------------------------------------------- readers


def test_tsv(tmp_path: Path) -> None:
    path = write(tmp_path / "c.tsv", "\ufeffHello .\tПривет .\nTwo cats\tДве кошки\r\n")
    assert read_pairs("tsv", path, "ru") == [("Hello .", "Привет ."), ("Two cats", "Две кошки")]


def test_wikimatrix_english_column_and_min_score(tmp_path: Path) -> None:
    path = write(tmp_path / "WikiMatrix.en-ru.tsv", "1.2\tA house .\tДом .\n1.01\tLow .\tНизко .\n")
    assert read_pairs("wikimatrix", path, "ru", min_score=1.04) == [("A house .", "Дом .")]
    assert len(read_pairs("wikimatrix", path, "ru")) == 2
    # de-en files put English second (codes in alphabetical order).
    de = write(tmp_path / "WikiMatrix.de-en.tsv", "1.1\tEin Haus .\tA house .\n")
    assert read_pairs("wikimatrix", de, "de") == [("A house .", "Ein Haus .")]
    assert [wikimatrix_english_column(x) for x in ("es", "ru", "vi", "hi", "de")] == [1, 1, 1, 1, 2]


def test_wikimatrix_gzip(tmp_path: Path) -> None:
    path = tmp_path / "w.tsv.gz"
    path.write_bytes(gzip.compress("1.5\tYes .\tSí .\n".encode()))
    assert read_pairs("wikimatrix", str(path), "es") == [("Yes .", "Sí .")]


def test_fast_align_format(tmp_path: Path) -> None:
    path = write(tmp_path / "c.fa", "Дом . ||| A house .\n")
    assert read_pairs("fast_align", path, "ru") == [("A house .", "Дом .")]


def test_moses(tmp_path: Path) -> None:
    write(tmp_path / "c.en", "A house .\nTwo\n")
    write(tmp_path / "c.vi", "Một ngôi nhà .\nHai\n")
    assert read_pairs("moses", str(tmp_path / "c"), "vi") == [("A house .", "Một ngôi nhà ."), ("Two", "Hai")]


def test_real_en_ru_tsv(shared_data: Path) -> None:
    pairs = read_pairs("tsv", str(shared_data / "parallel/en-ru/all.en-ru.tsv"), "ru")
    assert len(pairs) == 28924
    assert all(e and r for e, r in pairs)


def test_real_moses_pair(shared_data: Path) -> None:
    pairs = read_pairs("moses", str(shared_data / "parallel/en-hi/pud.en-hi"), "hi")
    assert len(pairs) == 1000


BAD = {
    "columns": ("tsv", "a\tb\nonly one column\n", 2),
    "empty_side": ("tsv", "a\tb\nc\t \n", 2),
    "utf8": ("tsv", b"a\tb\nc\t\xff\xfe\n", 2),
    "score": ("wikimatrix", "1.1\ta\tb\nhigh\tc\td\n", 2),
    "wm_columns": ("wikimatrix", "1.1\ta\tb\n1.2\tc\n", 2),
    "fa_columns": ("fast_align", "x ||| y\nx ||| y ||| z\n", 2),
    "fa_empty": ("fast_align", " ||| y\n", 1),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_and_line(tmp_path: Path, case: str) -> None:
    fmt, text, line = BAD[case]
    path = write(tmp_path / f"bad_{case}.txt", text)
    with pytest.raises(XltError, match=rf"bad_{case}\.txt:{line}:"):
        read_pairs(fmt, path, "ru")


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(XltError, match="nope.tsv"):
        read_pairs("tsv", str(tmp_path / "nope.tsv"), "ru")
    with pytest.raises(XltError, match="empty.tsv: no sentence pairs"):
        read_pairs("tsv", write(tmp_path / "empty.tsv", ""), "ru")
    low = write(tmp_path / "low.tsv", "0.5\ta\tb\n")
    with pytest.raises(XltError, match="low.tsv: no sentence pairs with score"):
        read_pairs("wikimatrix", low, "ru", min_score=1.0)


def test_a_missing_corpus_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """corpus=wikimatrix's default path is a bare file name: the message
    named only the file, not corpus.path (walkthrough audit)."""
    monkeypatch.chdir(tmp_path)
    cfg = CorpusConfig(name="wikimatrix", format="wikimatrix", path="WikiMatrix.{pair}.tsv")
    with pytest.raises(XltError) as err:
        load_pool(cfg, "ru", str(tmp_path))
    assert str(err.value) == ("parallel corpus file not found: WikiMatrix.en-ru.tsv (corpus=wikimatrix "
                              "corpus.path=WikiMatrix.{pair}.tsv; set corpus.path to your copy)")
    moses = CorpusConfig(name="local", format="moses", path=write(tmp_path / "m.en", "a\n")[:-3])
    with pytest.raises(XltError, match=rf"^parallel corpus file not found: {tmp_path}/m.ru \(corpus=local corpus.path="):
        load_pool(moses, "ru", str(tmp_path))


def test_moses_mismatch_and_empty_line(tmp_path: Path) -> None:
    write(tmp_path / "m.en", "a\nb\nc\n")
    write(tmp_path / "m.ru", "а\nб\n")
    with pytest.raises(XltError, match=r"m\.ru:3: line counts differ"):
        read_pairs("moses", str(tmp_path / "m"), "ru")
    write(tmp_path / "e.en", "a\n\nc\n")
    write(tmp_path / "e.ru", "а\nб\nв\n")
    with pytest.raises(XltError, match=r"e\.en:2: empty line"):
        read_pairs("moses", str(tmp_path / "e"), "ru")


def test_unknown_format() -> None:
    with pytest.raises(XltError, match="unknown corpus.format"):
        read_pairs("csv", "x", "ru")


def test_wikimatrix_pair_placeholder_is_the_files_order() -> None:
    """WikiMatrix names its files by the two codes in alphabetical order:
    en-ru, but de-en (and reads English from the matching column)."""
    cfg = CorpusConfig(name="wikimatrix", format="wikimatrix", path="WikiMatrix.{pair}.tsv")
    assert corpus_path(cfg, "ru", "/d") == "WikiMatrix.en-ru.tsv" and wikimatrix_english_column("ru") == 1
    assert corpus_path(cfg, "de", "/d") == "WikiMatrix.de-en.tsv" and wikimatrix_english_column("de") == 2


# --------------------------------------------------------------------------- tokenizing


def test_word_tokenize_languages() -> None:
    assert word_tokenize("Hello, world (2019).", "en") == ["Hello", ",", "world", "(", "2019", ")", "."]
    assert word_tokenize("«Дом» стоит.", "ru") == ["«", "Дом", "»", "стоит", "."]
    # Devanagari vowel signs stay inside words; the danda is split off.
    assert word_tokenize("भारत एक देश है।", "hi") == ["भारत", "एक", "देश", "है", "।"]
    # Vietnamese keeps syllables (space-separated) and diacritics.
    assert word_tokenize("Việt Nam, đẹp.", "vi") == ["Việt", "Nam", ",", "đẹp", "."]
    # IWSLT-style entities are decoded; escape=False keeps quotes unescaped.
    assert word_tokenize("It&apos;s &quot;big&quot;", "en") == ["It", "'s", '"', "big", '"']


# --------------------------------------------------------------------------- sampling


@pytest.fixture()
def small_corpus(tmp_path: Path) -> tuple[str, list[tuple[str, str]]]:
    rows = [(f"sentence number {k} here .", f"предложение номер {k} здесь .") for k in range(60)]
    rows += [("long " * 20 + ".", "длинное .")]  # 21 English words
    path = tmp_path / "en-ru.tsv"
    path.write_text("".join(f"{e}\t{r}\n" for e, r in rows), encoding="utf-8")
    return str(tmp_path / "en-{lang}.tsv"), rows


def _key(p: SentencePair) -> tuple[str, ...]:
    return tuple(p.english) + ("|||",) + tuple(p.target)


def prepare_corpus(cfg: CorpusConfig, lang: str, root: str, seed: int) -> tuple[list[SentencePair], list[SentencePair]]:
    """(sample, held out) pairs as the alignment stage draws them from the pool."""
    pool = load_pool(cfg, lang, root)
    train, held = sample_pool(pool, cfg, seed)
    return [pool.pair(k) for k in train], [pool.pair(k) for k in held]


def test_sample_deterministic_disjoint(small_corpus, tmp_path: Path) -> None:
    template, _ = small_corpus
    cfg = CorpusConfig(name="t", format="tsv", path=template, size=20, heldout=10, max_words=10)
    train, held = prepare_corpus(cfg, "ru", str(tmp_path), seed=3)
    again, held_again = prepare_corpus(cfg, "ru", str(tmp_path), seed=3)
    other, _ = prepare_corpus(cfg, "ru", str(tmp_path), seed=4)
    assert (train, held) == (again, held_again)
    assert train != other
    assert len(train) == 20 and len(held) == 10
    assert not {_key(p) for p in train} & {_key(p) for p in held}
    assert all(len(p.english) <= 10 and len(p.target) <= 10 for p in train + held)


def test_sample_too_small_says_how_many(small_corpus, tmp_path: Path) -> None:
    template, rows = small_corpus
    cfg = CorpusConfig(name="t", format="tsv", path=template, size=1000, heldout=5, max_words=10)
    # 61 pairs, one with 21 words: 60 usable, 5 held out -> 55 for the sample.
    with pytest.raises(XltError, match=r"corpus.size=1000 but .*en-ru.tsv has only 55 usable pairs \(at most 10 words"):
        prepare_corpus(cfg, "ru", str(tmp_path), seed=1)
    cfg.size = 55
    train, held = prepare_corpus(cfg, "ru", str(tmp_path), seed=1)
    assert len(train) == 55 and len(held) == 5  # the 21-word pair is dropped
    cfg.heldout = 60
    with pytest.raises(XltError, match="leaves none for training"):
        prepare_corpus(cfg, "ru", str(tmp_path), seed=1)


def test_sample_real_data_root(shared_data: Path) -> None:
    cfg = CorpusConfig(name="shared", format="tsv", path="{data_root}/parallel/en-{lang}/all.en-{lang}.tsv",
                       size=300, heldout=50, max_words=30)
    train, held = prepare_corpus(cfg, "vi", str(shared_data), seed=1)
    assert len(train) == 300 and len(held) == 50
    assert max(max(len(p.english), len(p.target)) for p in train) <= 30
    assert not {_key(p) for p in train} & {_key(p) for p in held}


# --------------------------------------------------------------------------- truncated files


@pytest.mark.parametrize("fmt, text, where", [
    ("tsv", "Hello .\tПривет .\nTwo cats", r"c\.txt:2: expected 2 TAB-separated columns, found 1"),
    ("fast_align", "Привет . ||| Hello .\nДве кошки ||", r"c\.txt:2: expected 2 '\|\|\|'-separated columns, found 1"),
    ("fast_align", "Привет . ||| Hello .\nДве кошки |||", r"c\.txt:2: empty English side"),
])
def test_truncated_last_line_is_an_error_at_its_line(tmp_path: Path, fmt: str, text: str, where: str) -> None:
    with pytest.raises(XltError, match=where):
        read_pairs(fmt, write(tmp_path / "c.txt", text), "ru")


def test_one_trailing_blank_line_is_accepted(tmp_path: Path) -> None:
    assert read_pairs("tsv", write(tmp_path / "c.tsv", "Hello .\tПривет .\n\n"), "ru") == [("Hello .", "Привет .")]
    assert read_pairs("fast_align", write(tmp_path / "c.fa", "Дом . ||| A house .\n\n"), "ru") == [("A house .", "Дом .")]
    with pytest.raises(XltError, match=r"c\.tsv:2: expected 2"):  # blank lines inside the file are not
        read_pairs("tsv", write(tmp_path / "c.tsv", "Hello .\tПривет .\n\n\n"), "ru")


def test_fast_align_format_is_not_retokenised(tmp_path: Path) -> None:
    """``target ||| English`` is already tokenised: split on spaces/tabs only."""
    from xlt.data.parallel import tokenize_pair

    pair = tokenize_pair("fast_align", "It's \"big\"  (2019).", "Это\t«большой» .", "ru")
    assert pair.english == ["It's", '"big"', "(2019)."] and pair.target == ["Это", "«большой»", "."]
