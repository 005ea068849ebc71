"""Shared fixtures: a scratch project (a temp git + DVC repo holding a copy of the code and
conf/), real MLflow on SQLite inside it, and one Prefect test harness per session."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("conf", "tasks", "model", "flows", "labels", "dvc.yaml", "pyproject.toml", "prefect.yaml")

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def settings(section: str, *extra: str, **overrides):
    """One section of the composed conf/ (its defaults, plus `extra` override strings and `overrides`),
    as the stage reads it: the dataclass of tasks/schema.py, values from conf/ alone."""
    from omegaconf import OmegaConf

    from tasks.config import compose

    node = compose([*extra, *(f"{section}.{k}={v}" for k, v in overrides.items())])[section]
    return OmegaConf.to_object(node)


def edit_params(path: str | Path, section: str, **values) -> None:
    """Set keys of a written params.yaml by hand, as a user editing the file would (no validation)."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text())
    raw[section].update(values)
    Path(path).write_text(yaml.safe_dump(raw, sort_keys=False))


def run_cmd(args: list[str], cwd: Path, env: dict | None = None, check: bool = True, timeout: int = 600):
    """Run a command with the project's interpreter first on PATH; return the CompletedProcess."""
    full_env = dict(os.environ)
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    full_env.update(env or {})
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_project(dest: Path) -> Path:
    """A self-contained copy of the project in a fresh git + DVC repo."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    (dest / ".gitignore").write_text("/mlflow.db\n/mlruns/\n/.prefect/\n/.instructflow.lock\n__pycache__/\n/.resume/\n")
    run_cmd(["git", "init", "-q"], dest)
    run_cmd(["git", "config", "user.email", "test@example.invalid"], dest)
    run_cmd(["git", "config", "user.name", "test"], dest)
    run_cmd([sys.executable, "-m", "dvc", "init", "-q"], dest)
    shutil.copy2(ROOT / ".dvc/config", dest / ".dvc/config")  # the project's DVC settings (Hydra composition for `dvc exp run -S`)
    run_cmd([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], dest)
    run_cmd(["git", "add", "-A"], dest)
    run_cmd(["git", "commit", "-qm", "init"], dest)
    return dest


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server a test starts and stops)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    """Wait until `url` answers 200, or fail the test after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} not ready after {timeout}s")


def start(args: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """A service (server, worker) in its own process group, output to `log`; end it with `stop`."""
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the service's process group, SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def serve_local_deployment(project: Path, env: dict, port: int, logs: Path) -> tuple[subprocess.Popen, subprocess.Popen]:
    """A Prefect server on 127.0.0.1:`port` and `python -m flows.serve` in `project`, returned once the
    deployment `instructflow/local` exists (server.log and serve.log in `logs`); end both with `stop`."""
    prefect = str(Path(sys.executable).parent / "prefect")
    server = start([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], project, env, logs / "server.log")
    served = None
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", 120)
        served = start([sys.executable, "-m", "flows.serve"], project, env, logs / "serve.log")
        deadline = time.time() + 90
        while run_cmd([prefect, "deployment", "inspect", "instructflow/local"], project, env=env, check=False).returncode:
            assert time.time() < deadline and served.poll() is None, (logs / "serve.log").read_text()[-2000:]
            time.sleep(1)
    except BaseException:
        for p in (served, server):
            if p is not None:
                stop(p)
        raise
    return server, served


def make_sft_and_rm() -> None:
    """In an instruct_workspace: models/sft (the tiny GPT) and models/rm (a tiny RM from it, the
    reward model's prompt split recorded in its meta as train_rm records it)."""
    import torch

    from model.load import from_pretrained
    from model.reward import RewardModel

    shutil.copytree("models/pretrain", "models/sft")
    torch.manual_seed(1)
    rm = RewardModel(from_pretrained("models/sft"), bias=0.1, std=0.5)
    meta = {"stage": "train_rm", "config": {"train_rm": {"split_seed": 1337, "heldout_fraction": 0.2, "val_fraction": 0.0}}}
    rm.save("models/rm", meta, tokenizer_path="models/sft/tokenizer.json")


def run_and_kill(stage: str, meta: Path, key: str, at_least: int, timeout: float = 120) -> int | None:
    """Run `python -m tasks.<stage> --params params.yaml` and SIGKILL it once the checkpoint's
    meta.json records `key` >= at_least; -> the value it was killed at (None if it finished first)."""
    proc = subprocess.Popen([sys.executable, "-m", f"tasks.{stage}", "--params", "params.yaml"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at, deadline = None, time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            value = json.loads(meta.read_text())[key]
        except (OSError, ValueError, KeyError):
            value = None
        if value is not None and value >= at_least:
            proc.send_signal(signal.SIGKILL)
            killed_at = value
            break
        time.sleep(0.01)
    proc.wait()
    return killed_at


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A scratch project as the working directory, MLflow on SQLite inside it."""
    proj = make_project(tmp_path / "proj")
    monkeypatch.chdir(proj)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    return proj


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect test harness (a temporary API server) for the whole session."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def write_corpus(path: Path, docs: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    return path


@pytest.fixture(scope="session")
def pydoc_docs() -> list[str]:
    import pydoc_data.topics

    return [v for _, v in sorted(pydoc_data.topics.topics.items())]


@pytest.fixture(scope="session")
def instruct_data(tmp_path_factory) -> Path:
    """The world's instruction files at smoke size and a tiny GPT with a BPE tokenizer, made once:
    copy with `instruct_workspace`."""
    import torch

    from model.checkpoint import save_checkpoint
    from model.gpt import GPT, GPTConfig
    from model.tokenizer import Tokenizer
    from tasks import data
    from tasks.common import read_jsonl
    from tasks.config import compose

    root = tmp_path_factory.mktemp("instruct")
    # perfect demonstrations: these tests are about the stages' mechanics (tests/test_data.py and
    # test_world.py cover the flawed ones)
    data.run(compose(["experiment=smoke", "tracking.enabled=false", "data.corpus_mb=0.05", "data.demo_flaws.share=0",
                      f"data.out_dir={root}/data/raw"]))
    texts = [r["text"] for r in read_jsonl(root / "data/raw/corpus.jsonl")]
    texts += [r["prompt"] + " " + r.get("response", "") for r in read_jsonl(root / "data/raw/instructions/sft_train.jsonl")]
    tok = Tokenizer.train(texts, vocab_size=600)
    tok.save(root / "tokenizer.json")
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=160, n_layer=2, n_head=2, n_embd=32))
    save_checkpoint(root / "models/pretrain", gpt, {"stage": "pretrain"}, tokenizer_path=root / "tokenizer.json")
    return root


@pytest.fixture
def instruct_workspace(instruct_data, tmp_path, monkeypatch) -> Path:
    """cwd holding data/raw (smoke-size world) and models/pretrain (a tiny untrained GPT)."""
    shutil.copytree(instruct_data / "data", tmp_path / "data")
    shutil.copytree(instruct_data / "models", tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    return tmp_path
