"""The random test models' tokenizer: XLM-R's cut to its most probable pieces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from xlt.errors import XltError
from xlt.models.small_vocab import ensure_small_vocab, trimmed

TEXTS = {  # one sentence per script of the paper's languages
    "en": "The committee approved the proposal yesterday.",
    "ru": "Комитет вчера одобрил предложение.",
    "hi": "समिति ने कल प्रस्ताव को मंज़ूरी दी।",
    "vi": "Ủy ban đã thông qua đề xuất hôm qua.",
}


@pytest.fixture(scope="module")
def small(e5_dir: str, tmp_path_factory) -> str:
    source = tmp_path_factory.mktemp("e5") / "e5"
    source.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (source / name).write_bytes(Path(e5_dir, name).read_bytes())
    return ensure_small_vocab(str(source), 500)


def test_the_cut_keeps_the_best_pieces_every_character_and_the_specials(e5_dir, small):
    full_state = json.loads(Path(e5_dir, "tokenizer.json").read_text(encoding="utf-8"))
    vocab = [piece for piece, _ in full_state["model"]["vocab"]]
    scores = sorted((score for piece, score in full_state["model"]["vocab"][4:-1]), reverse=True)
    state = json.loads(Path(small, "tokenizer.json").read_text(encoding="utf-8"))
    kept = [piece for piece, _ in state["model"]["vocab"]]
    singles = {piece for piece in vocab if len(piece) == 1}
    best = {piece for piece, score in full_state["model"]["vocab"][4:-1] if score >= scores[499]}
    assert set(kept) == best | singles | {"<s>", "<pad>", "</s>", "<unk>", "<mask>"}
    chosen = set(kept)
    assert kept == [piece for piece in vocab if piece in chosen]  # original order


def test_the_small_tokenizer_splits_words_it_does_not_lose_them(e5_dir, small):
    full, cut = AutoTokenizer.from_pretrained(e5_dir), AutoTokenizer.from_pretrained(small)
    assert len(cut) < len(full) / 10
    for lang, text in TEXTS.items():
        ids = cut(text, "a second sentence")["input_ids"]
        pieces = cut.convert_ids_to_tokens(ids)
        assert cut.unk_token_id not in ids, lang
        assert "".join(pieces).replace("▁", "") == "".join(full.convert_ids_to_tokens(full(text, "a second sentence")["input_ids"])).replace("▁", "")
        # the special tokens keep their roles under their new ids
        assert pieces[0] == "<s>" and pieces.count("</s>") == 3 and ids[0] == cut.cls_token_id
    assert cut.convert_ids_to_tokens([cut.mask_token_id, cut.pad_token_id]) == ["<mask>", "<pad>"]
    assert cut.mask_token_id == len(cut) - 1


def test_a_tokenizer_that_is_not_unigram_is_one_line():
    with pytest.raises(XltError, match="needs a Unigram tokenizer; this one is WordPiece"):
        trimmed({"model": {"type": "WordPiece", "vocab": {}}}, 10)


def test_tiny_jobs_build_their_encoder_on_the_small_vocabulary(tiny_cache):
    from xlt.contract import compose
    from xlt.models.encoder import load_encoder, load_tokenizer

    cfg = compose(["model=tiny", f"paths.cache_dir={tiny_cache}"])
    tokenizer = load_tokenizer(cfg.model, str(tiny_cache))
    encoder = load_encoder(cfg.model, str(tiny_cache))
    assert encoder.config.vocab_size == len(tokenizer) < 25_000
