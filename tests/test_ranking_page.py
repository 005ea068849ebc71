"""The ranking page (flows/ranking_page.py): its API over real HTTP to a real uvicorn on 127.0.0.1,
the `serve` loop the pipeline calls, and the page itself in headless Chromium (driven by
Playwright; skipped when either is missing). Every answer must land in the append-only labels
file, and from there in rankings.parquet.

    INSTRUCTFLOW_SCREENSHOT=docs/ranking.png .venv/bin/pytest tests/test_ranking_page.py -k chromium   # = make ranking-screenshot
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, free_port, start, stop, wait_http
from tasks.labels import append_label, label_key, make_label, read_labels

# Candidates in the built-in world's style (the SFT policy's samples are about this rough).
CANDIDATES = [
    {"id": "rl_prompts-00000", "kind": "describe", "prompt": "Write a short description (under 15 words) of the huge red drum.",
     "responses": ["The huge red drum is in the music room.", "A huge green box that Wendy likes.",
                   "This huge red drum belongs to Leo. After that everyone walked home together in the evening",
                   "It is a huge fastd went tiny purple drum."]},
    {"id": "rl_prompts-00001", "kind": "list", "prompt": "Make a list of four animals besides deer. Answer in one sentence.",
     "responses": ["Here are four animals: owl, lion, cat and cow.", "Stupid question. Box, bear and deer.",
                   "You could say owl, horse, duck and deer.", "Far is the opposite of near."]},
    {"id": "rl_prompts-00002", "kind": "story_where",
     "prompt": "Leo walked to the museum. Hugo spent the afternoon in the kitchen. Hugo took his purple chair.\n\n"
               "Where is Hugo? Answer in one sentence.",
     "responses": ["Hugo is in the kitchen.", "Hugo was in the shop.", "In the story, Hugo made Felix is in the school.", ""]},
    {"id": "rl_prompts-00003", "kind": "antonym", "prompt": "What is the opposite of \"loud\"? Answer in one word.",
     "responses": ["Quiet.", "Loud is the opposite of quiet, loud, loud.", "Soft", "The cat sat on the red mat."]},
]
KEY = {c["id"]: label_key(c["id"], c["responses"]) for c in CANDIDATES}


def write_candidates(path: Path, cands=CANDIDATES) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(c) + "\n" for c in cands), encoding="utf-8")
    return path


def rankings_in(labels: Path) -> dict[str, list[int]]:
    """id -> the 1-based ranking each answered prompt has in the labels file."""
    return {row["id"]: [i + 1 for i in row["ranking"]] for row in read_labels(labels).values()}


@contextmanager
def page_server(tmp_path: Path, cands: Path, labels: Path, port: int | None = None, log: str = "page.log"):
    """`python -m flows.ranking_page` on 127.0.0.1 at a free port; stopped on leaving."""
    port = port or free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = start([sys.executable, "-m", "flows.ranking_page", "--candidates", str(cands), "--labels", str(labels),
                  "--port", str(port)], ROOT, env, tmp_path / log)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url + "api/state", 60)
        yield proc, url
    finally:
        stop(proc)


def post(url: str, body, content_type: str = "application/json", **headers) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url + "api/rank", content=data, headers={"Content-Type": content_type, **headers}, timeout=10)


# ---- the API: bad input is a 4xx with one line and writes nothing ---------------------------


def test_api_refuses_bad_input_writes_nothing_and_a_restart_keeps_answers(tmp_path):
    cands = write_candidates(tmp_path / "candidates.jsonl")
    labels = tmp_path / "labels" / "human.jsonl"
    first = KEY["rl_prompts-00000"]
    changed = label_key("rl_prompts-00000", ["other"] * 4)  # the same prompt with other candidates: not waiting
    bad = [
        (dict(key=first, ranking=[1, 1, 2, 3]), 422, "rl_prompts-00000: ranking [1, 1, 2, 3] is not a permutation of 1..4 (1 appears twice)"),
        (dict(key=first, ranking=[1, 2, 3]), 422, "is not a permutation of 1..4 (3 numbers, need 4)"),
        (dict(key=first, ranking=[0, 1, 2, 3]), 422, "(0 is out of range)"),
        (dict(key=first, ranking=[1, 2, 3, 4, 5]), 422, "(5 numbers, need 4)"),
        (dict(key=first, ranking="b,a,c,d"), 422, "(not a list of whole numbers)"),
        (dict(key="rl_prompts-09999:000000000000", ranking=[1, 2, 3, 4]), 404, "unknown prompt 'rl_prompts-09999:000000000000'"),
        (dict(key=changed, ranking=[1, 2, 3, 4]), 404, "unknown prompt"),
        (dict(ranking=[1, 2, 3, 4]), 400, "field 'key' missing"),
        (dict(key=first), 400, "field 'ranking' missing"),
        (dict(key=first, ranking=[1, 2, 3, 4], score=5), 400, "unknown field 'score'"),
        (dict(key=first, ranking=[1, 2, 3, 4], flags=[["unsafe"]]), 422, "must be 4 lists, one per response"),
        (dict(key=first, ranking=[1, 2, 3, 4], flags=[[], ["rude"], [], []]), 422, "flag 'rude' of response 2 is not one of not_an_answer, unsafe"),
        (dict(key=first, ranking=[1, 2, 3, 4], note=7), 422, "note must be a string"),
        ([first, [1, 2, 3, 4]], 400, "must be a JSON object"),
        ('{"key": ', 400, "not valid JSON"),
    ]
    with page_server(tmp_path, cands, labels) as (proc, url):
        for body, status, message in bad:
            r = post(url, body)
            assert (r.status_code, message in r.text) == (status, True), (body, r.status_code, r.text)
            assert r.text.endswith("\n") and "\n" not in r.text[:-1]  # one line
        r = post(url, json.dumps(dict(key=first, ranking=[2, 1, 4, 3])), content_type="text/plain")  # what a foreign page could send
        assert r.status_code == 415 and "Content-Type: application/json" in r.text
        r = httpx.get(url + "api/state", headers={"Host": "rebound.example"})
        assert r.status_code == 400
        assert not labels.exists()  # nothing written by any of them

        r = post(url, dict(key=first, ranking=[2, 1, 4, 3]))
        assert r.status_code == 200 and r.json() == {"saved": "rl_prompts-00000", "ranking": [2, 1, 4, 3], "done": 1, "total": 4}
        written = labels.read_bytes()
        r = post(url, dict(key=first, ranking=[1, 2, 3, 4]))  # already answered: not waiting
        assert r.status_code == 409 and r.text == f"rl_prompts-00000 is already ranked in {labels}: not waiting, nothing written\n"
        assert labels.read_bytes() == written
        state = httpx.get(url + "api/state").json()
        assert (state["done"], state["total"], state["current"]["id"]) == (1, 4, "rl_prompts-00001")
        assert [q["id"] for q in state["queue"]] == ["rl_prompts-00001", "rl_prompts-00002", "rl_prompts-00003"]
        assert httpx.get(url + "api/state", params={"key": KEY["rl_prompts-00003"]}).json()["current"]["id"] == "rl_prompts-00003"
        assert httpx.get(url + "api/state", params={"key": first}).json()["current"]["id"] == "rl_prompts-00001"  # answered: the next
    assert proc.poll() is not None  # stopped by the test

    # a new server on the same files: the answer is there, the next waiting prompt comes first
    with page_server(tmp_path, cands, labels, log="page-2.log") as (_, url):
        state = httpx.get(url + "api/state").json()
        assert (state["done"], state["current"]["id"]) == (1, "rl_prompts-00001")
        assert post(url, dict(key=first, ranking=[1, 2, 3, 4])).status_code == 409
    assert rankings_in(labels) == {"rl_prompts-00000": [2, 1, 4, 3]}


def test_page_and_static_files_are_served(tmp_path):
    cands = write_candidates(tmp_path / "candidates.jsonl")
    with page_server(tmp_path, cands, tmp_path / "human.jsonl") as (_, url):
        html = httpx.get(url).text
        assert '<ol id="ranking"' in html and "static/ranking.js" in html
        for name in ("ranking.js", "ranking.css"):
            r = httpx.get(url + "static/" + name)
            assert r.status_code == 200 and r.text == (ROOT / "flows" / "static" / name).read_text(encoding="utf-8")


def test_cli_refuses_bad_files_and_a_busy_port_in_one_line(tmp_path):
    from conftest import run_cmd

    cands = write_candidates(tmp_path / "candidates.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(dict(CANDIDATES[0], responses=["one"])) + "\n")
    cmd = [sys.executable, "-m", "flows.ranking_page", "--labels", str(tmp_path / "human.jsonl"), "--port", "0"]
    p = run_cmd([*cmd, "--candidates", str(bad)], ROOT, check=False)
    assert p.returncode == 2 and p.stderr == f"error: {bad}: row 1: 1 responses, need 2 to 9\n"
    import socket

    with socket.socket() as s:  # a port someone else holds
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = run_cmd([*cmd[:-1], str(port), "--candidates", str(cands)], ROOT, check=False)
    assert p.returncode == 2 and p.stderr.startswith(f"error: cannot serve on 127.0.0.1:{port} (") and p.stderr.count("\n") == 1
    assert not (tmp_path / "human.jsonl").exists()


def test_only_loopback_is_quiet():
    from flows.ranking_page import exposure_warning, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert exposure_warning("127.0.0.1") is None
    line = exposure_warning("0.0.0.0")
    assert line.startswith("warning: the ranking page listens on 0.0.0.0: anyone who can reach this machine") and "\n" not in line


# ---- serve(): what the pipeline runs --------------------------------------------------------


def test_serve_returns_once_every_prompt_is_answered_page_and_prefect_form_mixed(tmp_path):
    """Answers through the page and through the Prefect form's path (make_label + append_label,
    what flows/labeling.py does) count alike; serve stops when none is waiting."""
    from flows.ranking_page import serve

    cands = write_candidates(tmp_path / "candidates.jsonl")
    labels = tmp_path / "human.jsonl"
    append_label(labels, make_label(CANDIDATES[0], [0, 1, 2, 3]))  # answered in the form before
    urls, result, log = [], {}, []

    class Log:
        def info(self, msg, *a):
            log.append(msg % a)

        warning = info

    def run():
        result["written"] = serve(cands, labels, port=0, timeout_s=60, logger=Log(), on_url=urls.append, poll_s=0.1)

    t = threading.Thread(target=run)
    t.start()
    try:
        deadline = time.time() + 30
        while not urls and time.time() < deadline:
            time.sleep(0.05)
        url = urls[0]
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url + "api/state").json()["done"] == 1
        assert post(url, dict(key=KEY["rl_prompts-00001"], ranking=[4, 3, 2, 1])).status_code == 200
        append_label(labels, make_label(CANDIDATES[2], [2, 0, 1, 3]))  # the Prefect form, meanwhile
        state = httpx.get(url + "api/state").json()
        assert (state["done"], state["current"]["id"]) == (3, "rl_prompts-00003")
        assert state["seconds_per_prompt"] > 0 and state["seconds_left"] == pytest.approx(state["seconds_per_prompt"])
        assert post(url, dict(key=KEY["rl_prompts-00002"], ranking=[1, 2, 3, 4])).status_code == 409  # the form's answer stands
        assert post(url, dict(key=KEY["rl_prompts-00003"], ranking=[1, 3, 2, 4], note="  4 is off topic ")).status_code == 200
        t.join(timeout=30)
        assert not t.is_alive()
    finally:
        t.join(timeout=30)
    assert result["written"] == 3
    assert rankings_in(labels) == {"rl_prompts-00000": [1, 2, 3, 4], "rl_prompts-00001": [4, 3, 2, 1],
                                   "rl_prompts-00002": [3, 1, 2, 4], "rl_prompts-00003": [1, 3, 2, 4]}
    assert read_labels(labels)[KEY["rl_prompts-00003"]]["note"] == "4 is off topic"
    assert log[0].startswith(f"rank 3 of 4 prompts at {url}")
    with pytest.raises(httpx.ConnectError):  # the server is gone
        httpx.get(url + "api/state", timeout=2)


def test_serve_times_out_without_answers_and_keeps_what_was_given(tmp_path):
    from flows.ranking_page import RankingTimeout, serve

    cands = write_candidates(tmp_path / "candidates.jsonl")
    labels = tmp_path / "human.jsonl"
    append_label(labels, make_label(CANDIDATES[0], [0, 1, 2, 3]))
    before = labels.read_bytes()
    t0 = time.time()
    with pytest.raises(RankingTimeout) as e:
        serve(cands, labels, port=0, timeout_s=1, poll_s=0.1)
    assert time.time() - t0 < 10
    assert str(e.value) == f"no answer on the ranking page for 1 s; 0 of 3 ranked, every answer is in {labels}: run again to go on"
    assert labels.read_bytes() == before
    assert serve(write_candidates(tmp_path / "one.jsonl", CANDIDATES[:1]), labels, port=0) == 0  # nothing waiting: no server


@pytest.mark.slow
def test_pipeline_ask_people_serves_the_page_and_dvc_adds_the_labels(project, prefect_harness):
    """flows/pipeline.py `ask_people` with collect_rankings.labeler=web, inside a real flow, in a
    scratch DVC project: it serves until both prompts are answered over HTTP, then `dvc add`s."""
    from prefect import flow

    from flows.pipeline import ask_people
    from tasks.config import compose, write_params

    write_candidates(project / "data" / "rankings" / "candidates.jsonl", CANDIDATES[:2])
    port = free_port()
    cfg = compose(["collect_rankings.labeler=web", f"collect_rankings.web_port={port}", "collect_rankings.human_timeout_s=120"])
    write_params(cfg, project / "params.yaml")  # as the pipeline does first: dvc.yaml reads it
    url = f"http://127.0.0.1:{port}/"

    def person():
        wait_http(url + "api/state", 120)
        for cid, ranking in (("rl_prompts-00001", [2, 1, 3, 4]), ("rl_prompts-00000", [1, 3, 2, 4])):
            post(url, dict(key=KEY[cid], ranking=ranking)).raise_for_status()

    @flow(name="ask-people-web")
    def ask() -> int:
        return ask_people(cfg)

    t = threading.Thread(target=person, daemon=True)
    t.start()
    assert ask() == 2
    t.join(timeout=10)
    assert rankings_in(project / "labels" / "human.jsonl") == {"rl_prompts-00000": [1, 3, 2, 4], "rl_prompts-00001": [2, 1, 3, 4]}
    assert (project / "labels" / "human.jsonl.dvc").is_file()


# ---- the page in headless Chromium ---------------------------------------------------------


def chromium_path() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    path = os.environ.get("INSTRUCTFLOW_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no Chromium to drive (apt-get install chromium, or set INSTRUCTFLOW_CHROMIUM to its path)")
    return path


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True)
        try:
            yield b
        finally:
            b.close()


def showing(page, cid: str, timeout: float = 15000) -> None:
    page.wait_for_function("id => document.getElementById('prompt-id').textContent === id", arg=cid, timeout=timeout)


def ranked(page) -> list[int]:
    """The ranking bar, best first, as the person sees it (response numbers)."""
    return [int(el.get_attribute("data-i")) + 1 for el in page.query_selector_all("#ranking .chip")]


def keys(page, *names: str) -> None:
    for name in names:
        page.keyboard.press(name)


def drag_to(page, chip: int, where: str) -> None:
    """Drag response `chip`'s number from wherever it is to the start or the end of the ranking."""
    box = page.locator("#ranking").bounding_box()
    x = 4 if where == "start" else box["width"] - 4
    page.drag_and_drop(f".chip[data-i='{chip - 1}']", "#ranking", target_position={"x": x, "y": box["height"] / 2})


