"""The configuration schema: one dataclass per section of `conf/`, each commented where defined.

`tasks/config.py` assembles them into the root `Config` and validates every composed config
against it; each stage module imports its own section from here. This module imports nothing
of the project but the world's calibrated labeler noise, so the dependency direction is conf -> tasks/schema -> tasks/config -> stages
-> model, and a broken stage module breaks no other entry point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tasks.world.oracle import DEFAULT_NOISE

# --- data -----------------------------------------------------------------------------

@dataclass
class UserTaskConfig:
    """A labelled task read from files into tasks/<name>/ (row N = N-th record; CSV header not counted)."""

    name: str = ""  # folder name under tasks/: letters, digits, '_', '-', '.'
    type: str = "classification"  # classification | entailment | similarity | multiple_choice
    train: str = ""  # path of the train split (.jsonl, .csv or .parquet)
    val: str = ""  # path of the validation split
    test: str = ""  # path of the test split
    # contract field -> column in the files, e.g. {text: review, label: stars}; a field not named
    # here is read from the column of its own name. multiple_choice `choices`: one column holding
    # a list (a JSON list in CSV) or comma-separated columns, e.g. "ending0,ending1,ending2,ending3"
    columns: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)  # class names (not for multiple_choice); others are errors
    n_choices: int = 0  # multiple_choice: choices per row; 0 = as many as the first train row has


@dataclass
class InstructionFilesConfig:
    """Your own instructions (.jsonl/.csv/.parquet, fields prompt, response [, id, kind, meta]); all four or none."""

    sft_train: str = ""  # demonstrations for SFT: prompt + response
    sft_val: str = ""  # held-out demonstrations
    rl_prompts: str = ""  # prompts for rankings and PPO (response not needed)
    rl_eval: str = ""  # held-out prompts for evaluation


def _uniform_flaw_mix() -> dict[str, float]:
    return {d: 1.0 for d in ("too_long", "no_clean_end", "banned_word", "repetitive", "wrong_mood", "missing_subject",
                             "false_fact", "off_topic")}


@dataclass
class DemoFlawsConfig:
    """Demonstrations as people write them: a share of sft_train/sft_val gets one defect each."""

    share: float = 0.5  # of each sft split's demonstrations, in [0, 1]; 0 = every demonstration is perfect
    mix: dict[str, float] = field(default_factory=_uniform_flaw_mix)  # defect -> weight among a kind's own defects


@dataclass
class TaskSizes:
    train: int = -1  # labelled rows of this world task per split; -1 = data.n_train / n_val / n_test
    val: int = -1
    test: int = -1


@dataclass
class DataConfig:
    source: str = "world"  # world | pydoc | files | hf: where the corpus comes from
    out_dir: str = "data/raw"  # stage output: corpus.jsonl, tasks/, prompts/, instructions/, stats.json
    seed_offset: int = 0  # the world uses seed + seed_offset (another offset: another world, same config)
    # --- the world (source=world; the sizes also apply to the world tasks added to other sources)
    corpus_mb: float = 3.0  # world corpus size, MB of UTF-8 text (1 MB = 1e6 bytes)
    n_train: int = 300  # examples per world task split, rounded down to a multiple of the class count
    n_val: int = 150
    n_test: int = 300
    task_sizes: dict[str, TaskSizes] = field(default_factory=dict)  # per world task: {train, val, test}
    n_prompt_train: int = 64  # few-shot pool per prompt task (antonym: at most 12 words)
    n_prompt_test: int = 200  # scored items per prompt task (antonym: the remaining ~40 words)
    n_sft_train: int = 1500  # demonstrations
    n_sft_val: int = 150
    n_rl_prompts: int = 1000  # prompts for rankings and PPO
    n_rl_eval: int = 200  # held-out prompts
    oracle_noise: float = DEFAULT_NOISE  # ranking temperature, score units; 0 = exact; 0.09 -> ~73% pair agreement
    demo_flaws: DemoFlawsConfig = field(default_factory=DemoFlawsConfig)  # flawed SFT demonstrations (world only)
    include_world_tasks: bool = True  # pydoc/files/hf: also write the world's tasks, prompts, instructions
    # --- your own data (any source)
    paths: list[str] = field(default_factory=list)  # source=files: corpus files (.txt/.jsonl/.csv/.parquet)
    text_column: str = "text"  # the document column of .jsonl/.csv/.parquet corpora and of hf datasets
    txt_mode: str = "paragraph"  # .txt: paragraph = one document per blank-line-separated block | file
    max_docs: int = -1  # pydoc/files/hf: keep the first N documents; -1 = all
    tasks: list[UserTaskConfig] = field(default_factory=list)  # labelled tasks from files
    instructions: InstructionFilesConfig = field(default_factory=InstructionFilesConfig)
    hf_path: str = ""  # source=hf: a local dataset folder (save_to_disk, or data files); never downloaded
    hf_split: str = "train"  # source=hf: the split of a DatasetDict

# --- tokenize -------------------------------------------------------------------------

@dataclass
class TokenizerConfig:
    kind: str = "bpe"  # bpe: learn merges | char: bytes only (256 + specials)
    vocab_size: int = 4096  # total, special tokens included
    min_frequency: int = 2  # a pair must occur this often to become a merge
    path: str | None = None  # reuse this tokenizer.json instead of training
    in_dir: str = "data/raw"  # reads corpus.jsonl
    out_dir: str = "data/tokenized"  # writes tokenizer.json, train.bin, val.bin, meta.json
    val_fraction: float = 0.05  # share of documents held out for validation
    num_workers: int = 0  # encoding threads; 0 = one per CPU core

# --- pretrain -------------------------------------------------------------------------

@dataclass
class PretrainConfig:
    data_dir: str = "data/tokenized"  # train.bin, val.bin, meta.json, tokenizer.json
    out_dir: str = "models/pretrain"  # checkpoint folder
    metrics_file: str = "metrics/pretrain.json"  # final metrics (DVC metrics)
    curve_file: str = "metrics/pretrain_curve.csv"  # step,train_loss,val_loss,val_loss_short (DVC plot)
    init: str = "scratch"  # scratch | checkpoint folder | Hugging Face GPT-2 folder
    block_size: int = -1  # tokens per training sequence; -1 = model.block_size
    short_block: int = 128  # piece length of the short windows (short_fraction) and of val_loss_short
    short_fraction: float = 0.0  # share of every step's windows cut into short_block pieces (0 = none)
    batch_size: int = 32  # sequences per optimizer step, all processes together
    micro_batch_size: int = 32  # sequences per forward pass per process
    max_steps: int = 1500  # optimizer steps
    lr: float = 3e-3  # peak learning rate
    min_lr: float = 3e-4  # end of the cosine decay
    warmup_steps: int = 50  # linear warm-up, steps
    weight_decay: float = 0.1  # AdamW decay on matmul weights
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    eval_every: int = 250  # steps between validation passes; 0 = only at the end
    eval_batches: int = 10  # micro-batches per validation pass
    ckpt_every: int = 500  # steps between checkpoints; 0 = only at the end
    resume: bool = False  # continue from the checkpoint in out_dir
    compile: bool = False  # torch.compile the model
    dtype: str = "auto"  # auto (bf16 autocast on CUDA) | float32 | bfloat16
    log_every: int = 10  # steps between metric logs
    progress: bool = True  # progress bar with tokens/s
    threads: int = 0  # torch CPU threads; 0 = torch's default

# --- finetune -------------------------------------------------------------------------

@dataclass
class AblationGrid:
    init: list[str] = field(default_factory=lambda: ["pretrain", "scratch"])  # pretrain | scratch
    lm_coef: list[float] = field(default_factory=lambda: [0.0, 0.5])  # λ values


@dataclass
class FinetuneConfig:
    tasks: list[str] = field(default_factory=lambda: ["sentiment", "entailment", "paraphrase", "story_cloze"])
    task: str = "sentiment"  # the one task this invocation fine-tunes (a folder under <data_dir>/tasks/)
    init: str = "pretrain"  # main setting: pretrain (pretrained_dir weights) | scratch (random, same shape)
    lm_coef: float = 0.5  # λ in L3 = L2 + λ·L1; 0 = no auxiliary LM loss (not even computed)
    ablations: AblationGrid = field(default_factory=AblationGrid)  # extra settings; a list empty = main only
    epochs: int = 3  # passes over the training split
    task_epochs: dict[str, int] = field(default_factory=dict)  # task -> epochs, overriding `epochs` for that task
    batch_size: int = 8  # examples per optimizer step
    lr: float = 3e-4  # peak learning rate
    warmup_fraction: float = 0.05  # share of all steps spent in linear warm-up
    weight_decay: float = 0.01  # AdamW decay on matmul weights
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    clf_dropout: float = 0.1  # dropout on the classifier input
    special_init: str = "keep"  # embeddings of <|start|> <|delim|> <|extract|> from pre-training: keep | mean (of the text tokens')
    max_len: int = -1  # tokens per sequence after the transform; -1 = the model's block_size
    max_train_rows: int = -1  # use only the first N training rows; -1 = all
    eval_batch_size: int = 128  # examples per forward pass when evaluating
    seed: int = 1337  # init of head / scratch body, data order
    threads: int = 1  # torch CPU threads; 0 = torch's default (one per core)
    progress: bool = True  # one line per epoch on stderr
    pretrained_dir: str = "models/pretrain"  # checkpoint folder with tokenizer.json
    data_dir: str = "data/raw"  # reads tasks/<task>/{task.json,train,val,test.jsonl}
    out_dir: str = "models/finetune"  # writes <out_dir>/<task>/ (main setting)
    metrics_dir: str = "metrics/finetune"  # writes <metrics_dir>/<task>.json (all settings)
    report_file: str = "metrics/finetune.json"  # finetune_report: all tasks merged
    table_file: str = "metrics/finetune_table.md"  # finetune_report: the markdown table

# --- prompt_eval ----------------------------------------------------------------------

@dataclass
class PromptTemplate:
    """How one task is posed as text; `{field}`s are filled from the task's rows (str.format)."""

    template: str = ""  # the query, e.g. "Review: {text}\nSentiment:" (fields of task.json)
    task: str = ""  # the data folder under data_dir; "" = this template's own name
    target: str = " {answer}"  # what follows the query: each choice scored, or an example's solution
    instruction: str = ""  # task description placed before the examples ("" = none); no fields
    verbalizer: dict[str, str] = field(default_factory=dict)  # answer -> the words {answer} becomes ({} = itself)
    example_separator: str = "\n\n"  # between the instruction, each solved example and the query
    stop: list[str] = field(default_factory=lambda: ["\n"])  # generate tasks: the answer ends at the first of these
    max_new_tokens: int = 8  # generate tasks: greedy decoding budget, tokens


