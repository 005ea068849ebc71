"""The ranking page: a small local web page where a person ranks each prompt's K responses.

    python -m flows.ranking_page                               # data/rankings/candidates.jsonl -> labels/human.jsonl
    python -m flows.ranking_page --candidates F --labels F --port 0 --timeout 3600
    make rank                                                  # the same, on the configured files
    python -m flows.pipeline collect_rankings.labeler=web      # the pipeline serves it before collect_rankings

Open the URL it prints (http://127.0.0.1:8765 by default): the queue of prompts waiting for a
ranking, one prompt at a time with its K responses side by side, the ranking always in view at
the top. Rank by keys (1..K picks the best remaining response, the last one follows by itself;
Backspace undoes; Enter submits) or by dragging the numbers into order; optionally flag a response
("not an answer", "unsafe") and write a note. The page shows done / total and the time left at
the current pace.

An answer takes the Prefect form's path (`flows/labeling.py`): the ranking is checked by
`parse_ranking`, the row made by `make_label` (plus `flags` and `note` when set) and appended,
flushed and fsync'ed, to the same append-only labels file by `append_label` before the page hears
"saved". The file is the only state: reloading the page or restarting the server shows the next
prompt still waiting, answers given in the Prefect form meanwhile count, and the next
`collect_rankings` reads them all. Bad input to the API (not a permutation, an unknown prompt, one
already answered, anything malformed) is a 4xx with one line and writes nothing.

The server binds 127.0.0.1 unless told otherwise (`--host 0.0.0.0` lets anyone who can reach the
machine read the candidates and write rankings: one warning line says so). On 127.0.0.1 it
answers only requests addressed to 127.0.0.1 or localhost (no DNS rebinding), and POSTs must be
JSON (a foreign web page cannot send those without the browser asking first).

API: `GET /api/state[?key=K]` (progress, the queue, the current prompt: K if it is waiting, else
the first waiting); `POST /api/rank` with `{"key": ..., "ranking": [2, 1, 4, 3], "flags": [[],
["unsafe"], [], []], "note": "..."}` (response numbers 1..K best first; flags and note optional).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tasks.common import InputError
from tasks.labels import FLAGS, append_label, check_flags, check_note, label_key, make_label, missing, parse_ranking, read_candidates, read_labels

STATIC = Path(__file__).resolve().parent / "static"
BODY_FIELDS = {"key", "ranking", "flags", "note"}
MAX_BODY = 64 * 1024  # bytes: a ranking, K flag lists and a note fit many times over


class Refused(Exception):
    """An answer the page does not take: HTTP status and one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class RankingTimeout(Exception):
    """No answer within the timeout; every answer given is in the labels file."""


class RankingQueue:
    """The candidates and the labels file behind the page. The file is the state: each request
    reads it, so answers written by another process (the Prefect form) count at once."""

    def __init__(self, candidates_path: str | Path, labels_path: str | Path):
        self.candidates_path, self.labels_path = Path(candidates_path), Path(labels_path)
        self.candidates = read_candidates(self.candidates_path)
        self.by_key = {label_key(c["id"], c["responses"]): c for c in self.candidates}
        read_labels(self.labels_path)  # a malformed labels file fails here, with its one line, not on the page
        self.lock = threading.Lock()  # one check-and-append at a time (two tabs, one prompt)
        self.first_seen: float | None = None  # when the page first asked for work (the pace's start)
        self.answer_times: list[float] = []  # answers given through this server

    def waiting(self) -> list[dict]:
        return missing(self.candidates, read_labels(self.labels_path))

    def pace(self) -> float | None:
        """Seconds per answer in this session, from the first page view to the latest answer."""
        if not self.answer_times or self.first_seen is None:
            return None
        return (self.answer_times[-1] - self.first_seen) / len(self.answer_times)

    def state(self, key: str | None = None) -> dict:
        if self.first_seen is None:
            self.first_seen = time.monotonic()
        todo = self.waiting()
        total = len(self.by_key)
        current = next((c for c in todo if label_key(c["id"], c["responses"]) == key), todo[0] if todo else None)
        per = self.pace()
        return {
            "total": total,
            "done": total - len(todo),
            "seconds_per_prompt": per,
            "seconds_left": per * len(todo) if per is not None else None,
            "flags": list(FLAGS),
            "labels_file": str(self.labels_path),
            "queue": [{"key": label_key(c["id"], c["responses"]), "id": c["id"], "prompt": c["prompt"][:120]} for c in todo],
            "current": None if current is None else {
                "key": label_key(current["id"], current["responses"]),
                "id": current["id"],
                "kind": current.get("kind", ""),
                "prompt": current["prompt"],
                "responses": current["responses"],
            },
        }

    def answer(self, body: Any) -> dict:
        """Check one answer and append it to the labels file; Refused (nothing written) otherwise."""
        if not isinstance(body, dict):
            raise Refused(400, "the body must be a JSON object with 'key' and 'ranking'")
        unknown = sorted(set(body) - BODY_FIELDS)
        if unknown:
            raise Refused(400, f"unknown field {unknown[0]!r} (fields: {', '.join(sorted(BODY_FIELDS))})")
        key = body.get("key")
        if not isinstance(key, str) or not key:
            raise Refused(400, "field 'key' missing or not a string")
        cand = self.by_key.get(key)
        if cand is None:
            raise Refused(404, f"unknown prompt {key[:80]!r}: not among the candidates of {self.candidates_path}")
        k = len(cand["responses"])
        if "ranking" not in body:
            raise Refused(400, "field 'ranking' missing")
        try:
            ranking = parse_ranking(body["ranking"], k, cand["id"])
            flags = check_flags(body.get("flags") or [[] for _ in range(k)], k, cand["id"])
            note = check_note(body.get("note") or "", cand["id"])
        except InputError as e:
            raise Refused(422, str(e)) from None
        with self.lock:
            if key in read_labels(self.labels_path):
                raise Refused(409, f"{cand['id']} is already ranked in {self.labels_path}: not waiting, nothing written")
            row = append_label(self.labels_path, make_label(cand, ranking, flags=flags, note=note))
            self.answer_times.append(time.monotonic())
        left = len(self.waiting())
        return {"saved": cand["id"], "ranking": [i + 1 for i in row["ranking"]], "done": len(self.by_key) - left, "total": len(self.by_key)}


