"""The human labeler: a person ranks each prompt's sampled responses in the Prefect UI.

    python -m flows.labeling                                   # data/rankings/candidates.jsonl -> labels/human.jsonl
    python -m flows.labeling --candidates F --labels F --timeout 3600
    make serve  (or `prefect server start`), open http://127.0.0.1:4200, the run is "Paused":
    "Resume" shows the prompt, the numbered responses and one field, `ranking`.

For each candidate not yet in the labels file (see `tasks/labels.py` for both formats) the
flow pauses with `pause_flow_run(wait_for_input=...)`. The form asks for the response numbers
best first (e.g. 2, 1, 4, 3); its JSON schema (exactly K numbers, each 1..K, no repeats) is
checked by the server before the run resumes, and the answer is checked again here (a
refused answer pauses again for the same prompt, with the reason on top). Each valid answer
is appended to the labels file (flushed and fsync'ed) at once: if the flow is killed, times
out (`FlowPauseTimeout`, the run fails) or is cancelled, nothing answered is lost, and the
next run asks only for what is missing. A run whose process died stays "Paused" in the UI
and resuming it does nothing: start a new run.

The main pipeline calls `ask_rankings(...)` directly inside its own flow.
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import flows  # noqa: F401  (environment defaults before Prefect is imported)
import pydantic
from prefect import flow
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from tasks.common import InputError
from tasks.labels import append_label, label_key, make_label, missing, parse_ranking, read_candidates, read_labels

# CommonMark backslash-escapes every ASCII punctuation character; `~` (strikethrough) and `$`
# (math) matter in the Prefect UI's renderer.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$&])")


def md_escape(text: str) -> str:
    """`text` shown literally in markdown; line breaks kept as hard breaks, an empty line as one
    more (a line holding only the backslash: the UI's renderer shows HTML entities such as
    `&nbsp;` as typed). Empty lines at either end are dropped: a trailing backslash would show."""
    lines = [_MD_SPECIAL.sub(r"\\\1", ln.rstrip()) for ln in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    # a backslash at the end of a line is a hard line break
    return "\\\n".join(lines)


@functools.lru_cache(maxsize=None)
def ranking_input(k: int) -> type[RunInput]:
    """The `RunInput` for K responses: one field `ranking`, K distinct numbers in 1..K, best
    first. Its JSON schema (minItems = maxItems = K, 1 <= item <= K, uniqueItems) is what the
    server checks when the run is resumed; the validator here runs only after resuming."""
    if not 2 <= k <= 9:
        raise ValueError(f"K = {k}: need 2 to 9 responses")
    Number = Annotated[int, pydantic.Field(ge=1, le=k)]

    class Ranking(RunInput):
        ranking: Annotated[
            list[Number],
            pydantic.Field(
                min_length=k,
                max_length=k,
                title="Ranking (best first)",
                description=f"The response numbers 1..{k}, best first, each once (e.g. {', '.join(str(i) for i in _example(k))}).",
                json_schema_extra={"uniqueItems": True},
            ),
        ]

        @pydantic.field_validator("ranking")
        @classmethod
        def _permutation(cls, v: list[int]) -> list[int]:
            try:
                parse_ranking(v, k, "answer")
            except InputError as e:  # pydantic turns only ValueError into a ValidationError
                raise ValueError(str(e)) from None
            return v

    return Ranking


def _example(k: int) -> list[int]:
    return [2, 1, *range(3, k + 1)]


def describe(candidate: dict, n: int, total: int, note: str | None = None) -> str:
    """The markdown shown above the form: the prompt and its K numbered responses."""
    k = len(candidate["responses"])
    parts = []
    if note:
        parts.append(f"**Your last answer was refused:** {md_escape(note)}\n\n---\n")
    parts.append(f"**Prompt {n} of {total}** · `{candidate['id']}` · {k} responses\n")
    parts.append(f"Rank the responses best first: type their numbers in `ranking`, e.g. `{', '.join(map(str, _example(k)))}`.\n")
    parts.append(f"### Prompt\n\n{md_escape(candidate['prompt'])}\n")
    for i, response in enumerate(candidate["responses"], start=1):
        parts.append(f"---\n\n**Response {i}**\n\n{md_escape(response) if response.strip() else '*(empty)*'}\n")
    return "\n".join(parts)


def _one_line(e: Exception) -> str:
    if isinstance(e, pydantic.ValidationError):
        return "; ".join(
            err["msg"].removeprefix("Value error, ")
            if err["type"] == "value_error"
            else f"{'.'.join(str(p) for p in err['loc']) or 'input'}: {err['msg']}"
            for err in e.errors()
        )
    return " ".join(str(e).split())


def server_url() -> str | None:
    """The Prefect API a person can answer through (PREFECT_API_URL), or None: without it a
    flow runs on a temporary server that no UI shows, and its pauses only time out."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def _default_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:
        return logging.getLogger("instructflow.labeling")


