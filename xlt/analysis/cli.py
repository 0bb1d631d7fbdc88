"""``xlt-analyze [overrides]``: the paper's distance histograms per model state.

Takes the same Hydra groups and overrides as ``xlt`` (so ``xlt-analyze
lang=hi task=xnli task.train_limit=2000`` finds the checkpoints that
``xlt lang=hi task=xnli task.train_limit=2000 mode=...`` wrote) plus:

* ``lang=es,hi``            several languages: one more figure, the grid;
* ``--out DIR`` / ``analysis.out=DIR``   output folder (default ``analysis``);
* ``analysis.states=original,adjusted``  which built-in states (default all);
* ``states.<name>=<dir|.ckpt|job dir>``   a state from an explicit path (weights only, never unpickled
                                         code), or the one a job folder's results.json records;
* ``analysis.batch_size=N``              encoder batch size (default 32).

Distances are measured on the *held-out* pairs of the aligned corpus sample
(never the pairs the adjustment trained on), with word vectors aggregated
as in the adjustment.  Writes ``<out>/<lang>/summary.json``,
``histograms.png|pdf``, ``distances.npz`` and, for several languages,
``<out>/grid.png|pdf``; prints a table.  Bad input: one line, exit code 2.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from xlt.errors import XltError

log = logging.getLogger("xlt.analysis")
USAGE = __doc__
DEFINITIONS = {
    "related": "L2 distance of last-layer vectors of one-to-one aligned words of a held-out sentence pair",
    "unrelated": "English word k of pair i vs target word k of pair i+1 (aligned-word order)",
    "topK_share": "per pair: sum of the K largest squared coordinate differences / squared distance; mean over pairs",
    "topK_share_fixed": "share of the total squared distance of all pairs held by the K overall largest dimensions",
    "auc": "P(unrelated distance > related distance), ties 1/2",
    "overlap": "sum over 50 shared bins of min(related mass, unrelated mass)",
}


@dataclass
class Request:
    """The command line split into what Hydra composes and what is ours."""

    overrides: list[str] = field(default_factory=list)
    langs: list[Optional[str]] = field(default_factory=lambda: [None])
    out: Path = Path("analysis")
    states: Optional[list[str]] = None
    explicit: dict[str, str] = field(default_factory=dict)
    batch_size: int = 32


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def parse_args(argv: list[str]) -> Request:
    """Take our own options out; leave the rest to Hydra (``mode=`` is ours too:
    every state fixes its own mode)."""
    request = Request()
    args = iter(argv)
    for arg in args:
        key, eq, value = arg.partition("=")
        if arg == "--out":
            request.out = out_dir(arg, next(args, ""))
        elif key in ("--out", "analysis.out") and eq:
            request.out = out_dir(key, value)
        elif key == "analysis.states" and eq:
            request.states = [s for s in value.split(",") if s]
        elif key == "analysis.batch_size" and eq:
            request.batch_size = positive_int(key, value)
        elif key.startswith("states.") and eq:
            request.explicit[key[len("states."):]] = value
        elif key == "lang" and eq:
            request.langs = [v for v in value.split(",") if v] or [None]
        elif key == "mode" and eq:
            log.info("ignoring %s: every model state sets its own mode", arg)
        elif arg.startswith("-"):
            raise XltError(f"unknown option {arg}; see xlt-analyze --help")
        else:
            request.overrides.append(arg)
    return request


def out_dir(key: str, value: str) -> Path:
    """The output folder given as ``key``; an empty value is an error, not
    ``Path("")``, which is the working directory, and so is an override
    (``--out lang=ru``: the folder left out, the override taken for it and
    the default language measured)."""
    if not value.strip():
        raise XltError(f"{key} needs a directory (got an empty value)")
    if _is_override(value):
        raise XltError(f"{key} needs a directory, got the override {value} (write {key} DIR {value}, "
                       f"or {key} ./{value} for a folder of that name)")
    return Path(value)


def _is_override(value: str) -> bool:
    """``lang=ru``, ``+corpus.size=5``, ``states.adjusted=...``: a config
    key of xlt's (or this command's) before an ``=``."""
    from dataclasses import fields

    from xlt.config import XltConfig

    name, eq, _ = value.partition("=")
    roots = {spec.name for spec in fields(XltConfig)} | {"states", "analysis", "experiment", "hydra"}
    return bool(eq) and name.lstrip("+~").split(".")[0].split("/")[0] in roots


def positive_int(key: str, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise XltError(f"{key} must be a positive integer, got '{value}'")
    return int(value)


def compose_config(overrides: list[str], lang: Optional[str], out: Path) -> DictConfig:
    """The job config of ``overrides``, composed and validated exactly as
    ``xlt`` does it (every state then says which mode made it)."""
    from xlt.contract import compose

    return compose(overrides + ([f"lang={lang}"] if lang else []) + [f"paths.output_dir={out}"], check=True)


# ---------------------------------------------------------------------------
# One language
# ---------------------------------------------------------------------------
def heldout_examples(cfg: DictConfig):
    """Word-level examples of the held-out pairs, and the padding id."""
    from xlt.stages.align import align_stage, aligned_examples
    from xlt.models.encoder import load_tokenizer

    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    corpus = align_stage(cfg, tokenizer)  # the same cached artifact the adjustment used
    examples = aligned_examples(cfg, tokenizer, corpus, heldout=True)
    if not examples:
        raise XltError(f"no aligned held-out word pairs for lang={cfg.lang.code} (corpus.heldout={cfg.corpus.heldout})")
    return examples, tokenizer.pad_token_id, corpus


def measure(state, examples, pad_id: int, batch_size: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Summary numbers and the two distance samples of one model state."""
    from xlt.evaluation.distances import norms, pair_differences, pair_vectors, state_summary

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder = state.load().to(device)
    related, unrelated = pair_differences(pair_vectors(encoder, examples, pad_id, batch_size, desc=f"measuring {state.name}"))
    del encoder
    summary = {"label": state.label, "source": state.source, **state_summary(related, unrelated)}
    return summary, norms(related), norms(unrelated)


