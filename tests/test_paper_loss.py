"""The adjustment and continual losses equal the paper code's formulas.

The reference below is written from the paper's code, not from xlt's:
``alignment/word_level_bert.py`` (``WordLevelBert.annotate``: one packed
vector per word, the mean of its subwords in ``avg`` mode, plus [CLS] and
[SEP] as words), ``alignment/bert_finetuning_alignment.py``
(``align_bert_multiple``: ``F.mse_loss(ann_1[idx_1], ann_2[idx_2]) +
base_rate * F.mse_loss(ann_2, ann_2_base)``) and ``*/utils_alignment.py``
(``comp_align_loss``: ``align_wght * F.mse_loss(pairs) + base_diff_wght *
F.mse_loss(ann_2, ann_2_base)``; ``pick_aligned`` adds [CLS]-[CLS] and
[SEP]-[SEP] pairs with ``--include_clssep``; ``filter_data_alignments``
drops identical-string links).  It runs each sentence alone (no padding) on
real e5-small vectors and real en-ru pairs with the reference fast_align's
links.
"""

from __future__ import annotations

import copy
import itertools
import re

import pytest
import torch
import torch.nn.functional as F

from xlt.config import TokensConfig
from xlt.data.align import one_to_one
from xlt.data.parallel import SentencePair
from xlt.data.words import build_aligned_examples
from xlt.models.adjust import AlignmentLoss, collate_aligned
from xlt.models.continual import ContinualObjective

N_PAIRS = 6

# Forward passes of the real e5-small (118M parameters) on real pairs: minutes on 2 CPU cores.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ru_pairs(shared_data):
    """First pairs of the golden fast_align input with the tool's -d -o -v
    intersection (links are target-English; xlt's are English-target)."""
    golden = shared_data / "golden" / "fast_align"
    with open(golden / "corpus.ru-en", encoding="utf-8") as corpus, open(golden / "ru-en.dov.intersect.align") as links:
        rows = list(itertools.islice(zip(corpus, links), N_PAIRS))
    pairs, alignments = [], []
    for line, link_line in rows:
        target, english = line.split(" ||| ")
        pairs.append(SentencePair(english.split(), target.split()))
        alignments.append([(int(j), int(i)) for i, j in (link.split("-") for link in link_line.split())])
    return pairs, alignments


@pytest.fixture(scope="module")
def models(e5_dir):
    """``f`` (weights nudged, so the regulariser is non-zero) and ``f0``, in eval mode."""
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(e5_dir, add_pooling_layer=False).eval()
    encoder = copy.deepcopy(reference)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in encoder.encoder.layer[-1].parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    return encoder, reference


def packed_words(model, tokenizer, words: list[str]) -> torch.Tensor:
    """``WordLevelBert.annotate`` in avg mode for one sentence: [CLS], each
    word's subword mean, [SEP] (the tokenizer's first and last special)."""
    enc = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state[0]
    word_ids = enc.word_ids(0)
    vectors = [hidden[0]]
    for k in range(len(words)):
        vectors.append(hidden[[p for p, w in enumerate(word_ids) if w == k]].mean(dim=0))
    vectors.append(hidden[len(word_ids) - 1])
    return torch.stack(vectors)


def paper_terms(pairs, alignments, indices, encoder, reference, tokenizer, clssep: bool) -> tuple[float, float]:
    """(pair term, regulariser) of ``comp_align_loss`` / ``align_bert_multiple``."""
    ann_1, ann_2, ann_2_base, idx_1, idx_2 = [], [], [], [], []
    offset_1 = offset_2 = 0
    for k in indices:
        pair, links = pairs[k], alignments[k]
        t = packed_words(encoder, tokenizer, pair.target)
        e = packed_words(encoder, tokenizer, pair.english)
        ann_1.append(t)
        ann_2.append(e)
        ann_2_base.append(packed_words(reference, tokenizer, pair.english))
        kept = [(i, j) for i, j in one_to_one(links) if pair.english[i] != pair.target[j]]
        idx_1 += [offset_1 + 1 + j for _, j in kept]
        idx_2 += [offset_2 + 1 + i for i, _ in kept]
        if clssep:
            idx_1 += [offset_1, offset_1 + len(t) - 1]
            idx_2 += [offset_2, offset_2 + len(e) - 1]
        offset_1, offset_2 = offset_1 + len(t), offset_2 + len(e)
    ann_1, ann_2, ann_2_base = torch.cat(ann_1), torch.cat(ann_2), torch.cat(ann_2_base)
    return F.mse_loss(ann_1[idx_1], ann_2[idx_2]).item(), F.mse_loss(ann_2, ann_2_base).item()


def xlt_examples(ru_pairs, tokenizer, tokens: TokensConfig, regularize: str = "all"):
    pairs, alignments = ru_pairs
    return build_aligned_examples(tokenizer, pairs, alignments, "avg", tokens, drop_identical=True, regularize=regularize)


