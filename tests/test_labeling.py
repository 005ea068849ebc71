"""Human rankings: the labels file (tasks/labels.py) and the labeler flow (flows/labeling.py),
the latter on a real Prefect server answered through `resume_flow_run`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port, wait_http
from tasks.common import InputError
from tasks.labels import append_label, label_key, make_label, missing, parse_ranking, read_candidates, read_labels



def candidate(i: int, k: int = 4) -> dict:
    return {
        "id": f"p-{i:05d}",
        "kind": "list",
        "prompt": f"Prompt {i}: name ~{k} things costing $5 *each*",
        "responses": [f"answer {i}.{j} with `code` and # hash\nsecond line" for j in range(k)],
        "sources": [f"sft T={0.5 * j}" for j in range(k)],
    }


def good_answer(cand: dict) -> list[int]:
    """A distinct, deterministic 1-based ranking per prompt (so a label shows which answer it got)."""
    k, i = len(cand["responses"]), int(cand["id"].split("-")[1])
    return [(i + j) % k + 1 for j in range(k)]


def write_lines(path: Path, lines: list[str], end: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + end, encoding="utf-8")
    return path


# ---- tasks/labels.py ------------------------------------------------------------------------


def test_label_key_changes_with_responses_only():
    c = candidate(1)
    assert label_key(c["id"], c["responses"]) == label_key(c["id"], list(c["responses"]))
    assert label_key(c["id"], c["responses"]).startswith("p-00001:")
    assert label_key(c["id"], c["responses"]) != label_key(c["id"], c["responses"][:-1] + ["changed"])
    assert label_key(c["id"], c["responses"]) != label_key("p-00002", c["responses"])


@pytest.mark.parametrize("value", [[2, 1, 4, 3], "2,1,4,3", "2 1 4 3", " 2, 1 ,4  3 ", "[2, 1, 4, 3]"])
def test_parse_ranking_accepts_permutations(value):
    assert parse_ranking(value, 4, "x") == [1, 0, 3, 2]


@pytest.mark.parametrize(
    "value, why",
    [
        ([1, 1, 2, 3], "1 appears twice"),
        ([1, 2, 3], "3 numbers, need 4"),
        ([1, 2, 3, 4, 5], "5 numbers, need 4"),
        ([0, 1, 2, 3], "0 is out of range"),
        ([1, 2, 3, 5], "5 is out of range"),
        ("1,2,x,4", "not a list of whole numbers"),
        ([1.0, 2, 3, 4], "not a list of whole numbers"),
        ([True, 2, 3, 4], "not a list of whole numbers"),
        ("", "not a list of whole numbers"),
        ("1\n2\n3\n3", "3 appears twice"),
    ],
)
def test_parse_ranking_refuses_non_permutations_in_one_line(value, why):
    with pytest.raises(InputError) as e:
        parse_ranking(value, 4, "labels/human.jsonl: row 7")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("labels/human.jsonl: row 7: ranking ")
    assert "is not a permutation of 1..4" in msg and why in msg


def test_parse_ranking_message_as_documented():
    with pytest.raises(InputError, match=r"^labels/human\.jsonl: row 7: ranking \[1, 1, 2, 3\] is not a permutation of 1\.\.4"):
        parse_ranking([1, 1, 2, 3], 4, "labels/human.jsonl: row 7")


def test_append_then_read_round_trip_and_missing(tmp_path):
    path = tmp_path / "labels" / "human.jsonl"
    cands = [candidate(i) for i in range(3)]
    assert read_labels(path) == {}
    assert missing(cands, {}) == cands
    row = append_label(path, make_label(cands[1], [3, 2, 1, 0]))
    labels = read_labels(path)
    assert list(labels) == [row["key"]] and labels[row["key"]]["ranking"] == [3, 2, 1, 0]
    assert labels[row["key"]]["labeler"] == "human" and labels[row["key"]]["time"].endswith("+00:00")
    assert missing(cands, labels) == [cands[0], cands[2]]
    # the same prompt with new candidates is asked again; its old label stays in the file
    changed = dict(cands[1], responses=cands[1]["responses"][:3] + ["new"])
    assert missing([changed], labels) == [changed]
    append_label(path, make_label(changed, [0, 1, 2, 3]))
    assert len(read_labels(path)) == 2 and len(path.read_text().splitlines()) == 2


def test_torn_last_line_is_skipped_and_cut_by_the_next_append(tmp_path):
    path = tmp_path / "human.jsonl"
    a, b, c = (make_label(candidate(i), [0, 1, 2, 3]) for i in range(3))
    append_label(path, a)
    append_label(path, b)
    good = path.read_bytes()
    full = json.dumps(c) + "\n"
    with open(path, "ab") as f:
        f.write(full[: len(full) // 2].encode())  # a write cut short
    assert set(read_labels(path)) == {a["key"], b["key"]}
    append_label(path, c)
    data = path.read_bytes()
    assert data.startswith(good)  # earlier lines byte for byte
    assert set(read_labels(path)) == {a["key"], b["key"], c["key"]}
    assert len(data.decode().splitlines()) == 3


def test_complete_last_row_without_newline_is_kept(tmp_path):
    path = tmp_path / "human.jsonl"
    a, b = (make_label(candidate(i), [1, 0, 2, 3]) for i in range(2))
    path.write_text(json.dumps(a))  # complete, newline lost
    assert set(read_labels(path)) == {a["key"]}
    append_label(path, b)
    assert set(read_labels(path)) == {a["key"], b["key"]}


def test_bad_middle_row_is_refused_naming_file_and_row(tmp_path):
    path = tmp_path / "human.jsonl"
    a, b = (json.dumps(make_label(candidate(i), [0, 1, 2, 3])) for i in range(2))
    write_lines(path, [a, a[: len(a) // 2], b])
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: row 2 is not valid JSON"):
        read_labels(path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ranking": [0, 0, 1, 2]}, r"row 2: ranking \[0, 0, 1, 2\] is not a permutation of 0\.\.3 \(0 appears twice\)"),
        ({"ranking": [1, 2, 3]}, r"row 2: ranking \[1, 2, 3\] is not a permutation of 0\.\.3"),
        ({"ranking": [1, 2, 3, 4]}, r"row 2: ranking \[1, 2, 3, 4\] is not a permutation of 0\.\.3 \(4 is out of range\)"),
        ({"ranking": "0,1,2,3"}, r"row 2: field 'ranking' missing or not a list"),
        ({"time": None}, r"row 2: field 'time' missing"),
        ({"responses": ["changed", "b", "c", "d"]}, r"row 2: key '.*' does not match id and responses"),
    ],
)
def test_invalid_rows_are_refused(tmp_path, change, message):
    path = tmp_path / "human.jsonl"
    a, b, c = (make_label(candidate(i), [0, 1, 2, 3]) for i in range(3))
    write_lines(path, [json.dumps(a), json.dumps({**b, **change}), json.dumps(c)])
    with pytest.raises(InputError) as e:
        read_labels(path)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{path}: row 2")
    assert re.search(message, str(e.value)), str(e.value)


def test_append_refuses_an_invalid_row(tmp_path):
    path = tmp_path / "human.jsonl"
    with pytest.raises(InputError, match="not a permutation"):
        append_label(path, make_label(candidate(0), [0, 0, 1, 2]))
    assert not path.exists()


def test_flags_and_note_round_trip_and_rows_without_them_stay_valid(tmp_path):
    path = tmp_path / "human.jsonl"
    plain = append_label(path, make_label(candidate(0), [0, 1, 2, 3]))  # the Prefect form's row, as before
    assert "flags" not in plain and "note" not in plain
    quiet = append_label(path, make_label(candidate(1), [1, 0, 2, 3], flags=[[], [], [], []], note="  "))
    assert "flags" not in quiet and "note" not in quiet  # written only when set
    row = append_label(path, make_label(candidate(2), [3, 2, 1, 0], flags=[["unsafe"], [], ["not_an_answer", "unsafe"], []], note=" off topic "))
    labels = read_labels(path)
    assert labels[row["key"]]["flags"] == [["unsafe"], [], ["not_an_answer", "unsafe"], []] and labels[row["key"]]["note"] == "off topic"
    assert len(labels) == 3


@pytest.mark.parametrize(
    "change, message",
    [
        ({"flags": [["unsafe"]]}, r"row 1: flags \[\['unsafe'\]\] must be 4 lists, one per response"),
        ({"flags": [[], ["rude"], [], []]}, r"row 1: flag 'rude' of response 2 is not one of not_an_answer, unsafe"),
        ({"flags": [[], [], ["unsafe", "unsafe"], []]}, r"row 1: flags of response 3 repeat a name"),
        ({"flags": "unsafe"}, r"row 1: flags 'unsafe' must be 4 lists"),
        ({"note": 3}, r"row 1: note must be a string"),
        ({"note": "x" * 2001}, r"row 1: note has 2001 characters, at most 2000"),
    ],
)
def test_bad_flags_or_note_are_refused(tmp_path, change, message):
    path = write_lines(tmp_path / "human.jsonl", [json.dumps({**make_label(candidate(0), [0, 1, 2, 3]), **change})])
    with pytest.raises(InputError, match=message):
        read_labels(path)
    with pytest.raises(InputError, match=message.replace("row 1", "new row for 'p-00000'")):
        append_label(tmp_path / "new.jsonl", {**make_label(candidate(0), [0, 1, 2, 3]), **change})
    assert not (tmp_path / "new.jsonl").exists()


def test_read_candidates_checks_rows(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [json.dumps(candidate(0)), json.dumps(dict(candidate(1), responses=["one"]))])
    with pytest.raises(InputError, match=r"c\.jsonl: row 2: 1 responses, need 2 to 9"):
        read_candidates(path)


# ---- flows/labeling.py without a server ----------------------------------------------------


def test_form_schema_is_what_the_server_checks():
    from prefect._internal.pydantic.v2_schema import create_v2_schema

    from flows.labeling import describe, ranking_input

    c = candidate(3, k=5)
    form = ranking_input(5).with_initial_data(description=describe(c, 1, 2))
    field = create_v2_schema(form.__name__, model_base=form)["properties"]["ranking"]
    assert (field["minItems"], field["maxItems"], field["uniqueItems"]) == (5, 5, True)
    assert (field["items"]["minimum"], field["items"]["maximum"], field["items"]["type"]) == (1, 5, "integer")
    md = form._description
    assert "p-00003" in md and "**Response 5**" in md
    assert r"\~5" in md and r"\$5" in md and r"\*each\*" in md and r"\`code\`" in md and r"\# hash" in md


def test_md_escape_keeps_blank_lines_without_html_entities():
    """The Prefect UI shows `&nbsp;` as typed: an empty line is a line holding the hard-break
    backslash alone; empty lines at either end go (a trailing backslash would show)."""
    from flows.labeling import md_escape

    assert md_escape("first\n\nsecond") == "first\\\n\\\nsecond"
    assert md_escape("\n\nA & B \r\n\r\n\n") == "A \\& B"
    assert md_escape("one\n   \ntwo") == "one\\\n\\\ntwo"
    assert "&nbsp;" not in md_escape("a\n\n\nb\n")


def test_a_refused_answers_reason_is_the_first_line_of_the_form():
    from flows.labeling import describe

    reason = "answer for p-00000: ranking [2, 2, 1, 1] is not a permutation of 1..4 (2 appears twice)"
    first = describe(candidate(0), 1, 3, note=reason).splitlines()[0]
    assert first == "**Your last answer was refused:** answer for p\\-00000: ranking \\[2, 2, 1, 1\\] is not a permutation of 1\\.\\.4 \\(2 appears twice\\)"
    assert describe(candidate(0), 1, 3).startswith("**Prompt 1 of 3**")


def test_ask_rankings_pauses_again_after_a_refused_answer(tmp_path, monkeypatch):
    """The loop with `pause_flow_run` replaced: a refused answer asks the same prompt again
    with the reason on top; each valid answer is in the file before the next pause."""
    import flows.labeling as labeling

    path = tmp_path / "human.jsonl"
    cands = [candidate(i) for i in range(3)]
    append_label(path, make_label(cands[1], [0, 1, 2, 3]))  # answered by an earlier run
    answers = iter([[1, 1, 2, 3], good_answer(cands[0]), good_answer(cands[2])])
    asked = []

    def fake_pause(wait_for_input, timeout, poll_interval):
        desc = wait_for_input._description
        asked.append((re.search(r"`(p-\d+)`", desc).group(1), "answer was refused" in desc, len(read_labels(path))))
        return wait_for_input(ranking=next(answers))  # what Prefect's load() does after resuming

    monkeypatch.setattr(labeling, "pause_flow_run", fake_pause)
    assert labeling.ask_rankings(cands, path, timeout_s=5, logger=__import__("logging").getLogger("t")) == 2
    assert asked == [("p-00000", False, 1), ("p-00000", True, 1), ("p-00002", False, 2)]
    labels = read_labels(path)
    assert [labels[label_key(c["id"], c["responses"])]["ranking"] for c in cands] == [
        [n - 1 for n in good_answer(cands[0])],
        [0, 1, 2, 3],
        [n - 1 for n in good_answer(cands[2])],
    ]


# ---- flows/labeling.py on a real Prefect server --------------------------------------------


def _start(args, cwd, env, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _kill(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Asker:
    """The test's side of the UI: find the paused run, read what it asks, answer it."""

    def __init__(self, client, log: Path):
        self.client, self.log = client, log
        self.seen: set[tuple] = set()  # (run id, pause key) already answered or refused

    def wait_question(self, proc: subprocess.Popen, timeout: float = 60) -> tuple:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
        from prefect.client.schemas.objects import StateType

        flt = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert proc.poll() is None, f"flow exited {proc.returncode}:\n" + self.log.read_text()[-3000:]
            for fr in self.client.read_flow_runs(flow_run_filter=flt):
                details = fr.state.state_details
                if (fr.id, details.pause_key) in self.seen or not details.run_input_keyset:
                    continue
                try:
                    raw = self.client.read_flow_run_input(fr.id, details.run_input_keyset["description"])
                except Exception:
                    continue  # the run paused; its form is not saved yet
                desc = json.loads(raw) if raw.startswith('"') else raw
                return fr.id, details.pause_key, details.run_input_keyset, desc
            time.sleep(0.3)
        raise AssertionError("no question asked in time:\n" + self.log.read_text()[-3000:])


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_label_flow_on_a_real_server(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Running

    t0 = time.time()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        PYTHONPATH=str(ROOT),
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=api,
        PREFECT_UI_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    cands = [candidate(i) for i in range(4)]
    cand_file = write_lines(tmp_path / "candidates.jsonl", [json.dumps(c) for c in cands])
    labels = tmp_path / "labels" / "human.jsonl"
    keys = {c["id"]: label_key(c["id"], c["responses"]) for c in cands}
    by_id = {c["id"]: c for c in cands}
    flow_cmd = [sys.executable, "-m", "flows.labeling", "--candidates", str(cand_file), "--labels", str(labels), "--timeout", "120", "--poll", "1"]
    logs = [tmp_path / "flow-1.log", tmp_path / "flow-2.log"]

    prefect = str(Path(sys.executable).parent / "prefect")
    server = _start([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], tmp_path, env, tmp_path / "server.log")
    procs = []
    timings = {}
    try:
        wait_http(f"{api}/health", 120)
        timings["server"] = time.time() - t0
        procs.append(_start(flow_cmd, tmp_path, env, logs[0]))
        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            asker = Asker(client, logs[0])
            asked = []

            def ask(proc):
                run_id, pause_key, keyset, desc = asker.wait_question(proc)
                pid = re.search(r"`(p-\d+)`", desc).group(1)
                asked.append((pid, "answer was refused" in desc))
                return run_id, pause_key, keyset, pid

            # -- run 1: the first question; answers the server refuses leave the run paused
            run1, key1, keyset1, pid = ask(procs[0])
            timings["first question"] = time.time() - t0
            assert pid == "p-00000" and asked[-1] == ("p-00000", False)
            for bad in ([1, 1, 2, 3], [1, 2, 3], [0, 1, 2, 3], [1, 2, 3, 5], ["1", "2", "3", "4"]):
                with pytest.raises(RuntimeError, match="Validation failed"):
                    resume_flow_run(run1, run_input={"ranking": bad})
            state = client.read_flow_run(run1).state
            assert state.is_paused() and state.state_details.pause_key == key1

            # -- an invalid answer that gets past the server (written as the response, run set
            #    running, as `resume` does without its schema check): the flow asks again
            client.create_flow_run_input(run1, keyset1["response"], json.dumps({"ranking": [2, 2, 1, 1]}))
            client.set_flow_run_state(run1, Running(), force=True)
            asker.seen.add((run1, key1))
            run, key, _, pid = ask(procs[0])
            assert (run, pid) == (run1, "p-00000") and key != key1 and asked[-1] == ("p-00000", True)
            assert not labels.exists() or not read_labels(labels)

            # -- valid answers land in the file at once, while the flow is still running
            for n, expected in ((1, "p-00000"), (2, "p-00001")):
                if n == 2:
                    run, key, _, pid = ask(procs[0])
                assert pid == expected
                resume_flow_run(run, run_input={"ranking": good_answer(by_id[pid])})
                asker.seen.add((run, key))
                got = _wait_for(lambda: labels.exists() and keys[pid] in read_labels(labels) and read_labels(labels), 15, f"label of {pid}")
                assert len(got) == n and procs[0].poll() is None
                assert got[keys[pid]]["ranking"] == [x - 1 for x in good_answer(by_id[pid])]

            # -- kill the flow while it waits on the third prompt
            run, key, _, pid = ask(procs[0])
            assert pid == "p-00002"
            _kill(procs[0], signal.SIGKILL)
            timings["killed"] = time.time() - t0
            assert set(read_labels(labels)) == {keys["p-00000"], keys["p-00001"]}
            asker.seen.add((run, key))  # that run stays Paused forever; it is not asked again

            # -- run 2 asks only for what is missing
            asked.clear()
            procs.append(_start(flow_cmd, tmp_path, env, logs[1]))
            asker.log = logs[1]
            for _ in range(2):
                run, key, _, pid = ask(procs[1])
                assert run != run1
                resume_flow_run(run, run_input={"ranking": good_answer(by_id[pid])})
                asker.seen.add((run, key))
                _wait_for(lambda: keys[pid] in read_labels(labels), 15, f"label of {pid}")
            assert [p for p, _ in asked] == ["p-00002", "p-00003"]
            assert procs[1].wait(timeout=60) == 0, logs[1].read_text()[-3000:]
            assert "'written': 2, 'missing': 0" in logs[1].read_text()
            assert "p-00000: answer refused, asking again: answer: ranking [2, 2, 1, 1] is not a permutation" in logs[0].read_text()
            timings["done"] = time.time() - t0

        rows = [json.loads(line) for line in labels.read_text().splitlines()]
        assert sorted(r["id"] for r in rows) == [c["id"] for c in cands]  # each prompt exactly once
        for r in rows:
            assert r["key"] == keys[r["id"]] and r["ranking"] == [x - 1 for x in good_answer(by_id[r["id"]])]
        # the answers become the rankings: the collect_rankings stage writes them to the Parquet file
        import pandas as pd

        from tasks import collect_rankings
        from tasks.config import compose

        prompts = write_lines(tmp_path / "prompts.jsonl", [json.dumps({"id": c["id"], "kind": "custom", "prompt": c["prompt"]}) for c in cands])
        collect_rankings.run(compose([
            "experiment=smoke", "tracking.enabled=false", "collect_rankings.labeler=human", "collect_rankings.k=4",
            f"collect_rankings.prompts_file={prompts}", f"collect_rankings.candidates_file={cand_file}",
            f"collect_rankings.labels_file={labels}", f"collect_rankings.out_file={tmp_path / 'rankings.parquet'}",
            f"collect_rankings.metrics_file={tmp_path / 'rankings.json'}",
        ]))
        df = pd.read_parquet(tmp_path / "rankings.parquet")
        assert list(df["id"]) == [c["id"] for c in cands] and set(df["labeler"]) == {"human"}
        assert [r.tolist() for r in df["ranking"]] == [[x - 1 for x in good_answer(c)] for c in cands]
        print("timings (s since start):", {k: round(v, 1) for k, v in timings.items()})
    finally:
        for p in procs:
            _kill(p, signal.SIGKILL)
        _kill(server)
