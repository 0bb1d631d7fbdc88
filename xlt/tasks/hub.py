"""Loading task data from the HuggingFace hub with one-line errors.

Every hub id in ``conf/task/*.yaml`` is a parquet dataset that loads with
``datasets`` >= 4 (which refuses loading scripts): e.g. MLQA comes from the
XTREME benchmark's ``google/xtreme`` configs ``MLQA.<context>.<question>``
(SQuAD layout: ``answers = {text: [...], answer_start: [...]}``, character
offsets into ``context``, as in the original MLQA json), not from the
script-only ``facebook/mlqa``.
"""

from __future__ import annotations

from xlt.errors import XltError


def load_hub(path: str, name: str | None, split: str):
    """``datasets.load_dataset(path, name, split=split)``; offline, an unknown
    config or a script-only dataset becomes one line naming the dataset."""
    from datasets import load_dataset

    try:
        return load_dataset(path, name, split=split)
    except Exception as err:  # noqa: BLE001 - offline, unknown config, scripts refused...: one clear line
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise XltError(f"cannot load {path}" + (f" ({name})" if name else "") + f" [{split}] from the hub: {message}") from err