@dataclass
class PromptEvalConfig:
    model: str = "pretrain"  # a name in `checkpoints`, or any checkpoint folder / Hugging Face GPT-2 folder
    checkpoints: dict[str, str] = field(
        default_factory=lambda: {"pretrain": "models/pretrain", "sft": "models/sft", "ppo": "models/ppo"}
    )  # checkpoint names -> folders
    tokenizer_path: str = ""  # "" = tokenizer.json inside the model folder
    data_dir: str = "data/raw/prompts"  # <task>/task.json, train.jsonl, test.jsonl
    tasks: dict[str, PromptTemplate] = field(default_factory=dict)  # task name -> its template
    select: list[str] = field(default_factory=list)  # tasks to evaluate; [] = every task in `tasks`
    shots: list[int] = field(default_factory=lambda: [0, 1, 4])  # k solved examples before each query
    max_items: int = 200  # test items per task (the first ones); -1 = all
    seed: int = 1337  # draws each item's examples
    batch_size: int = 64  # sequences per forward pass (an item's choices are never split)
    too_long: str = "error"  # a query that alone overflows the window: error | skip (counted as `skipped`)
    threads: int = 1  # torch CPU threads; 0 = torch's default
    metrics_file: str = "metrics/prompt_eval.json"  # {model: {task: {k<k>: {acc, acc_norm, n, chance, ...}}}}
    table_file: str = "metrics/prompt_eval_table.md"  # accuracy by task and k, chance beside it
    curve_file: str = "metrics/prompt_eval_curve.csv"  # model,task,k,acc,chance (DVC plot)
    plot_file: str = "metrics/prompt_eval_curve.png"  # accuracy against k, one panel per task

