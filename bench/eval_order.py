"""Section 5 of ``make bench``: evaluation in length-sorted batches.

``xlt.stages.job.evaluate`` predicts an evaluation set in batches of
features sorted by length (``length_order``) and puts the outputs back in
example order.  Measured here against predicting in file order:
the real XNLI ru test pairs of the data folder (``data/demo``: 300), the
real encoder and NLI head, ``task.eval_batch_size`` (64), eval mode without
gradients (what ``trainer.predict`` runs).  The two orders alternate for
``rounds`` rounds; reported are median seconds per pass, the ratio, the
token positions each order pads to, and the largest logit difference after
restoring the order (padding is masked, so only float rounding remains).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch


def bench_eval_order(cfg, encoder, tokenizer, rounds: int = 3) -> dict[str, Any]:
    from xlt.models.finetune import FineTuneModule, task_loader
    from xlt.stages.job import length_order
    from xlt.tasks.registry import build_task

    task = build_task(cfg)
    eval_set = next(s for s in task.eval_sets() if s.name == f"xnli.{cfg.lang.code}")
    features = task.features(tokenizer, eval_set.examples, train=False)
    module = FineTuneModule(encoder, task, cfg.task.lr, cfg.task.weight_decay, 0.0, cfg.seed).eval()
    orders = {"file": list(range(len(features))), "sorted": length_order(features)}

    def predict(order: list[int]) -> tuple[list, int]:
        loader = task_loader(task, tokenizer, [features[i] for i in order], cfg.task.eval_batch_size, seed=None)
        outputs, positions = [], 0
        with torch.no_grad():
            for index, batch in enumerate(loader):
                positions += batch["input_ids"].numel()
                outputs += module.predict_step(batch, index)
        restored: list = [None] * len(order)
        for position, index in enumerate(order):
            restored[index] = outputs[position]
        return restored, positions

    times: dict[str, list[float]] = {name: [] for name in orders}
    logits: dict[str, torch.Tensor] = {}
    positions: dict[str, int] = {}
    for r in range(rounds):
        for name, order in (orders.items() if r % 2 == 0 else reversed(orders.items())):
            start = time.perf_counter()
            outputs, positions[name] = predict(order)
            times[name].append(time.perf_counter() - start)
            logits[name] = torch.stack(outputs)
        print(f"  [eval order] round {r + 1}/{rounds}: file {times['file'][-1]:.2f} s, sorted {times['sorted'][-1]:.2f} s", flush=True)
    file_s, sorted_s = statistics.median(times["file"]), statistics.median(times["sorted"])
    return {"eval_set": eval_set.name, "examples": len(features), "batch": cfg.task.eval_batch_size, "rounds": rounds,
            "file_order_s": round(file_s, 3), "sorted_s": round(sorted_s, 3), "speedup": round(file_s / sorted_s, 3),
            "file_order_positions": positions["file"], "sorted_positions": positions["sorted"],
            "max_abs_logit_diff": float((logits["file"] - logits["sorted"]).abs().max())}
