"""Word alignment: symmetrization, Pharaoh files, fast_align against the reference
tool's output, and the align stage (whole corpus aligned once, then sampled)."""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import pytest

from xlt.config import AlignerConfig, TokensConfig
from xlt.contract import compose
from xlt.data import align as A
from xlt.data.parallel import SentencePair
from xlt.errors import XltError
from xlt.stages.align import align_stage

# --------------------------------------------------------------------------- symmetrization


FWD = [(0, 0), (1, 1), (2, 1), (4, 4)]
REV = [(0, 0), (1, 1), (2, 2), (5, 4)]


def test_intersect_and_gdfa_hand_case() -> None:
    inter = A.intersect(FWD, REV)
    gdfa = A.grow_diag_final_and(FWD, REV)
    assert inter == [(0, 0), (1, 1)]
    # (2, 1) and (2, 2) neighbour (1, 1) and cover unaligned English word 2;
    # (4, 4) is nobody's neighbour: final-and adds it (both ends free), and
    # then (5, 4) no longer qualifies (target word 4 is taken).
    assert gdfa == [(0, 0), (1, 1), (2, 1), (2, 2), (4, 4)]
    assert set(inter) <= set(gdfa) <= set(FWD) | set(REV)
    assert A.symmetrize(FWD, REV, "intersect") == inter
    with pytest.raises(XltError, match="grow-diag-final-and"):
        A.symmetrize(FWD, REV, "union")


def test_one_to_one() -> None:
    assert A.one_to_one([(0, 0), (1, 1), (1, 2), (3, 4), (2, 4), (5, 5)]) == [(0, 0), (5, 5)]


# --------------------------------------------------------------------------- Pharaoh


def test_pharaoh_round_trip(tmp_path: Path) -> None:
    """Files are target-English (fast_align on ``target ||| English``); memory is (English, target)."""
    alignments = [[(0, 0), (2, 1)], [], [(10, 12)]]
    path = str(tmp_path / "a" / "links.txt")
    A.write_pharaoh(path, alignments)
    assert Path(path).read_text() == "0-0 1-2\n\n12-10\n"
    assert A.read_pharaoh(path, n_expected=3) == alignments
    with pytest.raises(XltError, match="links.txt: 3 alignment lines but 4"):
        A.read_pharaoh(path, n_expected=4)


@pytest.mark.parametrize("bad", ["0-1 2:3", "0-1 a-2", "1-", "-1-2"])
def test_pharaoh_malformed(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(f"0-0\n{bad}\n")
    with pytest.raises(XltError, match=r"bad\.txt:2: malformed"):
        A.read_pharaoh(str(path))


def test_pharaoh_latin1_byte_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.align"
    path.write_bytes(b"0-0 1-1\n0-0 1-\xe9\n")
    with pytest.raises(XltError, match=rf"^{path}:2: not UTF-8 \(byte 0xe9 at column 7"):
        A.read_pharaoh(str(path))


def test_eflomal_missing_gives_install_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "eflomal", None)
    with pytest.raises(XltError, match="pip install eflomal"):
        A.align_corpus([SentencePair(["a"], ["b"])], AlignerConfig(name="eflomal"))


class FakeEflomal:
    """``eflomal.Aligner`` as eflomal 2.0 writes files: its encoded inputs with
    ``NamedTemporaryFile()`` (no folder), the links where it is told."""

    made: list[str] = []

    class Aligner:
        def align(self, src_input, trg_input, links_filename_fwd=None, links_filename_rev=None, **_):
            with tempfile.NamedTemporaryFile("wb") as srcf:
                FakeEflomal.made.append(srcf.name)
                for path in (links_filename_fwd, links_filename_rev):
                    Path(path).write_text("".join("0-0\n" for _ in src_input))


def test_eflomal_temporary_files_go_to_the_build_folder(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "eflomal", FakeEflomal)
    monkeypatch.setattr(FakeEflomal, "made", [])
    build = tmp_path / "build"
    build.mkdir()
    default = tempfile.tempdir
    links = A.align_corpus([SentencePair(["a"], ["b"])] * 2, AlignerConfig(name="eflomal"), str(build))
    assert links == [[(0, 0)]] * 2
    [encoded] = FakeEflomal.made
    assert Path(encoded).parent.parent == build  # eflomal's own temporary file, not only xlt's link files
    assert tempfile.tempdir == default and not list(build.iterdir())  # default restored, nothing left


def test_eflomal_restores_the_temporary_folder_on_error(monkeypatch, tmp_path: Path) -> None:
    class Failing(FakeEflomal.Aligner):
        def align(self, *args, **kwargs):
            raise RuntimeError("eflomal binary crashed")

    monkeypatch.setitem(sys.modules, "eflomal", type("Eflomal", (), {"Aligner": Failing}))
    default = tempfile.tempdir
    with pytest.raises(RuntimeError, match="crashed"):
        A.align_corpus([SentencePair(["a"], ["b"])], AlignerConfig(name="eflomal"), str(tmp_path))
    assert tempfile.tempdir == default


def test_unknown_aligner() -> None:
    """(Ignored or out-of-range aligner settings stop at the config contract:
    tests/test_contract.py.)"""
    with pytest.raises(XltError, match="unknown aligner.name"):
        A.align_corpus([SentencePair(["a"], ["b"])], AlignerConfig(name="giza"))


# --------------------------------------------------------------------------- the align stage


def _fast_align_corpus(path: Path, rows: list[tuple[str, str]]) -> str:
    path.write_text("".join(f"{target} ||| {english}\n" for english, target in rows), encoding="utf-8")
    return str(path)


def _stage_cfg(tmp_path: Path, corpus: str, *overrides: str):
    return compose(["model=tiny", "corpus=local", "corpus.format=fast_align", f"corpus.path={corpus}",
                           "corpus.size=20", "corpus.heldout=5", "corpus.max_words=10", "seed=3",
                           f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides])