# --- sft ------------------------------------------------------------------------------

@dataclass
class SFTConfig:
    init: str = "models/pretrain"  # checkpoint folder to fine-tune (with its tokenizer.json)
    data_dir: str = "data/raw/instructions"  # sft_train.jsonl, sft_val.jsonl, rl_eval.jsonl
    out_dir: str = "models/sft"  # checkpoint folder
    metrics_file: str = "metrics/sft.json"  # losses and oracle scores (DVC metrics)
    curve_file: str = "metrics/sft_curve.csv"  # step,train_loss,val_loss (DVC plot)
    samples_file: str = "metrics/sft_samples.csv"  # rl_eval prompts with each model's response and score
    table_file: str = "metrics/sft_table.md"  # oracle score by kind: pre-trained zero/few-shot vs SFT
    epochs: int = 8  # passes over sft_train
    batch_size: int = 16  # demonstrations per optimizer step
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # end of the cosine decay
    warmup_steps: int = 20  # linear warm-up, steps
    weight_decay: float = 0.0  # AdamW decay on matmul weights
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    dropout: float = 0.0  # model dropout while fine-tuning (the paper: 0.2); the saved model has 0
    max_train_rows: int = -1  # use the first N demonstrations; -1 = all
    eval_every: int = 100  # steps between validation losses; 0 = only at the end
    ckpt_every: int = 200  # steps between checkpoints; 0 = only at the end
    resume: bool = False  # continue from the checkpoint in out_dir
    eval_prompts: int = -1  # rl_eval prompts scored by the oracle; -1 = all
    max_new_tokens: int = 40  # response budget when generating (tokens)
    eval_batch_size: int = 64  # prompts per generation batch
    baselines: bool = True  # also score the pre-trained model zero- and few-shot
    few_shot_k: int = 3  # demonstrations in context for the few-shot baseline (as many as fit)
    n_samples: int = 24  # rows of the samples table
    log_every: int = 10  # steps between metric logs
    progress: bool = True  # a line per log interval on stderr
    threads: int = 0  # torch CPU threads; 0 = torch's default
    seed: int = 1337  # batch order and dropout

