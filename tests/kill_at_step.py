"""Run ``xlt`` and SIGKILL it right after optimizer step N (a hard kill: no
handler runs, nothing is flushed), as a preempted node or an OOM killer would.

    python tests/kill_at_step.py N xlt-overrides...
    XLT_TEST_SIGNAL=SIGTERM python tests/kill_at_step.py N ...   (a polite stop instead)
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    from xlt.cli import main as xlt_main
    from xlt.models.finetune import FineTuneModule

    step, sent = int(sys.argv[1]), []
    signum = getattr(signal, os.environ.get("XLT_TEST_SIGNAL", "SIGKILL"))

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.global_step >= step and not sent:  # callbacks (the step checkpoint) ran before this module hook
            sent.append(signum)
            os.kill(os.getpid(), signum)

    FineTuneModule.on_train_batch_end = on_train_batch_end
    sys.argv = ["xlt", *sys.argv[2:]]
    xlt_main()


if __name__ == "__main__":
    main()