def _marked_rows() -> list[tuple[str, str]]:
    """Line k (0-based): k % 9 + 1 English words and 2 target words; a duplicate
    (line 5 = line 4) and a too-long line (line 7) are not usable."""
    rows = [(" ".join(f"e{k}_{w}" for w in range(k % 9 + 1)), f"t{k}_0 t{k}_1") for k in range(40)]
    rows[5] = rows[4]
    rows[7] = (" ".join(["long"] * 11), "t7_0 t7_1")
    return rows


def test_pharaoh_path_line_k_is_corpus_line_k(tmp_path: Path, caplog) -> None:
    """Each Pharaoh line links target word 1 to the *last* English word of its own
    corpus line: a shuffled sample must get exactly those links."""
    rows = _marked_rows()
    corpus = _fast_align_corpus(tmp_path / "c.ru-en", rows)
    pharaoh = tmp_path / "links.align"
    pharaoh.write_text("".join(f"1-{len(english.split()) - 1}\n" for english, _ in rows))
    with caplog.at_level(logging.INFO):
        aligned = align_stage(_stage_cfg(tmp_path, corpus, f"aligner.pharaoh_path={pharaoh}"))
    assert "instead of aligning" in caplog.text
    assert len(aligned.train) == 20 and len(aligned.heldout) == 5
    for pair, links in zip(aligned.train + aligned.heldout, aligned.train_alignments + aligned.heldout_alignments):
        assert links == [(len(pair.english) - 1, 1)]
        assert pair.target[0] == "t" + pair.english[0][1:]  # the pair of its own line
    pharaoh.write_text("0-0\n" * 39)
    with pytest.raises(XltError, match=r"links\.align: 39 alignment lines but 40 lines in the corpus .*c\.ru-en"):
        align_stage(_stage_cfg(tmp_path, corpus, f"aligner.pharaoh_path={pharaoh}"))


def test_export_round_trips_through_pharaoh_path(tmp_path: Path, shared_data: Path) -> None:
    """``aligner.export`` writes one line per corpus line in corpus order: fed the
    tool's own intersection as ``pharaoh_path``, the export reproduces that file."""
    golden = shared_data / "golden/fast_align"
    export = tmp_path / "export.align"
    cfg = _stage_cfg(tmp_path, str(golden / "corpus.hi-en"), "corpus.max_words=64", "corpus.size=1000",
                     f"aligner.pharaoh_path={golden / 'hi-en.dov.intersect.align'}", f"aligner.export={export}")
    align_stage(cfg)
    def links(path: Path) -> list[set[str]]:
        return [set(line.split()) for line in path.read_text(encoding="utf-8").splitlines()]

    assert links(golden / "hi-en.dov.intersect.align") == links(export)


def _recording(make, made: list[str]):
    def wrapper(*args, **kwargs):
        result = make(*args, **kwargs)
        made.append(str(result[1] if isinstance(result, tuple) else result))
        return result
    return wrapper


def test_whole_corpus_aligned_once_then_sampled(tmp_path: Path, monkeypatch) -> None:
    """Samples of different sizes and seeds share one aligned corpus (same links for
    the same pair); unusable lines export as empty lines; nothing goes to $TMPDIR."""
    rows = _marked_rows()
    corpus = _fast_align_corpus(tmp_path / "c.ru-en", rows)
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    made: list[str] = []  # a SIGKILL would leave these behind: none may be outside the cache
    for name in ("mkdtemp", "mkstemp"):
        monkeypatch.setattr(tempfile, name, _recording(getattr(tempfile, name), made))
    export = tmp_path / "export.align"
    small = align_stage(_stage_cfg(tmp_path, corpus, f"aligner.export={export}"))
    large = align_stage(_stage_cfg(tmp_path, corpus, "corpus.size=30", "seed=4"))
    assert small.path == large.path and len(large.train) == 30
    links = {tuple(p.english): a for p, a in zip(large.train + large.heldout, large.train_alignments + large.heldout_alignments)}
    for pair, alignment in zip(small.train, small.train_alignments):
        if tuple(pair.english) in links:
            assert links[tuple(pair.english)] == alignment
    lines = export.read_text().split("\n")
    assert len(lines) == 41 and lines[5] == lines[7] == "" and lines[-1] == ""  # 40 lines + final newline
    assert made and not [path for path in made if str(system_tmp) in path]


def test_identical_strings_are_not_linked_by_default(tmp_path: Path, e5_tokenizer) -> None:
    from xlt.data.words import build_aligned_examples

    cfg = compose(["model=tiny", f"paths.output_dir={tmp_path}"])
    assert cfg.aligner.drop_identical is True
    pair = SentencePair(["Moscow", "2019"], ["Москва", "2019"])
    words = TokensConfig(name="words", use_words=True, use_cls=False, use_sep=False)
    [example] = build_aligned_examples(e5_tokenizer, [pair], [[(0, 0), (1, 1)]], "avg", words,
                                       drop_identical=cfg.aligner.drop_identical)
    assert len(example.pair_en) == 1  # Moscow-Москва only
    [kept] = build_aligned_examples(e5_tokenizer, [pair], [[(0, 0), (1, 1)]], "avg", words, drop_identical=False)
    assert len(kept.pair_en) == 2


def test_eflomal_backend() -> None:
    pytest.importorskip("eflomal")
    pairs = [SentencePair(e.split(), t.split()) for e, t in [("a b", "x y"), ("b c", "y z"), ("a c", "x z")] * 20]
    links = A.align_corpus(pairs, AlignerConfig(name="eflomal"))
    assert links[:3] == [[(0, 0), (1, 1)]] * 3