def test_adjustment_terms_equal_the_paper_code(ru_pairs, models, e5_tokenizer):
    encoder, reference = models
    examples = xlt_examples(ru_pairs, e5_tokenizer, TokensConfig())
    assert len(examples) == N_PAIRS
    batch = collate_aligned(examples, e5_tokenizer.pad_token_id)
    with torch.no_grad():
        terms = AlignmentLoss(reference, "current", reduction="mse")(encoder, batch)
    pairs, regularizer = paper_terms(*ru_pairs, range(N_PAIRS), encoder, reference, e5_tokenizer, clssep=True)
    assert terms["pairs"].item() == pytest.approx(pairs, abs=1e-6)
    assert terms["regularizer"].item() == pytest.approx(regularizer, abs=1e-6)
    assert regularizer > 1e-4 and pairs > 1e-3  # both terms are real, not zero


def test_adjustment_sums_the_means_of_splits_of_four_sentences(ru_pairs, models, e5_tokenizer):
    """``align_bert_multiple``: ``loss += F.mse_loss(...) + base_rate * F.mse_loss(...)`` per split of
    ``splitbatch_size=4`` sentences of the batch (here 6 pairs: splits 0-3 and 4-5)."""
    encoder, reference = models
    batch = collate_aligned(xlt_examples(ru_pairs, e5_tokenizer, TokensConfig()), e5_tokenizer.pad_token_id)
    with torch.no_grad():
        terms = AlignmentLoss(reference, "current", reduction="mse", split=4)(encoder, batch)
    splits = [paper_terms(*ru_pairs, chunk, encoder, reference, e5_tokenizer, clssep=True) for chunk in (range(4), range(4, 6))]
    assert terms["pairs"].item() == pytest.approx(sum(p for p, _ in splits), abs=1e-6)
    assert terms["regularizer"].item() == pytest.approx(sum(r for _, r in splits), abs=1e-6)


def test_regulariser_covers_every_english_word_whatever_the_token_choice(ru_pairs, models, e5_tokenizer):
    """tokens=cls_sep: only [CLS]/[SEP] are pulled together, but the paper code
    still keeps every English word (and [CLS]/[SEP]) close to f0."""
    encoder, reference = models
    cls_sep = TokensConfig(name="cls_sep", use_words=False, use_cls=True, use_sep=True)
    batch = collate_aligned(xlt_examples(ru_pairs, e5_tokenizer, cls_sep), e5_tokenizer.pad_token_id)
    with torch.no_grad():
        terms = AlignmentLoss(reference, "current", reduction="mse")(encoder, batch)
    _, regularizer = paper_terms(*ru_pairs, range(N_PAIRS), encoder, reference, e5_tokenizer, clssep=True)
    assert terms["regularizer"].item() == pytest.approx(regularizer, abs=1e-6)
    chosen = collate_aligned(xlt_examples(ru_pairs, e5_tokenizer, cls_sep, "chosen"), e5_tokenizer.pad_token_id)
    assert len(chosen["reg"]) == 2 * N_PAIRS < len(batch["reg"])


def test_continual_loss_equals_comp_align_loss(ru_pairs, models, e5_tokenizer):
    """``align_wght · F.mse_loss(pairs) + base_diff_wght · F.mse_loss(English, f0 English)``
    with the paper scripts' weights 0.01 and 1."""
    encoder, reference = models
    examples = xlt_examples(ru_pairs, e5_tokenizer, TokensConfig())
    loss = AlignmentLoss(reference, "current", cache=True, reduction="mse")
    objective = ContinualObjective(examples, e5_tokenizer.pad_token_id, loss, alpha=0.01, reg_weight=1.0, batch_size=4)
    with torch.no_grad():
        terms = objective.step_loss(encoder, step=3)
    indices = objective.batch(3)["index"].tolist()
    pairs, regularizer = paper_terms(*ru_pairs, indices, encoder, reference, e5_tokenizer, clssep=True)
    # The frozen English vectors are cached in float16: 1e-6 still holds at this scale.
    assert terms["weighted"].item() == pytest.approx(0.01 * pairs + 1.0 * regularizer, abs=1e-6)


def test_other_reductions_and_bad_names(ru_pairs, models, e5_tokenizer):
    encoder, reference = models
    batch = collate_aligned(xlt_examples(ru_pairs, e5_tokenizer, TokensConfig()), e5_tokenizer.pad_token_id)
    with torch.no_grad():
        mse = AlignmentLoss(reference, reduction="mse")(encoder, batch)
        total = AlignmentLoss(reference, reduction="sum")(encoder, batch)
        per_vector = AlignmentLoss(reference, reduction="vector_mean")(encoder, batch)
    n, hidden = len(batch["pair_en"]), encoder.config.hidden_size
    assert total["pairs"].item() == pytest.approx(mse["pairs"].item() * n * hidden, rel=1e-5)  # Eq. 1 as printed
    assert per_vector["pairs"].item() == pytest.approx(mse["pairs"].item() * hidden, rel=1e-5)
    # a config never gets here with another name (xlt.config: choices); code that does is told
    with pytest.raises(ValueError, match=re.escape("reduction one of ('mse', 'sum', 'vector_mean'), got 'current', 'mean'")):
        AlignmentLoss(reference, reduction="mean")
    with pytest.raises(ValueError, match=re.escape("regularize must be one of all, chosen, got 'everything'")):
        xlt_examples(ru_pairs, e5_tokenizer, TokensConfig(), regularize="everything")