def test_rank_in_chromium_by_keys_and_by_drag_and_drop_into_rankings_parquet(tmp_path, browser):
    """Three prompts ranked by keyboard, one by drag and drop; the four rankings are in the labels
    file, and then in rankings.parquet after the collect_rankings stage's own code runs on them."""
    cands = write_candidates(tmp_path / "candidates.jsonl")
    labels = tmp_path / "labels" / "human.jsonl"
    screenshot = os.environ.get("INSTRUCTFLOW_SCREENSHOT")
    with page_server(tmp_path, cands, labels) as (proc, url):
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(url)
        showing(page, "rl_prompts-00000")
        assert page.inner_text("#count") == "0 / 4 ranked"
        assert page.locator("#responses .card").count() == 4

        # 1: keys; the last one follows by itself; Backspace takes back a choice and what it implied
        keys(page, "2", "4", "1")
        assert ranked(page) == [2, 4, 1, 3]
        keys(page, "Backspace")
        assert ranked(page) == [2, 4]
        keys(page, "4", "9", "3")  # 4 is ranked already and there is no 9: both ignored
        assert ranked(page) == [2, 4, 3, 1]
        keys(page, "Enter")
        showing(page, "rl_prompts-00001")

        # 2: Enter before the ranking is whole says so and writes nothing; flags and a note
        keys(page, "1", "Enter")
        assert "Rank all 4 responses first" in page.inner_text("#message")
        keys(page, "3")
        page.check(".card[data-i='3'] input[data-flag='not_an_answer']")
        page.fill("#note", "4 answers another question")
        keys(page, "Escape")
        assert page.inner_text("#count") == "1 / 4 ranked" and "a prompt" in page.inner_text("#eta")
        if screenshot:
            page.screenshot(path=screenshot, clip={"x": 0, "y": 0, "width": 1280, "height": 500})
        keys(page, "2", "Enter")
        showing(page, "rl_prompts-00002")
        assert rankings_in(labels) == {"rl_prompts-00000": [2, 4, 3, 1], "rl_prompts-00001": [1, 3, 2, 4]}

        # 3: keyboard only, timed from the prompt on screen to the next one shown
        t0 = time.time()
        keys(page, "1", "3", "2", "Enter")
        showing(page, "rl_prompts-00003")
        keyboard_s = time.time() - t0
        assert page.inner_text("#count") == "3 / 4 ranked"

        # 4: drag and drop only: 3 into the ranking, 1 after it, 4 before both; 2 follows; the mouse submits
        drag_to(page, 3, "end")
        drag_to(page, 1, "end")
        assert ranked(page) == [3, 1]
        drag_to(page, 4, "start")
        assert ranked(page) == [4, 3, 1, 2]
        drag_to(page, 1, "start")  # and reorder within the ranking
        assert ranked(page) == [1, 4, 3, 2]
        page.click("#submit")
        page.wait_for_selector("#done", state="visible")
        assert page.inner_text("#count") == "4 / 4 ranked"
        assert proc.wait(timeout=30) == 0  # every prompt answered: the server stops by itself
    assert "done: 4 answers written" in (tmp_path / "page.log").read_text()

    expected = {"rl_prompts-00000": [2, 4, 3, 1], "rl_prompts-00001": [1, 3, 2, 4],
                "rl_prompts-00002": [1, 3, 2, 4], "rl_prompts-00003": [1, 4, 3, 2]}
    assert rankings_in(labels) == expected
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(expected)  # appended in answer order, each once
    assert rows[1]["flags"] == [[], [], [], ["not_an_answer"]] and rows[1]["note"] == "4 answers another question"
    assert all("flags" not in r and "note" not in r for r in rows[:1] + rows[2:])
    assert keyboard_s < 10, keyboard_s  # a person's keys are the bottleneck, not the page

    # the collect_rankings stage's own code turns them into rankings.parquet
    import pandas as pd

    from tasks import collect_rankings
    from tasks.config import compose

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": c["id"], "kind": "custom", "prompt": c["prompt"]}) + "\n" for c in CANDIDATES))
    metrics = collect_rankings.run(compose([
        "experiment=smoke", "tracking.enabled=false", "collect_rankings.labeler=web", "collect_rankings.k=4",
        f"collect_rankings.prompts_file={prompts}", f"collect_rankings.candidates_file={cands}",
        f"collect_rankings.labels_file={labels}", f"collect_rankings.out_file={tmp_path / 'rankings.parquet'}",
        f"collect_rankings.metrics_file={tmp_path / 'rankings.json'}",
    ]))
    df = pd.read_parquet(tmp_path / "rankings.parquet")
    assert list(df["id"]) == list(expected) and set(df["labeler"]) == {"web"}
    assert [[i + 1 for i in r] for r in df["ranking"]] == list(expected.values())
    assert metrics["prompts"] == 4 and metrics["stale_labels"] == 0
    print(f"keyboard-only ranking of one prompt (K=4), keys to the next prompt on screen: {keyboard_s:.2f} s")


