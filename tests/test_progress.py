"""xlt.progress: plain progress lines outside a terminal."""

from __future__ import annotations

import logging

from xlt.progress import Progress, duration, progress


def test_lines_outside_a_terminal_have_count_rate_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="xlt.progress")
    items = list(progress(range(5), "reading", unit="pairs", interval=0.0))
    assert items == [0, 1, 2, 3, 4]
    lines = [r.getMessage() for r in caplog.records if r.name == "xlt.progress"]
    assert len(lines) == 6  # one per item at interval 0, plus the closing line
    assert lines[1].startswith("reading: 2/5 pairs (40%), ") and "pairs/s" in lines[1] and "ETA" in lines[1]
    assert lines[-1].startswith("reading: 5/5 pairs (100%)") and "took" in lines[-1]


def test_no_line_before_the_interval_and_extra_is_appended(caplog):
    caplog.set_level(logging.INFO, logger="xlt.progress")
    bar = Progress("training", total=100, unit="steps", interval=3600)
    for _ in range(10):
        bar.update(extra="loss 0.5312")
    assert not [r for r in caplog.records if r.name == "xlt.progress"]
    bar.close()
    bar.close()  # once only
    lines = [r.getMessage() for r in caplog.records if r.name == "xlt.progress"]
    assert lines == [lines[0]] and lines[0].startswith("training: 10/100 steps (10%)") and lines[0].endswith("loss 0.5312")


def test_unknown_total_and_durations():
    bar = Progress("tokenising", interval=3600)
    bar.update(7)
    assert bar.line().startswith("tokenising: 7 it, ")
    assert duration(42) == "42s" and duration(185) == "3m05s" and duration(3720) == "1h02m"
