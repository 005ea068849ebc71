"""The contracts between stages that are not files' paths: the fields one stage writes and
another reads. Shared infrastructure: imports nothing."""

RANKING_COLUMNS = ("id", "kind", "prompt", "responses", "ranking")  # the rankings table (collect_rankings -> train_rm, dpo)
# the labelled tasks (data writes, finetune reads): task type -> text fields of a row
TASK_FIELDS = {"classification": ("text",), "entailment": ("premise", "hypothesis"),
               "similarity": ("text_a", "text_b"), "multiple_choice": ("context", "choices")}
FINETUNE_INITS = ("pretrain", "scratch")  # where fine-tuning starts: pre-trained weights or random ones (the report's order)