def ask_rankings(
    candidates: list[dict],
    labels_path: str | Path,
    timeout_s: int = 3600,
    logger: Any = None,
    poll_s: int = 2,
) -> int:
    """Ask a person to rank every candidate missing from `labels_path`; return how many
    answers were written. Call it inside a running flow (it pauses that flow run, once per
    prompt, for up to `timeout_s` each; `FlowPauseTimeout` then fails the run, and every
    answer given so far is already in the file). `poll_s`: how often the paused flow checks
    whether it was resumed (Prefect's default, 10 s, makes a person wait)."""
    logger = logger or _default_logger()
    labels_path = Path(labels_path)
    todo = missing(candidates, read_labels(labels_path))
    logger.info("%d of %d prompts to rank (labels: %s)", len(todo), len(candidates), labels_path)
    if todo and not server_url():
        logger.warning("PREFECT_API_URL is not set: no UI can answer these pauses (start `prefect server start`)")
    written = 0
    for n, cand in enumerate(todo, start=1):
        k = len(cand["responses"])
        key = label_key(cand["id"], cand["responses"])
        note = None
        while True:
            if key in read_labels(labels_path):  # answered meanwhile by another run
                break
            form = ranking_input(k).with_initial_data(description=describe(cand, n, len(todo), note))
            try:
                answer = pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=poll_s)
                ranking = parse_ranking(answer.ranking, k, f"answer for {cand['id']}")
            except (pydantic.ValidationError, InputError) as e:
                note = _one_line(e)
                logger.warning("%s: answer refused, asking again: %s", cand["id"], note)
                continue
            append_label(labels_path, make_label(cand, ranking))
            written += 1
            logger.info("%s: ranked %s (%d of %d written)", cand["id"], [i + 1 for i in ranking], written, len(todo))
            break
    return written


@flow(name="label-rankings", log_prints=True)
def label_rankings(
    candidates_file: str = "data/rankings/candidates.jsonl",
    labels_file: str = "labels/human.jsonl",
    timeout_s: int = 3600,
    poll_s: int = 2,
) -> dict:
    """Rank, in the Prefect UI, every candidate not yet in the labels file."""
    candidates = read_candidates(candidates_file)
    written = ask_rankings(candidates, labels_file, timeout_s=timeout_s, poll_s=poll_s)
    left = len(missing(candidates, read_labels(labels_file)))
    return {"candidates": len(candidates), "written": written, "missing": left}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m flows.labeling", description="Rank sampled responses in the Prefect UI.")
    p.add_argument("--candidates", default="data/rankings/candidates.jsonl")
    p.add_argument("--labels", default="labels/human.jsonl")
    p.add_argument("--timeout", type=int, default=3600, help="seconds to wait for each answer")
    p.add_argument("--poll", type=int, default=2, help="seconds between checks for an answer")
    args = p.parse_args(argv)
    from prefect.exceptions import FlowPauseTimeout

    try:
        candidates = read_candidates(args.candidates)  # fail fast, with one line, before Prefect starts
        todo = len(missing(candidates, read_labels(args.labels)))
        if todo and not server_url():
            raise InputError("no Prefect server to answer in: run `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api")
        print(f"{todo} of {len(candidates)} prompts to rank; answer in the Prefect UI ({server_url()})", flush=True)
        result = label_rankings(args.candidates, args.labels, args.timeout, args.poll)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except FlowPauseTimeout:
        print(f"error: no answer within {args.timeout} s; every answer given is in {args.labels}: run again to go on", file=sys.stderr)
        sys.exit(1)
    print(result, flush=True)


if __name__ == "__main__":
    main()