def _one_line(status: int, message: str) -> Response:
    return PlainTextResponse(" ".join(message.split()) + "\n", status_code=status)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(queue: RankingQueue, host: str = "127.0.0.1") -> Starlette:
    """The page (`flows/static/`) and its API over `queue`."""

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "ranking.html", headers={"Cache-Control": "no-store"})

    async def state(request: Request) -> Response:
        return JSONResponse(queue.state(request.query_params.get("key")), headers={"Cache-Control": "no-store"})

    async def rank(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _one_line(415, "send the answer as JSON (Content-Type: application/json)")
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return _one_line(413, f"the body has {len(raw)} bytes, at most {MAX_BODY}")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _one_line(400, "the body is not valid JSON")
        try:
            return JSONResponse(queue.answer(body))
        except Refused as e:
            return _one_line(e.status, str(e))
        except InputError as e:  # the labels file turned malformed under us
            return _one_line(500, str(e))

    middleware = []
    if is_loopback(host):
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"]))
    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/state", state),
            Route("/api/rank", rank, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=middleware,
    )


class PageServer:
    """uvicorn serving `app` in a thread, on a socket bound here (a busy port is one clear line)."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            raise InputError(f"cannot serve on {host}:{port} ({e.strerror or e}); choose another --port (0 = any free port)") from None
        self.port = self.sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{self.port}/"
        # log_config=None: uvicorn's own logging setup would replace every handler, Prefect's API log
        # handler too (inside a flow run that deadlocks); its warnings go to the loggers already there
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="ranking-page", daemon=True)

    def __enter__(self) -> PageServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the ranking page did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def exposure_warning(host: str) -> str | None:
    if is_loopback(host):
        return None
    return f"warning: the ranking page listens on {host}: anyone who can reach this machine can read the candidates and write rankings"


def serve(
    candidates_path: str | Path,
    labels_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    timeout_s: float = 0,
    logger: Any = None,
    on_url: Callable[[str], None] | None = None,
    poll_s: float = 0.5,
) -> int:
    """Serve the page until every candidate has an answer in `labels_path`; return how many answers
    arrived meanwhile (through the page or any other writer of the file). `timeout_s` > 0: raise
    RankingTimeout after that many seconds without a new answer (every answer is in the file)."""
    logger = logger or logging.getLogger("instructflow.ranking_page")
    queue = RankingQueue(candidates_path, labels_path)
    todo = len(queue.waiting())
    if not todo:
        logger.info("all %d prompts are ranked in %s", len(queue.by_key), labels_path)
        return 0
    if warning := exposure_warning(host):
        logger.warning(warning)
    with PageServer(create_app(queue, host), host, port) as page:
        logger.info("rank %d of %d prompts at %s (answers go to %s)", todo, len(queue.by_key), page.url, labels_path)
        if on_url:
            on_url(page.url)
        left, last = todo, time.monotonic()
        while left:
            time.sleep(poll_s)
            now_left = len(queue.waiting())
            if now_left < left:
                left, last = now_left, time.monotonic()
                logger.info("%d of %d prompts ranked", len(queue.by_key) - left, len(queue.by_key))
            elif timeout_s and time.monotonic() - last > timeout_s:
                raise RankingTimeout(
                    f"no answer on the ranking page for {timeout_s:g} s; {todo - left} of {todo} ranked, every answer is in "
                    f"{labels_path}: run again to go on"
                )
        time.sleep(min(1.0, 2 * poll_s))  # the last answer's reply reaches the page before the server stops
    return todo - left


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m flows.ranking_page", description="Rank sampled responses on a local web page.")
    p.add_argument("--candidates", default="data/rankings/candidates.jsonl", help="the candidates file (tasks/candidates.py writes it)")
    p.add_argument("--labels", default="labels/human.jsonl", help="the append-only labels file answers go to")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; another than 127.0.0.1 lets others on the network answer")
    p.add_argument("--port", type=int, default=8765, help="port; 0 = any free port (the URL is printed)")
    p.add_argument("--timeout", type=float, default=0, help="stop after this many seconds without an answer; 0 = never")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        written = serve(args.candidates, args.labels, args.host, args.port, args.timeout, logging.getLogger("instructflow.ranking_page"))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except RankingTimeout as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"stopped; every answer given is in {args.labels}", flush=True)
        sys.exit(130)
    print(f"done: {written} answers written to {args.labels}", flush=True)


if __name__ == "__main__":
    main()