# --- collect_rankings -----------------------------------------------------------------

@dataclass
class CollectRankingsConfig:
    prompts_file: str = "data/raw/instructions/rl_prompts.jsonl"  # rows {id, kind, prompt, meta}
    n_prompts: int = -1  # the first N prompts get candidates; -1 = all
    policies: list[str] = field(default_factory=lambda: ["models/sft"])  # checkpoints; response i from policies[i % P]
    temperatures: list[float] = field(default_factory=lambda: [0.8, 1.0, 1.2, 1.5])  # response i at temperatures[i % T]
    top_p: float = 1.0  # nucleus sampling; 1.0 = off
    k: int = 8  # responses per prompt (the paper: 4 to 9)
    max_new_tokens: int = 40  # response budget, tokens
    batch_size: int = 64  # prompts per generation batch
    candidates_file: str = "data/rankings/candidates.jsonl"
    candidates_csv: str = "data/rankings/candidates.csv"  # the same for labelling tools
    candidates_metrics: str = "metrics/candidates.json"  # tie share, labeler agreement, score by source
    labeler: str = "oracle"  # oracle | human | file
    oracle_noise: float = 0.09  # ranking temperature of the oracle labeler (score units)
    labels_file: str = "labels/human.jsonl"  # human: the append-only answers of the ranking form
    import_file: str = "labels/rankings.csv"  # file: rankings from a labelling tool (id, ranking)
    human_timeout_s: int = 3600  # human: how long the flow waits for one answer
    out_file: str = "data/rankings/rankings.parquet"
    metrics_file: str = "metrics/collect_rankings.json"
    seed: int = 1337  # sampling and the oracle labeler's noise
    threads: int = 0  # torch CPU threads; 0 = torch's default

# --- train_rm -------------------------------------------------------------------------

