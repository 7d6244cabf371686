"""The study's section of the configuration: the search space (ranges, batch sizes, the searched
knobs, enqueued designs) and the study's own settings (the pick's judges and bounds, checkpoints,
workers). Frozen, validated dataclasses like every section of ``gpt2ft.config``, which builds
them into the whole ``Config`` and re-exports them; apart so each module owns one part in at most
500 lines.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from gpt2ft.errors import check as _check
from gpt2ft.judges import DEFAULT_JUDGES, JUDGES
from gpt2ft.pick import RULES as PICK_RULES


@dataclass(frozen=True)
class FloatRange:
    low: float
    """Smallest value searched."""
    high: float
    """Largest value searched."""
    log: bool = True
    """Search on a log scale."""
    KEYLESS = True  # not a field: its errors do not know its key, ``configio.build`` adds it

    def __post_init__(self) -> None:
        _check(self.low <= self.high, f"range low {self.low} is above high {self.high}.")


@dataclass(frozen=True)
class IntRange:
    KEYLESS = True  # as FloatRange's
    low: int
    """Smallest value searched."""
    high: int
    """Largest value searched."""

    def __post_init__(self) -> None:
        _check(self.low <= self.high, f"range low {self.low} is above high {self.high}.")


@dataclass(frozen=True)
class TrialParams:
    lr: float
    """Learning rate of the trial."""
    epochs: int
    """Epochs of the trial."""
    batch_size: int
    """Batch size of the trial."""
    goldfish_k: Optional[int] = None
    """The trial's ``train.goldfish_k`` when ``study.goldfish_k`` is searched (absent: the config's
    ``train.goldfish_k``, so demo.yaml's designs run as they are with ``--set study.goldfish_k=...``)."""
    lora_r: Optional[int] = None
    """The trial's LoRA rank (0: full fine-tuning) when ``study.lora_r`` is searched (absent: the
    config's, ``train.lora_r`` under ``train.method: lora``, else 0)."""


