"""The configuration schema: the types of every section of `conf/`, and no values.

Every value, and the comment that explains it, lives once, in `conf/*.yaml`: DVC composes `conf/`
with Hydra itself (`dvc exp run -S`) and cannot see these classes, so a default stated here would
be a second copy that only our composition applies. A field here therefore has no default (it is
required: a key the YAML leaves out is an error); only the entries that users add to lists and
dicts (`UserTaskConfig`, `PromptTemplate`, `ScalingSize`) give their optional keys a default, as
no YAML holds a template for them.

A field's annotation is its whole check: `Literal[...]` lists the allowed values, and the markers
in `Annotated[...]` (`Range`, `NonEmpty`, `Distinct`, `VariantsOf`) state bounds and shapes; one
generic validator in `tasks/config.py` checks them and reports the dotted key in one line.

`tasks/config.py` validates every composed config against `Config`; each stage module imports its
own section from here. This module imports nothing of the project but the world's names (its
tasks, defects and corpus kinds), so the dependency direction is conf -> tasks/schema -> tasks/config -> stages
-> model, and a broken stage module breaks no other entry point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from tasks.world.corpus import KINDS as CORPUS_KINDS
from tasks.world.instructions import ALL_DEFECTS
from tasks.world.tasks import TASKS

# --- the vocabulary of checks (interpreted by tasks/config.py) ----------------------------------


@dataclass(frozen=True)
class Range:
    """A number's bounds: ge/gt below (inclusive/exclusive), le/lt above; or one of `also` (a
    sentinel outside the bounds, such as -1 = all)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    also: tuple = ()


@dataclass(frozen=True)
class NonEmpty:
    """A list or dict with at least one entry."""


@dataclass(frozen=True)
class Distinct:
    """A list without a repeated value."""


@dataclass(frozen=True)
class VariantsOf:
    """A dict of named partial sections: each value overrides some settings of the section this
    field is in, and each of those is checked like the setting itself."""


Count = Annotated[int, Range(ge=1)]  # a number of things that must not be 0
Natural = Annotated[int, Range(ge=0)]  # 0 or more
Share = Annotated[float, Range(ge=0, le=1)]  # a fraction of something, in [0, 1]
NonNegative = Annotated[float, Range(ge=0)]
Positive = Annotated[float, Range(gt=0)]
Threads = Natural  # torch CPU threads; 0 = torch's default
Resume = Literal["auto", True, False]  # continue an unfinished run: of the same settings and inputs, always, never (tasks/resume.py)

WorldTask = Literal[tuple(TASKS)]  # the world's labelled tasks (tasks/world/tasks.py)
Defect = Literal[ALL_DEFECTS]  # the defects a demonstration can have (tasks/world/instructions.py)
CorpusKind = Literal[CORPUS_KINDS]  # the kinds of corpus document (tasks/world/corpus.py)

# --- model ----------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """The GPT's shape (`model/gpt.py`); the vocabulary size comes from the tokenizer."""

    name: str
    n_layer: Count
    n_head: Count
    n_embd: Count
    block_size: Count
    dropout: Annotated[float, Range(ge=0, lt=1)]
    bias: bool
    norm_position: Literal["pre", "post"]
    layer_norm_epsilon: Positive
    pos_encoding: Literal["learned", "rope"]
    rope_base: Positive

# --- data -----------------------------------------------------------------------------


@dataclass
class UserTaskConfig:
    """A labelled task read from files into tasks/<name>/ (an entry of `data.tasks`; its keys are
    documented in conf/data/files.yaml). `columns`, `labels` and `n_choices` may be left out."""

    name: str
    type: Literal["classification", "entailment", "similarity", "multiple_choice"]
    train: str
    val: str
    test: str
    columns: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    n_choices: Natural = 0


@dataclass
class InstructionFilesConfig:
    """Your own instructions (.jsonl/.csv/.parquet, fields prompt, response [, id, kind, meta]); all four or none."""

    sft_train: str
    sft_val: str
    rl_prompts: str
    rl_eval: str


@dataclass
class DemoFlawsConfig:
    """Demonstrations as people write them: a share of sft_train/sft_val gets one defect each."""

    share: Share
    mix: dict[Defect, NonNegative]


@dataclass
class TaskSizes:
    """Rows of one world task per split (an entry of `data.task_sizes`)."""

    train: Annotated[int, Range(ge=4, also=(-1,))]
    val: Annotated[int, Range(ge=4, also=(-1,))]
    test: Annotated[int, Range(ge=4, also=(-1,))]


