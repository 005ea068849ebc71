"""The bars GPT-1's fine-tuning must clear, scored on the very test rows fine-tuning is tested on.

- `zero_shot_correct`: the checkpoint prompted zero-shot (GPT-2) with the prompt_eval template of
  the task's name: each labelled row is posed as that prompt task's row (`tasks.world.prompts.as_prompt_row`,
  the conversion the world's prompt items use) and scored by `tasks.prompting` at k=0;
- `tasks.world.baselines.word_correct`: the word baseline (bag of words, or word overlap for
  multiple choice) fit on the train split.

Paired with fine-tuning item by item, the row-to-row variance cancels (`model.stats.paired_interval`).
Shared by the finetune stage; imports no stage.
"""

from __future__ import annotations

import dataclasses

from model.gpt import GPT
from model.tokenizer import Tokenizer
from tasks import prompting
from tasks.common import InputError
from tasks.schema import PromptEvalConfig, PromptTemplate
from tasks.world.prompts import as_prompt_row


def zero_shot_correct(model: GPT, tok: Tokenizer, task: str, rows: list[dict], pc: PromptEvalConfig) -> list[bool | None] | None:
    """Per test row: is the zero-shot answer right (None: its query alone overflows the window,
    skipped as prompt_eval's too_long=skip). None when `pc.tasks` has no template named `task`
    or the task has no prompt form."""
    spec: PromptTemplate | None = pc.tasks.get(task)
    if spec is None or not rows or as_prompt_row(task, rows[0]) is None:
        return None
    test = [as_prompt_row(task, r) for r in rows]
    key = f"prompt_eval.tasks.{task}"
    for part in ("template", "target"):
        unknown = prompting.template_fields(getattr(spec, part), f"{key}.{part}") - set(test[0]) - {"answer"}
        if unknown:
            raise InputError(f"{key}.{part} names {', '.join(sorted(unknown))}, which the rows of {task} posed as a prompt lack")
    ptask = prompting.PromptTask(task, "choice", spec, [], test)
    pc0 = dataclasses.replace(pc, shots=[0], max_items=-1, too_long="skip")
    _, _, hits = prompting.evaluate_task(model.eval(), tok, ptask, 0, pc0)
    return [hits.get(i) for i in range(len(rows))]
