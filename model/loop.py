"""The skeleton every resumable trainer shares: where the run is (`step` of `total`), what it has
logged (`history`), when to evaluate, log and checkpoint, and its progress line.

    loop = Loop("sft", total, eval_every=50, log_every=10, ckpt_every=100, progress=True,
                state=ckpt.trainer_state if resume else None)
    while loop.running():
        ...                                   # one optimizer step at loop.step (0-based)
        loop.advance()
        if loop.logging():
            loop.history.append(record)
            loop.say(f"loss {loss:.4f}")
        if loop.checkpointing():
            save({**loop.state(), "optimizer": opt.state_dict()})

The cadence counts finished steps: evaluation every `eval_every` of them and after the last one,
logging every `log_every` and whenever it evaluates, a checkpoint every `ckpt_every` except
after the last (the caller saves the final one). `state()` and `state=` carry `step` and
`history` through a checkpoint, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import sys
import time


class Loop:
    def __init__(self, name: str, total: int, *, eval_every: int = 0, log_every: int = 1, ckpt_every: int = 0,
                 progress: bool = False, unit: str = "step", state: dict | None = None, step_key: str = "step"):
        self.name, self.total, self.unit, self.step_key = name, total, unit, step_key
        self.eval_every, self.log_every, self.ckpt_every, self.progress = eval_every, log_every, ckpt_every, progress
        self.step = int(state[step_key]) if state else 0
        self.history: list[dict] = list(state["history"]) if state else []
        self.t0 = time.perf_counter()

    def running(self) -> bool:
        return self.step < self.total

    def advance(self) -> None:
        self.step += 1

    def evaluating(self) -> bool:
        return bool(self.eval_every and self.step % self.eval_every == 0) or self.step == self.total

    def logging(self) -> bool:
        return self.step % max(1, self.log_every) == 0 or self.evaluating()

    def checkpointing(self) -> bool:
        return bool(self.ckpt_every and self.step % self.ckpt_every == 0 and self.step < self.total)

    def seconds(self) -> float:
        """Seconds since this process started the loop (a resumed run counts from its restart)."""
        return time.perf_counter() - self.t0

    def state(self) -> dict:
        return {self.step_key: self.step, "history": self.history}

    def say(self, text: str, timing: str | None = None) -> None:
        """`name step i/total text (timing)` on stderr, when progress lines are on."""
        if self.progress:
            print(f"{self.name} {self.unit} {self.step}/{self.total} {text} ({timing or f'{self.seconds():.0f} s'})",
                  file=sys.stderr, flush=True)