@dataclass
class TrainRMConfig:
    rankings_file: str = "data/rankings/rankings.parquet"  # collect_rankings' output: id, kind, prompt, responses, ranking
    instructions_dir: str = "data/raw/instructions"  # rl_prompts.jsonl (kind, meta by id) and the bias file
    bias_file: str = "sft_val.jsonl"  # demonstrations (in instructions_dir) that score 0 on average after training
    init: str = "models/sft"  # checkpoint folder (with tokenizer.json) the RM's trunk starts from
    out_dir: str = "models/rm"  # the RM checkpoint folder
    metrics_file: str = "metrics/train_rm.json"  # final metrics (DVC metrics)
    heldout_fraction: float = 0.2  # share of prompts held out for the final numbers (never selected on)
    val_fraction: float = 0.0  # share of prompts (outside held-out) for early stopping; 0 = none
    split_seed: int = 1337  # seeds the by-prompt split (hash of seed and prompt id)
    epochs: int = 2  # passes over the training prompts (the paper: 1; measured here: 2 pays with K=8)
    patience: int = 0  # epochs without a better val accuracy before stopping; 0 = off (needs val_fraction > 0)
    batch_size: int = 8  # prompts per optimizer step (all C(K,2) pairs of a prompt are one element)
    lr: float = 3e-4  # peak learning rate
    warmup_fraction: float = 0.05  # share of all steps in linear warm-up, then cosine decay to min_lr
    min_lr: float = 0.0  # end of the cosine decay
    weight_decay: float = 0.01  # AdamW decay on matmul weights (and the head's weight)
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    dropout: float = 0.0  # trunk dropout (embeddings, attention, residual branches) while training
    head_dropout: float = 0.0  # dropout on the last-token state before the head, while training
    lm_feature: bool = True  # add the learned-scale mean log-likelihood of the response under the trunk (model/reward.py)
    pack: bool = True  # training forwards each prompt once with its K responses (tree attention mask)
    max_len: int = -1  # tokens per prompt + response; -1 = the trunk's block_size (the prompt is left-cut)
    eval_batch_size: int = 64  # prompts per forward pass when scoring
    labeler_noise: float = 0.09  # the oracle labelers' noise for the agreement ceiling (data.oracle_noise)
    seed: int = 1337  # head init, dropout, data order, labeler-agreement sampling
    threads: int = 1  # torch CPU threads; 0 = torch's default (one per core)
    log_every: int = 10  # optimizer steps between train-loss logs
    progress: bool = True  # one line per epoch on stderr

# --- ppo ------------------------------------------------------------------------------

@dataclass
class PPOConfig:
    variant: str = "ppo"  # this run's name: writes {models_dir}/{variant}/, {metrics_dir}/{variant}.json, {variant}_curve.csv
    variants: dict[str, Any] = field(default_factory=lambda: {"ppo": {}, "ppo_ptx": {"ptx_coef": 0.2}, "ppo_gold": {"reward": "oracle"},
                                                                          "rloo_ptx": {"estimator": "rloo", "ptx_coef": 0.2}})  # per variant: the settings it overrides
    policy: str = "models/sft"  # the policy's start and the frozen KL reference (a checkpoint with tokenizer.json)
    reward_model: str = "models/rm"  # the frozen reward model (RewardModel checkpoint); also the value model's start
    prompts_file: str = "data/raw/instructions/rl_prompts.jsonl"  # rows {id, kind, prompt, meta}
    pretrain_data: str = "data/tokenized"  # train.bin for PPO-ptx; never read when ptx_coef = 0
    models_dir: str = "models"  # the checkpoint goes to {models_dir}/{variant}
    metrics_dir: str = "metrics/ppo"  # {variant}.json (final metrics) and {variant}_curve.csv (per update)
    reward: str = "rm"  # rm: the reward model's normalised score | oracle: the world's oracle (the gold-reward run)
    value: str = "shared"  # value model: rm (separate, from the RM) | sft (separate, SFT trunk, zero head) | shared (head on the policy trunk)
    estimator: str = "ppo"  # advantages: ppo (GAE with the value model) | rloo | grpo (group_size samples per prompt, no value model)
    group_size: int = 4  # k samples per prompt for rloo/grpo (>= 2; episodes a multiple of it); ignored by ppo
    updates: int = 60  # PPO updates, each one rollout batch
    episodes: int = 64  # responses per rollout batch (ppo: one per prompt; rloo, grpo: group_size per prompt)
    minibatch: int = 16  # episodes per gradient step
    ppo_epochs: int = 2  # passes over each rollout batch (the paper: 1)
    lr: float = 1.5e-4  # policy AdamW learning rate, constant
    value_lr: float = 1e-3  # value model AdamW learning rate, constant
    vf_coef: float = 0.1  # weight of the value loss in the loss (matters with value=shared, where it reaches the trunk)
    beta: float = 0.2  # KL coefficient β (per token, nats; the paper: 0.02); >= 0
    kl_estimator: str = "k1"  # the penalty's per-token KL: k1 = log π − log π_ref | k3 = (r − 1) − log r, r = π_ref/π
    kl_target: float = 0.0  # adaptive β toward this KL (nats per response); 0 = β fixed
    kl_horizon: int = 10000  # adaptive β's horizon, episodes (lm-human-preferences: 10,000)
    gamma: float = 1.0  # GAE discount per token (the paper: none, 1)
    lam: float = 0.95  # GAE λ
    clip: float = 0.2  # PPO ratio clip ε
    value_clip: float = 0.2  # value clip, in normalised reward units
    whiten: bool = True  # whiten advantages over each rollout batch
    grad_clip: float = 1.0  # max global grad norm, policy and value model each; 0 = off
    temperature: float = 1.0  # sampling temperature (the paper: 1); log-probs use logits / temperature
    max_new_tokens: int = 40  # response-length limit, tokens (the prompt is left-cut so this many fit)
    no_eos_penalty: float = 1.0  # subtracted from the score of a response cut off without EOS; 0 = none
    ptx_coef: float = 0.0  # γ_ptx: weight of the pre-training loss on every minibatch (PPO-ptx); 0 = plain PPO
    ptx_batch_size: int = 8  # pre-training windows per minibatch
    ptx_block: int = -1  # tokens per pre-training window; -1 = the model's block_size
    eval_every: int = 10  # updates between greedy evaluations on held-out prompts; 0 = at start and end only
    eval_prompts: int = 100  # held-out prompts (the RM's held-out split of prompts_file) evaluated; 0 = none
    samples_every: int = 10  # updates between tables of sampled responses (MLflow); 0 = none
    n_samples: int = 8  # rows per samples table
    ckpt_every: int = 10  # updates between checkpoints; 0 = only at the end
    resume: bool = False  # continue from the checkpoint in {models_dir}/{variant}
    progress: bool = True  # a line per update on stderr
    threads: int = 0  # torch CPU threads; 0 = torch's default
    seed: int = 1337  # prompt order, sampling, minibatch order, pre-training windows