@dataclass
class Language:
    """One language's inputs, all checked before any language is measured:
    its job config, held-out examples (the corpus read, ``corpus.size``
    checked) and model states."""

    cfg: DictConfig
    examples: list
    pad_id: int
    corpus: Any
    states: list = field(default_factory=list)


def prepare_languages(request: Request, configs: list[DictConfig], warn) -> list[Language]:
    """Every language's held-out pairs, then every language's model states:
    a corpus too small for ``corpus.size`` in the last language, or a state
    it cannot find, stops the run before the first language is measured
    (the states last: the adjusted one may be built, minutes of work)."""
    from xlt.config import STATES
    from xlt.stages.states import find_states

    languages = [Language(base, *heldout_examples(base)) for base in configs]
    for language in languages:
        language.states = find_states(language.cfg, request.states or list(STATES), request.explicit, None, warn)
    return languages


def analyze_language(request: Request, language: Language) -> tuple[str, dict[str, Any], dict]:
    """Measure the states of one prepared language and write its summary,
    distances and figure."""
    from xlt.analysis.plots import plot_states
    from xlt.stages.states import label

    from xlt import revisions
    from xlt.environment import environment
    from xlt.keys import code_version

    base, examples = language.cfg, language.examples
    code = base.lang.code
    results, distances = {}, {}
    for state in language.states:
        log.info("en-%s: measuring %s (%s)", code, state.name, state.source)
        results[state.name], *pair = measure(state, examples, language.pad_id, request.batch_size)
        if state.note:  # chosen otherwise than this config says (xlt.stages.states.adjusted_state)
            results[state.name]["note"] = state.note
        distances[state.name] = tuple(pair)
    folder = request.out / code
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model": base.model.name, "lang": code, "task": base.task.name, "corpus": base.corpus.name,
              "size": base.corpus.size, "aggregation": base.aggregation.name, "tokens": base.tokens.name,
              "aligner": base.aligner.name, "seed": base.seed}
    summary = {"config": config, "code_version": code_version(), "revisions": revisions.loaded(),
               "environment": environment(),  # where distances were measured (not identity), as in results.json
               "alignments": str(language.corpus.path),
               "heldout_sentences": len(examples), "definitions": DEFINITIONS, "states": results}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    np.savez_compressed(folder / "distances.npz", **{f"{n}_{k}": d for n, pair in distances.items()
                                                     for k, d in zip(("related", "unrelated"), pair)})
    plot_states(distances, folder / "histograms", code, {n: label(n) for n in distances})
    return code, summary, distances


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
COLUMNS = (("pairs", "related_n", "d"), ("rel mean", "related_mean", ".3f"), ("unrel mean", "unrelated_mean", ".3f"),
           ("ratio", "mean_ratio", ".3f"), ("AUC", "auc", ".3f"), ("overlap", "overlap", ".3f"),
           ("top10", "related_top10_share", ".3f"), ("top100", "related_top100_share", ".3f"))


def format_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Language x state rows of the headline numbers (top-k: related pairs)."""
    head = f"{'lang':<5} {'state':<21}" + "".join(f"{title:>11}" for title, _, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for code, summary in summaries.items():
        for values in summary["states"].values():
            cells = "".join(f"{format(values[key], spec):>11}" for _, key, spec in COLUMNS)
            lines.append(f"{code:<5} {values['label']:<21}{cells}")
    return "\n".join(lines)


def check_writable(out: Path) -> None:
    """``--out`` is a folder this process can write to, or can be made one.
    Checked without creating anything (the folder is made when the first
    language's results are written), so bad input leaves nothing behind."""
    import os

    existing = out.absolute()
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise XltError(f"--out {out} is not writable (not a directory: {existing})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise XltError(f"--out {out} is not writable (permission denied: {existing})")


def run(request: Request, warn) -> int:
    """Check every input of every language, then measure and write each:
    bad input is one line before any state is measured or anything written."""
    from xlt.analysis.plots import plot_grid
    from xlt.stages.states import label, require_state_path

    from xlt import revisions

    for name, path in request.explicit.items():  # a typo is not "not trained yet"
        require_state_path(f"states.{name}", name, path)
    configs = [compose_config(request.overrides, lang, request.out) for lang in request.langs]
    check_writable(request.out)  # before minutes of measuring, not after
    revisions.start_job()  # the hub commits this run loads (every summary.json records them)
    languages = prepare_languages(request, configs, warn)
    summaries, grid = {}, {}
    for language in languages:
        code, summaries[code], grid[code] = analyze_language(request, language)
    if len(grid) > 1:
        names = {n for states in grid.values() for n in states}
        plot_grid(grid, request.out / "grid", {n: label(n) for n in names})
    print(format_table(summaries))
    print(f"written to {request.out}/")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``xlt-analyze``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")

    def warn(message: str) -> None:
        print(f"xlt-analyze: warning: {message}", file=sys.stderr)

    try:
        return run(parse_args(argv), warn)
    except XltError as err:
        print(f"xlt-analyze: error: {err}", file=sys.stderr)
        return 2