def test_reload_and_server_restart_mid_queue_lose_nothing(tmp_path, browser):
    cands = write_candidates(tmp_path / "candidates.jsonl")
    labels = tmp_path / "human.jsonl"
    port = free_port()
    page = browser.new_page()
    with page_server(tmp_path, cands, labels, port=port) as (_, url):
        page.goto(url)
        showing(page, "rl_prompts-00000")
        keys(page, "3", "1", "2", "Enter")
        showing(page, "rl_prompts-00001")
        keys(page, "2")  # half a ranking, not submitted
        page.reload()
        showing(page, "rl_prompts-00001")  # the next waiting prompt, afresh
        assert ranked(page) == [] and page.inner_text("#count") == "1 / 4 ranked"
        keys(page, "4", "3", "2", "Enter")
        showing(page, "rl_prompts-00002")
        keys(page, "1", "2")
    # the server stops mid-queue: the page says an answer is not saved, and nothing is written
    written = labels.read_bytes()
    keys(page, "3", "Enter")
    page.wait_for_function("document.getElementById('message').textContent.startsWith('Not saved')")
    assert labels.read_bytes() == written
    with page_server(tmp_path, cands, labels, port=port, log="page-2.log"):
        page.reload()
        showing(page, "rl_prompts-00002")
        assert page.inner_text("#count") == "2 / 4 ranked"
        assert [el.inner_text() for el in page.query_selector_all("#queue-list li")] == ["rl_prompts-00002", "rl_prompts-00003"]
        keys(page, "1", "2", "3", "Enter")
        showing(page, "rl_prompts-00003")
    assert rankings_in(labels) == {"rl_prompts-00000": [3, 1, 2, 4], "rl_prompts-00001": [4, 3, 2, 1], "rl_prompts-00002": [1, 2, 3, 4]}