# --- dpo ------------------------------------------------------------------------------

@dataclass
class DPOConfig:
    policy: str = "models/sft"  # the policy's start (a checkpoint with tokenizer.json)
    reference: str = "models/sft"  # the frozen reference; must share the policy's tokenizer
    rankings_file: str = "data/rankings/rankings.parquet"  # collect_rankings: id, kind, prompt, responses, ranking
    reward_model: str = "models/rm"  # its recorded split and its score of the eval samples; "" = train_rm's config, no RM score
    prompts_file: str = "data/raw/instructions/rl_prompts.jsonl"  # the oracle's meta; eval prompts: the RM's held-out split
    out_dir: str = "models/dpo"
    metrics_file: str = "metrics/dpo.json"
    curve_file: str = "metrics/dpo_curve.csv"  # one row per logged step; eval columns every eval_every steps
    pairs: str = "best_vs_rest"  # all: C(K,2) pairs per ranking | best_vs_rest: K - 1 pairs of the top response
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo
    beta: float = 0.1  # DPO's β (TRL's default 0.1); > 0
    epochs: int = 1  # passes over the training pairs
    batch_size: int = 16  # pairs per optimizer step
    lr: float = 5e-5  # peak learning rate (linear warm-up, then cosine decay to min_lr)
    min_lr: float = 0.0
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    eval_every: int = 50  # steps between held-out evaluations (and at start and end); 0 = start and end only
    eval_prompts: int = 100  # held-out prompts per evaluation; 0 = none
    max_new_tokens: int = 40  # response budget of the evaluation samples, tokens
    ckpt_every: int = 100  # steps between checkpoints; 0 = only at the end
    resume: bool = False  # continue from the checkpoint in out_dir
    log_every: int = 10  # steps between logged rows
    progress: bool = True  # a line per logged row on stderr
    threads: int = 0  # torch CPU threads; 0 = torch's default
    seed: int = 1337  # pair order, evaluation samples

# --- evaluate -------------------------------------------------------------------------

