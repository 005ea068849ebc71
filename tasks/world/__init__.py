"""The built-in world: a seeded, deterministic generator of a small universe and its data.

People, animals, objects, foods, places, colours, sizes and moods (`lexicon`) make scenes
with consistent facts (`stories`), from which come the four labelled tasks (`tasks`), the
prompt tasks (`prompts`, some only examples in the prompt can teach), the instructions with demonstrations (`instructions`), the oracle
that scores responses (`oracle`) and the pre-training corpus (`corpus`), which never holds
any of those items verbatim.

Every part draws from its own `random.Random(f"{seed}/<part>")`, never the global one, and
iterates only over ordered sequences, so one seed gives the same bytes on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tasks.world import corpus as C
from tasks.world import instructions as I
from tasks.world import prompts as P
from tasks.world import tasks as T


@dataclass
class World:
    tasks: dict[str, dict[str, list[dict]]]  # name -> split -> rows
    prompts: dict[str, dict[str, list[dict]]]  # name -> train|test -> rows
    instructions: dict[str, list[dict]]  # sft_train | sft_val | rl_prompts | rl_eval -> rows
    leak_items: list[list[str]]  # per item: strings the corpus must not hold together
    corpus: list[str]
    corpus_counts: dict[str, int]  # documents per kind, 'rejected' (would have leaked), 'skipped_items' (of pages)
    corpus_bytes: dict[str, int]  # UTF-8 bytes per kind


def instruction_leak(row: dict) -> list[str]:
    return [row["meta"]["story"]] if "story" in row["meta"] else [row["prompt"]]


def build(seed: int, corpus_bytes: int, task_sizes: dict[str, int], prompt_sizes: tuple[int, int],
          instruction_sizes: dict[str, int], per_task: dict[str, dict[str, int]] | None = None,
          demo_flaws: tuple[float, dict[str, float]] = (0.0, {}),
          corpus_kinds: dict[str, float] | None = None) -> World:
    """Everything the world yields; `corpus_bytes` = 0 skips the corpus, otherwise `corpus_kinds`
    ({kind: share of the bytes}, data.corpus_kinds; corpus.KINDS) is required. `task_sizes` ({split: n})
    applies to every labelled task that `per_task` ({task: {split: n}}) does not name.
    `demo_flaws` = (share, mix): that share of each sft split's demonstrations get one defect
    (`instructions.add_flaws`, drawn from its own stream, so nothing else changes)."""
    def rng(part: str) -> random.Random:
        return random.Random(f"{seed}/{part}")

    seen: set[str] = set()  # every item is unique across all tasks, prompts and instructions
    leak: list[list[str]] = []
    tasks = {}
    for name, spec in T.TASKS.items():
        tasks[name] = T.make_splits(name, rng(f"task/{name}"), (per_task or {}).get(name, task_sizes), seen)
        leak += [T.leak_texts(spec["type"], r) for rows in tasks[name].values() for r in rows]
    prompts = {}
    for name in P.PROMPT_TASKS:
        splits = P.make_prompt_splits(name, rng(f"prompt/{name}"), *prompt_sizes, seen)
        prompts[name] = {s: [row for row, _ in items] for s, items in splits.items()}
        leak += [lk for items in splits.values() for _, lk in items if lk]
    instructions = I.make_instruction_splits(rng("instructions"), instruction_sizes, seen)
    leak += [instruction_leak(r) for rows in instructions.values() for r in rows]
    share, mix = demo_flaws
    for split in [s for s in instructions if s.startswith("sft")] if share > 0 else []:
        instructions[split] = I.add_flaws(instructions[split], share, mix, rng(f"demo_flaws/{split}"))
    if corpus_bytes > 0 and not corpus_kinds:
        raise ValueError("world.build: corpus_kinds (the share of each kind) is needed for a corpus")
    docs, counts, sizes = (C.make_corpus(rng("corpus"), corpus_bytes, C.LeakGuard(leak), corpus_kinds)
                           if corpus_bytes > 0 else ([], {}, {}))
    return World(tasks, prompts, instructions, leak, docs, counts, sizes)