@dataclass
class DataConfig:
    """Where the corpus, labelled tasks, prompt tasks and instructions come from (`tasks/data.py`):
    conf/data/world.yaml, and the other sources as deltas on it."""

    source: Literal["world", "pydoc", "files", "hf"]
    out_dir: str
    seed_offset: int
    corpus_mb: float
    corpus_kinds: Annotated[dict[CorpusKind, NonNegative], NonEmpty()]  # share of the corpus bytes per kind
    n_train: Annotated[int, Range(ge=4)]  # every split needs each of up to 4 labels once
    n_val: Annotated[int, Range(ge=4)]
    n_test: Annotated[int, Range(ge=4)]
    task_sizes: dict[WorldTask, TaskSizes]
    n_prompt_train: Count
    n_prompt_test: Count
    n_sft_train: Count
    n_sft_val: Count
    n_rl_prompts: Count
    n_rl_eval: Count
    oracle_noise: NonNegative
    demo_flaws: DemoFlawsConfig
    include_world_tasks: bool
    paths: list[str]
    text_column: str
    txt_mode: Literal["paragraph", "file"]
    max_docs: int
    tasks: list[UserTaskConfig]
    instructions: InstructionFilesConfig
    hf_path: str
    hf_split: str

# --- tokenize -------------------------------------------------------------------------


@dataclass
class TokenizerConfig:
    """The byte-level tokenizer (`tasks/tokenize.py`): conf/tokenizer/<kind>.yaml."""

    kind: Literal["bpe", "char"]
    vocab_size: Count
    min_frequency: Count
    path: str | None
    in_dir: str
    out_dir: str
    val_fraction: Annotated[float, Range(ge=0, lt=1)]
    num_workers: Natural

# --- pretrain -------------------------------------------------------------------------


@dataclass
class PretrainIcl:
    """The in-context learning score after pre-training (`model/icl.py`)."""

    windows: Count
    early: Annotated[list[Natural], NonEmpty]  # [start, end), before `late` (checked by the stage)
    late: Annotated[list[Natural], NonEmpty]
    buckets: Count
    batch_size: Count


@dataclass
class PretrainConfig:
    """GPT-1 §3.1, next-token pre-training (`tasks/pretrain.py`)."""

    data_dir: str
    out_dir: str
    metrics_file: str
    curve_file: str
    position_loss_file: str
    init: str
    block_size: int
    short_block: Count
    short_fraction: Share
    batch_size: Count
    micro_batch_size: Count
    max_steps: int
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    eval_every: int
    eval_batches: int
    ckpt_every: int
    resume: Resume
    compile: bool
    dtype: Literal["auto", "float32", "bfloat16"]
    log_every: int
    progress: bool
    threads: Threads
    icl: PretrainIcl

# --- finetune -------------------------------------------------------------------------


@dataclass
class AblationGrid:
    """The settings run besides the main one: every init x lm_coef."""

    init: list[Literal["pretrain", "scratch"]]
    lm_coef: list[NonNegative]


@dataclass
class FinetuneConfig:
    """GPT-1 §3.2-3.3, fine-tuning on labelled tasks (`tasks/finetune.py`, `tasks/finetune_report.py`)."""

    tasks: list[str]
    task: str
    init: Literal["pretrain", "scratch"]
    lm_coef: NonNegative
    ablations: AblationGrid
    epochs: Count
    task_epochs: dict[str, Count]
    batch_size: int
    lr: float
    warmup_fraction: float
    weight_decay: float
    grad_clip: float
    clf_dropout: float
    special_init: Literal["keep", "mean"]
    max_len: Annotated[int, Range(ge=4, also=(-1,))]  # and at most the model's block_size (checked by the stage)
    max_train_rows: int
    eval_batch_size: int
    seed: int
    threads: Threads
    progress: bool
    pretrained_dir: str
    data_dir: str
    out_dir: str
    metrics_dir: str
    report_file: str
    table_file: str

# --- prompt_eval ----------------------------------------------------------------------


@dataclass
class PromptTemplate:
    """How one task is posed as text (an entry of `prompt_eval.tasks`; its keys are documented in
    conf/prompt_eval.yaml). Every key but `template` may be left out, taking the value below."""

    template: str
    task: str = ""
    target: str = " {answer}"
    instruction: str = ""
    verbalizer: dict[str, str] = field(default_factory=dict)
    example_separator: str = "\n\n"
    stop: list[str] = field(default_factory=lambda: ["\n"])
    max_new_tokens: int = 8


