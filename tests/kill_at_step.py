"""Run ``xlt`` and SIGKILL it right after optimizer step N (a hard kill: no
handler runs, nothing is flushed), as a preempted node or an OOM killer would.

    python tests/kill_at_step.py N xlt-overrides...
    XLT_TEST_SIGNAL=SIGTERM python tests/kill_at_step.py N ...   (a polite stop instead)
    XLT_TEST_STAGE=adjustment ...   (after adjustment step N; also: alignment, evaluation, done-json,
                                     adjustment-done)

``alignment`` signals as the aligner starts, ``evaluation`` at the first
predicted batch, ``done-json`` between the weights-only save of a finished
training and the write of its done.json, ``adjustment-done`` as the
adjustment's finished weights are kept (before the encoder is measured and saved).  The signal is sent once per process
(``XLT_TEST_SIGNAL_TWICE=SIGINT``: that one right after it, one stop delivered
twice, as a scheduler's SIGTERM and the local launcher's forwarded SIGINT).
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    from xlt.cli import main as xlt_main

    step, sent = int(sys.argv[1]), []
    signum = getattr(signal, os.environ.get("XLT_TEST_SIGNAL", "SIGKILL"))
    stage = os.environ.get("XLT_TEST_STAGE", "fine-tuning")
    twice = os.environ.get("XLT_TEST_SIGNAL_TWICE")

    def fire() -> None:
        if not sent:
            sent.append(signum)
            os.kill(os.getpid(), signum)
            if twice:
                os.kill(os.getpid(), getattr(signal, twice))

    def after_step(self, outputs, batch, batch_idx) -> None:
        if self.global_step >= step:  # callbacks (the step checkpoint) ran before this module hook
            fire()

    if stage == "fine-tuning":
        from xlt.models.finetune import FineTuneModule

        FineTuneModule.on_train_batch_end = after_step
    elif stage == "adjustment":
        from xlt.models.adjust import AdjustModule

        AdjustModule.on_train_batch_end = after_step
    elif stage == "adjustment-done":  # as the adjustment's finished weights are saved, before the encoder is
        import xlt.stages.trainer as trainer
        from xlt.models.adjust import AdjustModule

        keep = trainer.keep_weights_only
        trainer.keep_weights_only = lambda lit, folder: (
            keep(lit, folder), isinstance(lit.lightning_module, AdjustModule) and fire())
    elif stage == "alignment":
        import xlt.data.align as align

        align_sentences = align.align_sentences  # what the alignment stage calls on the pool
        align.align_sentences = lambda *args, **kwargs: fire() or align_sentences(*args, **kwargs)
    elif stage == "evaluation":
        from xlt.models.finetune import FineTuneModule

        predict_step = FineTuneModule.predict_step
        FineTuneModule.predict_step = lambda self, *args: fire() or predict_step(self, *args)
    elif stage == "done-json":
        import xlt.checkpoints as checkpoints

        write_json = checkpoints.write_json
        checkpoints.write_json = lambda path, obj: (str(path).endswith("done.json") and fire()) or write_json(path, obj)
    else:
        raise SystemExit(f"unknown XLT_TEST_STAGE {stage}")
    sys.argv = ["xlt", *sys.argv[2:]]
    xlt_main()


if __name__ == "__main__":
    main()