@dataclass
class EvaluateConfig:
    prompts_file: str = "data/raw/instructions/rl_eval.jsonl"  # held-out prompts {id, kind, prompt, meta}
    max_prompts: int = -1  # the first N held-out prompts; -1 = all
    pretrain: str = "models/pretrain"  # the pre-trained model, prompted few-shot; "" = leave that row out
    demos_file: str = "data/raw/instructions/sft_train.jsonl"  # the few-shot baseline's demonstrations
    few_shot_k: int = 3  # demonstrations in context for the few-shot baseline (as many as fit)
    policies: dict[str, str] = field(default_factory=lambda: {"sft": "models/sft", "ppo": "models/ppo", "ppo_ptx": "models/ppo_ptx",
                                                              "ppo_gold": "models/ppo_gold", "rloo_ptx": "models/rloo_ptx",
                                                              "dpo": "models/dpo"})
    reference: str = "sft"  # the policy win rates and KL are measured against
    reward_model: str = "models/rm"  # scores every response (normalised units)
    max_new_tokens: int = 40  # response budget, tokens
    batch_size: int = 64  # prompts per generation batch
    pretrain_data: str = "data/tokenized"  # val.bin: the alignment tax's pre-training loss
    val_windows: int = 64  # pre-training validation windows (fixed, seeded)
    prompt_eval_items: int = 100  # zero-shot prompt-eval items per task and policy; 0 = skip the prompt-eval tax
    sampled_n: int = 4  # temperature-1 samples per prompt and policy (seeds seed + j) for the sampled columns; 0 = greedy only
    best_of_n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])  # best-of-n rows (the RM's and the oracle's favourite of n samples); [] = none
    best_of_n_from: str = "sft"  # the policy best-of-n samples from (one of policies)
    curves: list[str] = field(default_factory=lambda: ["metrics/ppo/ppo_curve.csv", "metrics/ppo/ppo_ptx_curve.csv", "metrics/ppo/ppo_gold_curve.csv",
                                                            "metrics/ppo/rloo_ptx_curve.csv",
                                                            "metrics/dpo_curve.csv"])
    register_policy: str = "ppo_ptx"  # registered in MLflow's model registry with the reward model; "" = none
    metrics_file: str = "metrics/evaluate.json"
    samples_file: str = "metrics/evaluate_samples.jsonl"
    table_file: str = "metrics/evaluate_table.md"
    plot_file: str = "metrics/overoptimization.png"
    overopt_file: str = "metrics/overoptimization.md"  # the fitted over-optimisation laws (Gao et al. 2022), markdown
    seed: int = 1337  # samples (j-th with seed + j), few-shot demonstrations
    threads: int = 0  # torch CPU threads; 0 = torch's default

# --- scaling (flows/scaling.py: not a stage of the default DAG) ------------------------

@dataclass
class ScalingSize:
    name: str = "tiny"  # folder name under out_dir / metrics_dir
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128


@dataclass
class ScalingConfig:
    sizes: list[ScalingSize] = field(default_factory=list)  # the model shapes pre-trained on the same corpus
    max_steps: int = -1  # pre-training steps of every size; -1 = pretrain.max_steps
    concurrency: int = 1  # sizes trained at once (1 on CPU: each already uses every core)
    out_dir: str = "models/scaling"  # <out_dir>/<size>/: each size's checkpoint
    metrics_dir: str = "metrics/scaling"  # <metrics_dir>/<size>/: pretrain.json, prompt_eval.json, settings.json
    report_file: str = "docs/scaling.md"  # the table: params, val loss, accuracy by task and k, few-shot gain
    plot_file: str = "docs/scaling.png"  # accuracy against k per size; few-shot gain against parameters


# --- seeds (flows/seeds.py: not a stage of the default DAG) ---------------------------

@dataclass
class SeedsConfig:
    seeds: list[int] = field(default_factory=lambda: [1338, 1339])  # the extra RL seeds; the pipeline's run is the root seed
    methods: list[str] = field(default_factory=lambda: ["ppo_ptx", "ppo_gold", "rloo_ptx", "dpo"])  # ppo variants, and dpo
    concurrency: int = 2  # runs at once
    out_dir: str = "models/seeds"  # <out_dir>/<seed>/<method>/
    metrics_dir: str = "metrics/seeds"  # <metrics_dir>/<seed>/: metrics, curves, evaluate.json, samples, settings.json
    report_file: str = "metrics/rlhf_seeds.json"  # every seed pooled: differences from SFT with paired 95% intervals
    table_file: str = "metrics/rlhf_seeds.md"


# --- tracking -------------------------------------------------------------------------

@dataclass
class TrackingConfig:
    enabled: bool = True  # false: stages log nothing to MLflow
    uri: str = "sqlite:///mlflow.db"  # MLflow tracking store (relative paths resolve from the cwd), or a server's http(s):// URL
    artifact_dir: str = "mlruns"  # where a new experiment stores artifacts (local folder or URI); a server's own root for http(s) URIs unless a URI
    experiment: str = "instructflow"  # MLflow experiment name
    log_checkpoints: bool = True  # upload checkpoint folders as run artifacts