@dataclass
class PromptEvalConfig:
    """GPT-2 / GPT-3: tasks posed as text prompts, scored zero/one/few-shot (`tasks/prompt_eval.py`)."""

    model: str
    checkpoints: dict[str, str]
    tokenizer_path: str
    data_dir: str
    tasks: dict[str, PromptTemplate]
    select: list[str]
    shots: Annotated[list[Natural], NonEmpty(), Distinct()]
    max_items: Annotated[int, Range(ge=1, also=(-1,))]
    seed: int
    batch_size: Count
    too_long: Literal["error", "skip"]
    threads: Threads
    metrics_file: str
    table_file: str
    curve_file: str
    plot_file: str

# --- sft ------------------------------------------------------------------------------


@dataclass
class SFTConfig:
    """InstructGPT step 1, supervised fine-tuning on demonstrations (`tasks/sft.py`)."""

    init: str
    data_dir: str
    out_dir: str
    metrics_file: str
    curve_file: str
    samples_file: str
    table_file: str
    epochs: int
    batch_size: int
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    dropout: Annotated[float, Range(ge=0, lt=1)]
    max_train_rows: int
    eval_every: int
    ckpt_every: int
    resume: Resume
    eval_prompts: int
    max_new_tokens: int
    eval_batch_size: int
    baselines: bool
    few_shot_k: int
    n_samples: int
    log_every: int
    progress: bool
    threads: Threads
    seed: int

# --- collect_rankings -----------------------------------------------------------------


@dataclass
class CollectRankingsConfig:
    """InstructGPT step 2's data: K sampled responses per RL prompt, ranked (`tasks/collect_rankings.py`)."""

    prompts_file: str
    n_prompts: int
    policies: Annotated[list[str], NonEmpty()]
    temperatures: Annotated[list[Positive], NonEmpty()]
    top_p: Annotated[float, Range(gt=0, le=1)]
    k: Annotated[int, Range(ge=2, le=9)]
    max_new_tokens: int
    batch_size: int
    candidates_file: str
    candidates_csv: str
    candidates_metrics: str
    labeler: Literal["oracle", "human", "web", "file"]
    oracle_noise: NonNegative
    labels_file: str
    import_file: str
    human_timeout_s: int
    web_host: str
    web_port: Annotated[int, Range(ge=0, le=65535)]
    out_file: str
    metrics_file: str
    seed: int
    threads: Threads

# --- train_rm -------------------------------------------------------------------------


@dataclass
class TrainRMConfig:
    """InstructGPT step 2, the reward model and its K-way ranking loss (`tasks/train_rm.py`)."""

    rankings_file: str
    instructions_dir: str
    bias_file: str
    init: str
    out_dir: str
    metrics_file: str
    heldout_fraction: Share
    val_fraction: Share
    split_seed: int
    epochs: int
    patience: int
    batch_size: int
    lr: float
    warmup_fraction: float
    min_lr: float
    weight_decay: float
    grad_clip: float
    dropout: Annotated[float, Range(ge=0, lt=1)]
    head_dropout: Annotated[float, Range(ge=0, lt=1)]
    lm_feature: bool
    pack: bool
    max_len: int
    eval_batch_size: int
    labeler_noise: NonNegative
    seed: int
    threads: Threads
    log_every: int
    ckpt_every: Natural
    resume: Resume
    progress: bool

# --- ppo ------------------------------------------------------------------------------


@dataclass
class PPOConfig:
    """InstructGPT step 3: PPO against the reward model, per-token KL penalty, PPO-ptx (`tasks/ppo.py`)."""

    variant: str
    variants: Annotated[dict[str, Any], VariantsOf()]
    policy: str
    reward_model: str
    prompts_file: str
    pretrain_data: str
    models_dir: str
    metrics_dir: str
    reward: Literal["rm", "oracle"]
    value: Literal["rm", "sft", "shared"]
    estimator: Literal["ppo", "rloo", "grpo"]  # ppo, and model/rl.py's ADVANTAGE_ESTIMATORS
    group_size: int
    updates: Natural
    episodes: Count
    minibatch: Count
    ppo_epochs: int
    lr: float
    value_lr: float
    vf_coef: float
    beta: NonNegative
    kl_estimator: Literal["k1", "k3"]  # model/rl.py's KL_ESTIMATORS
    kl_target: NonNegative
    kl_horizon: int
    gamma: float
    lam: float
    clip: float
    value_clip: float
    whiten: bool
    grad_clip: float
    temperature: Positive
    max_new_tokens: Count
    no_eos_penalty: float
    ptx_coef: NonNegative
    ptx_batch_size: int
    ptx_block: int
    eval_every: int
    eval_prompts: int
    samples_every: int
    n_samples: int
    ckpt_every: int
    resume: Resume
    progress: bool
    threads: Threads
    seed: int

