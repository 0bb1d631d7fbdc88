"""Run ``xlt`` and SIGKILL it right after optimizer step N (a hard kill: no
handler runs, nothing is flushed), as a preempted node or an OOM killer would.

    python tests/kill_at_step.py N xlt-overrides...
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    from xlt.cli import main as xlt_main
    from xlt.models.finetune import FineTuneModule

    step = int(sys.argv[1])

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.global_step >= step:  # callbacks (the step checkpoint) ran before this module hook
            os.kill(os.getpid(), signal.SIGKILL)

    FineTuneModule.on_train_batch_end = on_train_batch_end
    sys.argv = ["xlt", *sys.argv[2:]]
    xlt_main()


if __name__ == "__main__":
    main()
