"""The contracts between stages that are not files' paths: the fields one stage writes and
another reads. Shared infrastructure: imports nothing."""

RANKING_COLUMNS = ("id", "kind", "prompt", "responses", "ranking")  # the rankings table (collect_rankings -> train_rm, dpo)
# the labelled tasks (data writes, finetune reads): task type -> text fields of a row
TASK_FIELDS = {"classification": ("text",), "entailment": ("premise", "hypothesis"),
               "similarity": ("text_a", "text_b"), "multiple_choice": ("context", "choices")}
FINETUNE_INITS = ("pretrain", "scratch")  # where fine-tuning starts: pre-trained weights or random ones (the report's order)
# fine-tuning's items file (finetune writes, finetune_report, gpt1_seeds and report read): GPT-1's claim is the setting
# FINETUNED; each bar it must clear -> its entry; a bar is cleared too when both are at CEILING or above (nothing to beat)
FINETUNED = "pretrain lm0.5"
BARS = {"zero-shot": "zero-shot", "baseline": "baseline", "scratch": "scratch lm0.5"}
CEILING = 0.99


def bar_cleared(diff: float, ci95: float, bar_acc: float) -> bool:
    """Fine-tuned minus a bar clears it: beyond the paired half-width, or both at CEILING or above."""
    return diff > ci95 or min(bar_acc, bar_acc + diff) >= CEILING
