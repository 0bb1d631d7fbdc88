"""A callback that makes each training step last at least ``seconds``, so a
test can signal a tiny-model job while it trains (as a GPU step would take)."""

from __future__ import annotations

import time

import lightning as L


class StepTime(L.Callback):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)