# --- dpo ------------------------------------------------------------------------------


@dataclass
class DPOConfig:
    """Direct preference optimisation on the rankings, beside PPO (`tasks/dpo.py`)."""

    policy: str
    reference: str
    rankings_file: str
    reward_model: str
    prompts_file: str
    out_dir: str
    metrics_file: str
    curve_file: str
    pairs: Literal["all", "best_vs_rest"]
    loss: Literal["sigmoid", "ipo"]  # model/rl.py's DPO_LOSSES
    beta: Positive
    epochs: Natural
    batch_size: Count
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    eval_every: int
    eval_prompts: int
    max_new_tokens: int
    ckpt_every: int
    resume: Resume
    log_every: int
    progress: bool
    threads: Threads
    seed: int

# --- evaluate -------------------------------------------------------------------------


@dataclass
class EvaluateConfig:
    """InstructGPT Figure 1 on the world: every policy on the held-out prompts (`tasks/evaluate.py`)."""

    prompts_file: str
    max_prompts: int
    pretrain: str
    demos_file: str
    few_shot_k: int
    policies: dict[str, str]
    reference: str
    reward_model: str
    max_new_tokens: int
    batch_size: int
    pretrain_data: str
    val_windows: int
    prompt_eval_items: int
    sampled_n: Natural
    tax_pairs: list[list[str]]
    best_of_n: list[Count]
    best_of_n_from: str
    curves: list[str]
    register_policy: str
    metrics_file: str
    samples_file: str
    table_file: str
    plot_file: str
    overopt_file: str
    seed: int
    threads: Threads

# --- scaling (flows/scaling.py: not a stage of the default DAG) ------------------------


@dataclass
class ScalingSize:
    """One model shape of the scaling experiment (an entry of `scaling.sizes`); the layer, head and
    width counts left out are the default model's."""

    name: str
    n_layer: Count = 4
    n_head: Count = 4
    n_embd: Count = 128


@dataclass
class CopyProbe:
    """Olsson et al.'s repeated random tokens (model/induction.py), run on each size's checkpoint by the report."""

    length: Count  # tokens per copy (fewer where two copies and EOS would not fit the window)
    sequences: Count


@dataclass
class ScalingConfig:
    """The scaling experiment: the default corpus pre-trained at several model sizes (`flows/scaling.py`)."""

    sizes: list[ScalingSize]
    max_steps: int
    concurrency: Count
    out_dir: str
    metrics_dir: str
    report_file: str
    plot_file: str
    copy_probe: CopyProbe


# --- seeds (flows/seeds.py: not a stage of the default DAG) ---------------------------

@dataclass
class SeedsConfig:
    """The RLHF comparison over seeds (`flows/seeds.py`, `tasks/seeds.py`)."""

    seeds: list[int]
    methods: list[str]
    concurrency: Count
    out_dir: str
    metrics_dir: str
    report_file: str
    table_file: str


@dataclass
class GPT1SeedsConfig:
    """GPT-1's fine-tuning verdicts over pre-training seeds (`flows/gpt1_seeds.py`, `tasks/gpt1_seeds.py`)."""

    seeds: list[int]
    tasks: list[str]
    concurrency: Count
    pretrain_threads: Threads
    out_dir: str
    metrics_dir: str
    report_file: str
    table_file: str


# --- tracking -------------------------------------------------------------------------

@dataclass
class TrackingConfig:
    """MLflow: one parent run per pipeline run, one child run per stage."""

    enabled: bool
    uri: str
    artifact_dir: str
    experiment: str
    log_checkpoints: bool


# --- pipeline -------------------------------------------------------------------------

@dataclass
class PipelineConfig:
    """How the flow runs the DAG (`flows/pipeline.py`); nothing here changes a stage's numbers."""

    concurrency: Natural
    profile_file: str
    gpu_stages: list[str]


# --- the root -------------------------------------------------------------------------

@dataclass
class Config:
    """The composed config (conf/config.yaml and its defaults list): one field per section."""

    seed: int
    device: str
    resume_dir: str
    model: ModelConfig
    data: DataConfig
    tokenizer: TokenizerConfig
    pretrain: PretrainConfig
    finetune: FinetuneConfig
    prompt_eval: PromptEvalConfig
    sft: SFTConfig
    collect_rankings: CollectRankingsConfig
    train_rm: TrainRMConfig
    ppo: PPOConfig
    dpo: DPOConfig
    evaluate: EvaluateConfig
    tracking: TrackingConfig
    pipeline: PipelineConfig
    scaling: ScalingConfig
    seeds: SeedsConfig
    gpt1_seeds: GPT1SeedsConfig