@dataclass(frozen=True)
class StudyConfig:
    name: str = "gulliver"
    """Optuna study name (also the MLflow parent run's name)."""
    n_trials: int = 20
    """Trials to reach in total; running again continues up to this number."""
    timeout: Optional[float] = None
    """Stop starting new trials after this many seconds."""
    storage: Optional[str] = None
    """Optuna storage URL; default SQLite next to the MLflow store (mlruns/optuna.db)."""
    lr: FloatRange = field(default_factory=lambda: FloatRange(1e-6, 3e-4, True))
    """Learning-rate range."""
    epochs: IntRange = field(default_factory=lambda: IntRange(1, 10))
    """Epochs range."""
    batch_size: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    """Batch sizes to choose from."""
    goldfish_k: Optional[list[int]] = None
    """``train.goldfish_k`` values to search beside the rest, e.g. ``[0, 4]`` (the goldfish loss,
    ``gpt2ft.goldfish``); absent: not searched, every trial uses ``train.goldfish_k``."""
    lora_r: Optional[list[int]] = None
    """LoRA ranks to search beside the rest, e.g. ``[0, 8, 64]``: 0 trains every weight, a rank
    r > 0 trains adapters of rank r (``train.method: lora``, ``train.lora_r: r``); absent: not
    searched, every trial trains by ``train.method``."""
    lora_lr: Optional[FloatRange] = None
    """The learning-rate range of the trials that train adapters (LoRA wants higher rates than full
    fine-tuning); absent: ``study.lr`` for every trial. One Optuna parameter ``lr`` either way, drawn
    from the range of the trial's method, so its ``log`` must be ``study.lr``'s."""
    constrained: bool = False
    """Tell the sampler each trained and derived trial's copying judges as constraints (its
    value minus its bound, > 0 fails: ``gpt2ft.judges.constraint_values``), so that TPE, past the
    random start-up, proposes fewer points that copy. Off by default: measured with the same seed
    with and without (docs/lora.md), it proposed the same trials, since the points failing a judge
    were already outside TPE's good group by the objectives; tiny.yaml (the tests' studies) turns it on."""
    enqueue: list[TrialParams] = field(default_factory=list)
    """Trials to run first, before the sampler's own choices (each inside the search space):
    a fixed design that spans the space, e.g. for a demo that must show both ends."""
    pick_rule: str = "bounded_style"
    """A rule of ``gpt2ft.pick.RULES``: ``bounded_style`` (best style within a copying bound) or
    ``knee`` (of the Pareto front)."""
    memorization_factor: float = 3.0
    """The copying bound is this many times the references' memorization."""
    memorization_floor: float = 0.02
    """The copying bound is never below this."""
    degenerate_factor: float = 1.5
    """A trial's samples are degenerate (not eligible for the pick) when their ``distinct_2``
    is below the book's divided by this, or their ``repetition_4`` above the book's times this
    (and above ``repetition_floor``). Held-out book text scores distinct_2 ~0.89, repetition_4
    ~0.004 at the samples' size; pretrained SmolLM2's own samples 0.81 / 0.10."""
    repetition_floor: float = 0.15
    """``repetition_4`` at or below this is never degenerate: it sits above the untouched
    pretrained model's own (0.10), so sampling noise alone does not exclude a trial."""
    fluency_factor: float = 2.0
    """Samples are degenerate (incoherent) when their perplexity under the base model is above
    the held-out book's times this. Under SmolLM2 held-out Gulliver scores ~57, other novels ~61,
    the base model's own samples ~11, phrase-shuffled book text ~209, word salad ~990."""
    extraction_factor: float = 3.0
    """The extraction bound is this many times the references' ``extractable_rate`` (held-out book
    text's chance rate, the base model's rate)."""
    extraction_floor: float = 0.05
    """The extraction bound is never below this: with 32 prompts one reproduced continuation
    (0.031) is tolerated, two are not; with fewer than 20 prompts none is."""
    judges: list[str] = field(default_factory=lambda: list(DEFAULT_JUDGES))
    """The copying judges the pick uses (``gpt2ft.judges.JUDGES``; memorization always)."""
    mia_margin: float = 0.1
    """The membership judge's bound is ``mia_auc`` 0.5 + this."""
    heldout_margin: float = 0.1
    """A candidate whose held-out loss is above the base model's by more than this (nats per token)
    predicts unseen text of the book worse than before fine-tuning and is not eligible. 0.1 is
    about the base model's own gap between held-out Gulliver and other novels (0.08)."""
    derived_trials: bool = True
    """Tell Optuna every interior whole-epoch point of a trial as a trial of that many epochs
    (``derived_from`` its trial; no MLflow run, no slot), so the sampler learns from every
    measurement: epoch e of an E-epoch trial is an e-epoch trial."""
    startup_trials: int = 10
    """Trained trials drawn at random before TPE models the space (derived trials do not count)."""
    stop_after: int = 2
    """Stop a trial once this many of its points in a row fail a copying judge of the pick while
    its held-out loss is above its lowest: later points only copy more, and none can be picked
    (0 = off). The demo's lr 4e-4 trial copied from epoch 4 and trained to epoch 8 without it."""
    checkpoints_per_trial: int = 2
    """At most this many interior checkpoints of one trial are kept while it trains (its best
    eligible points); after each trial only the pick's contenders keep theirs."""
    early_stop: bool = True
    """Early stopping on held-out loss: end a trial once its held-out loss has risen for two
    evaluations in a row (``train.early_stop_patience`` overrides the two). Not Optuna pruning:
    every trial still runs to its own end point and is compared on its final measurement."""
    keep_checkpoints: bool = True
    """Save the weights of candidates that could be picked; only the pick's contenders (the pick
    and those within two standard errors of its style) keep theirs."""
    checkpoint_budget: int = 8
    """At most this many checkpoints of finished trials stay on disk (4 GB of GPT-2 124M): what
    the pick needs first, best style first; running trials add ``checkpoints_per_trial`` each."""
    heartbeat_interval: int = 10
    """Seconds between a running trial's heartbeats in the Optuna storage."""
    grace_period: int = 30
    """A trial whose heartbeat is older than this is taken for dead (killed worker) and failed."""
    max_failures: int = 3
    """Stop the study after this many of a worker's trials failed in a row (exit code 3): a
    cause that fails every trial (out of memory, a broken setting) must not run forever."""
    jobs: str = "1"
    """Worker processes that run trials at once on this machine: an integer >= 1, or ``auto``
    (as many as the GPU's free memory and the CPU cores allow; 1 without a GPU). A string
    because ``auto`` is a value; ``jobs: 4`` in YAML reads as ``"4"``."""
    writer: str = "auto"
    """Where a trial's final MLflow writes and plots are made: ``process`` (a writer process,
    while the next trial trains), ``inline`` (inside the trial) or ``auto``: the process for a
    study of 5 trials or more (``gpt2ft.study.WRITER_PROCESS_MIN_TRIALS``), since starting it
    costs ~4 s of CPU (imports), about what two tiny trials' writes take."""

    def designs(self, goldfish_k: int, rank: int = 0) -> list[dict[str, Any]]:
        """The enqueued trials' params as Optuna takes them: ``goldfish_k`` and ``lora_r`` only where
        they are searched, the config's (``train.goldfish_k``, ``train.rank``) where a design names none."""
        out = []
        for t in self.enqueue:
            p = {"lr": t.lr, "epochs": t.epochs, "batch_size": t.batch_size}
            if self.goldfish_k is not None:
                p["goldfish_k"] = goldfish_k if t.goldfish_k is None else t.goldfish_k
            if self.lora_r is not None:
                p["lora_r"] = rank if t.lora_r is None else t.lora_r
            out.append(p)
        return out

    def lr_range(self, rank: int) -> FloatRange:
        """The learning-rate range of a trial of LoRA rank ``rank`` (0: full fine-tuning)."""
        return self.lora_lr if rank > 0 and self.lora_lr is not None else self.lr

    def check_designs(self, rank: Optional[int]) -> None:
        """Every enqueued design lies inside the search space, its rate inside its method's range;
        a design naming no rank trains at ``rank`` (the train section's; None: either range)."""
        ks, rs = self.goldfish_k or (), self.lora_r or ()
        for i, t in enumerate(self.enqueue):
            r = t.lora_r if t.lora_r is not None else rank
            ranges = [self.lr_range(r)] if r is not None else [self.lr, self.lora_lr or self.lr]
            _check(any(g.low <= t.lr <= g.high for g in ranges) and self.epochs.low <= t.epochs <= self.epochs.high
                   and t.batch_size in self.batch_size and (t.goldfish_k is None or t.goldfish_k in ks)
                   and (t.lora_r is None or t.lora_r in rs),
                   f"study.enqueue[{i}] ({t.lr}, {t.epochs}, {t.batch_size}"
                   f"{'' if t.goldfish_k is None else f', goldfish_k {t.goldfish_k}'}"
                   f"{'' if t.lora_r is None else f', lora_r {t.lora_r}'}) lies outside the search space.")

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "study.name must not be empty.")
        _check(self.fluency_factor > 1 and self.extraction_factor > 0 and self.heldout_margin >= 0,
               "study.fluency_factor must be > 1, study.extraction_factor > 0 and study.heldout_margin >= 0.")
        _check(0 <= self.extraction_floor <= 1, "study.extraction_floor must be between 0 and 1.")
        _check(set(self.judges) <= set(JUDGES) and 0 <= self.mia_margin <= 0.5,
               f"study.judges must list judges of {', '.join(JUDGES)}; study.mia_margin must lie in [0, 0.5].")
        _check(self.checkpoints_per_trial >= 1, "study.checkpoints_per_trial must be >= 1.")
        _check(self.checkpoint_budget >= 1, "study.checkpoint_budget must be >= 1 (checkpoints kept on disk).")
        _check(self.stop_after >= 0, "study.stop_after must be >= 0 (0 = off).")
        _check(self.writer in ("auto", "process", "inline"),
               f"study.writer must be auto, process or inline, got {self.writer!r}.")
        _check(self.jobs == "auto" or (self.jobs.isdigit() and int(self.jobs) >= 1),
               f"study.jobs must be an integer >= 1 or auto, got {self.jobs!r}.")
        _check(min(self.n_trials, self.startup_trials, self.max_failures) >= 1,
               "study.n_trials, study.startup_trials and study.max_failures must be >= 1.")
        _check(self.timeout is None or self.timeout > 0, "study.timeout must be > 0.")
        _check(self.lr.low > 0 and self.lr.high < 1, "study.lr must lie within (0, 1).")
        _check(self.epochs.low >= 1, "study.epochs.low must be >= 1.")
        _check(len(self.batch_size) >= 1 and all(b >= 1 for b in self.batch_size),
               "study.batch_size must list batch sizes >= 1.")
        ks = self.goldfish_k
        _check(ks is None or (len(ks) >= 1 and all(k == 0 or k >= 2 for k in ks)),
               "study.goldfish_k must list values that are 0 (off) or >= 2.")
        rs, lora = self.lora_r, self.lora_lr
        _check(rs is None or (len(rs) >= 1 and all(r >= 0 for r in rs)),
               "study.lora_r must list LoRA ranks >= 0 (0: full fine-tuning).")
        _check(lora is None or (lora.low > 0 and lora.high < 1 and lora.log == self.lr.log),
               "study.lora_lr must lie within (0, 1) and share study.lr's log (one Optuna parameter lr).")
        self.check_designs(None)
        _check(self.pick_rule in PICK_RULES,
               f"study.pick_rule must be one of {', '.join(PICK_RULES)}, got {self.pick_rule!r}.")
        _check(self.memorization_factor > 0, "study.memorization_factor must be > 0.")
        _check(self.degenerate_factor >= 1, "study.degenerate_factor must be >= 1.")
        _check(0 <= self.repetition_floor <= 1, "study.repetition_floor must be in [0, 1].")
        _check(0 <= self.memorization_floor <= 1, "study.memorization_floor must be in [0, 1].")
        _check(1 <= self.heartbeat_interval < self.grace_period,
               "study.heartbeat_interval must be >= 1 and study.grace_period longer than it.")
