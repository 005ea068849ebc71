"""pretrain stage: learning, exact resumption, DDP equivalence, divergence and bad input."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cmd, write_corpus
from model.checkpoint import load_checkpoint
from model.errors import CheckpointError
from tasks import pretrain, tokenize
from tasks.common import InputError
from tasks.config import compose, write_params

SMALL = ["experiment=smoke", "tracking.enabled=false", "pretrain.log_every=1"]


@pytest.fixture
def tokenized(tmp_path, monkeypatch, pydoc_docs):
    """A working directory holding a tokenized pydoc corpus."""
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path / "data/raw/corpus.jsonl", pydoc_docs)
    tokenize.run(compose([*SMALL]))
    return tmp_path


def curve(path="metrics/pretrain_curve.csv") -> dict[int, str]:
    """step -> train loss as written (repr of the float, so equality is bit-exact)."""
    rows = Path(path).read_text().splitlines()[1:]
    return {int(r.split(",")[0]): r.split(",")[1] for r in rows}


def test_loss_decreases_and_checkpoint_written(tokenized):
    metrics = pretrain.run(compose([*SMALL, "pretrain.max_steps=40"]))
    losses = curve()
    assert losses[40] < losses[1]
    assert float(losses[1]) > 5.5  # ~ln(512): starts near uniform
    ckpt = load_checkpoint("models/pretrain", load_trainer=True)
    assert ckpt.meta["step"] == 40 and ckpt.trainer_state["step"] == 40
    assert (Path("models/pretrain") / "tokenizer.json").is_file()
    assert json.loads(Path("metrics/pretrain.json").read_text())["val_loss"] == metrics["val_loss"]


def test_block_size_larger_than_context(tokenized):
    with pytest.raises(InputError, match="pretrain.block_size=128 exceeds"):
        pretrain.run(compose([*SMALL, "pretrain.block_size=128"]))


def test_kill_and_run_again_continues_bit_exact(tokenized, capfd):
    """Periodic checkpoints go to the unfinished run's folder (.resume/models/pretrain, which `dvc repro`
    does not delete); the same command again continues from there by itself (resume=auto) and ends
    with every step's loss of an uninterrupted run; the folder is gone once the run is finished."""
    steps = 100
    args = [*SMALL, f"pretrain.max_steps={steps}", "pretrain.ckpt_every=10", "pretrain.eval_every=50"]
    pretrain.run(compose(args))
    reference = curve()
    assert len(reference) == steps
    unfinished = Path(".resume/models/pretrain")
    assert not unfinished.exists()

    write_params(compose(args), "params.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "tasks.pretrain", "--params", "params.yaml"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    meta = unfinished / "meta.json"
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        try:
            step = json.loads(meta.read_text())["step"]
        except (OSError, ValueError):
            step = None
        if step is not None and step >= 30:
            proc.send_signal(signal.SIGKILL)
            killed_at = step
            break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None and killed_at < steps, "the run finished before it could be killed"
    resumed_from = load_checkpoint(unfinished).meta["step"]
    assert 30 <= resumed_from < steps

    capfd.readouterr()
    pretrain.run(compose(args))
    said = capfd.readouterr().err
    assert f"pretrain: resuming the unfinished run in {unfinished} from step {resumed_from}" in said, said
    resumed = curve()
    assert set(resumed) == set(reference)
    assert resumed == reference  # every step's loss, bit for bit
    assert not unfinished.exists() and not Path(".resume").exists()


def test_changed_settings_or_inputs_start_fresh_saying_why(tokenized, capfd):
    """An unfinished run of other settings or other inputs is not continued: the stage says what
    changed and starts from step 0 (resume=true continues it anyway; resume=false never does)."""
    from tasks.resume import Resume

    args = [*SMALL, "pretrain.max_steps=20", "pretrain.ckpt_every=10", "pretrain.eval_every=0"]
    cfg = compose(args)
    res = Resume(cfg, "pretrain", sections=["seed", "model", "pretrain"], inputs=["data/tokenized"], out_dir="models/pretrain")
    pretrain.run(cfg)
    fresh = curve()
    # plant an unfinished run (a copy of the finished checkpoint at step 20 of 40)
    import shutil

    shutil.copytree("models/pretrain", res.folder)
    assert res.start() == res.folder  # same settings and inputs: continued
    capfd.readouterr()
    pretrain.run(compose([*args, "pretrain.lr=0.002"]))
    said = capfd.readouterr().err
    assert "pretrain: starting fresh: pretrain.lr changed since the unfinished run in .resume/models/pretrain" in said, said
    assert curve()[1] == fresh[1] and curve()[20] != fresh[20] and len(curve()) == 20  # from step 0, with the new learning rate

    shutil.copytree("models/pretrain", res.folder)  # an unfinished run of lr 0.002, then other tokens in val.bin
    Path("data/tokenized/val.bin").write_bytes(Path("data/tokenized/val.bin").read_bytes()[:-2])
    capfd.readouterr()
    pretrain.run(compose([*args, "pretrain.lr=0.002"]))
    assert "starting fresh: input data/tokenized changed" in capfd.readouterr().err

    shutil.copytree("models/pretrain", res.folder)
    capfd.readouterr()
    out = pretrain.run(compose([*args, "pretrain.lr=0.002", "pretrain.max_steps=30", "pretrain.resume=true"]))
    assert "resuming from .resume/models/pretrain (resume=true" in capfd.readouterr().err and out["step"] == 30
    assert len(curve()) == 30 and not res.folder.exists()


@pytest.mark.slow
def test_ddp_two_processes_match_one(tokenized):
    args = [*SMALL, "pretrain.max_steps=8", "pretrain.eval_every=4", "pretrain.batch_size=8", "pretrain.micro_batch_size=4"]
    pretrain.run(compose(args))
    single = {k: float(v) for k, v in curve().items()}
    write_params(compose([*args, "pretrain.out_dir=models/ddp", "pretrain.curve_file=metrics/ddp.csv", "pretrain.metrics_file=metrics/ddp.json"]), "params.yaml")
    run_cmd(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tasks.pretrain", "--params", "params.yaml"],
        cwd=tokenized,
        env={"OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    ddp = {k: float(v) for k, v in curve("metrics/ddp.csv").items()}
    assert set(ddp) == set(single)
    for k in single:
        assert abs(ddp[k] - single[k]) < 1e-5, (k, ddp[k], single[k])


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tokenized):
    pretrain.run(compose([*SMALL, "pretrain.max_steps=10"]))
    good = Path("models/pretrain/model.safetensors").read_bytes()
    write_params(compose([*SMALL, "pretrain.max_steps=200", "pretrain.lr=1e12", "pretrain.min_lr=1e12", "pretrain.warmup_steps=1", "pretrain.grad_clip=0", "pretrain.ckpt_every=1000"]), "params.yaml")
    proc = run_cmd([sys.executable, "-m", "tasks.pretrain", "--params", "params.yaml"], cwd=tokenized, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "non-finite loss" in lines[0], proc.stderr
    assert Path("models/pretrain/model.safetensors").read_bytes() == good


def test_truncated_checkpoint_is_a_clear_error(tokenized):
    pretrain.run(compose([*SMALL, "pretrain.max_steps=5"]))
    weights = Path("models/pretrain/model.safetensors")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        pretrain.run(compose([*SMALL, "pretrain.max_steps=10", "pretrain.resume=true"]))
    write_params(compose([*SMALL, "pretrain.max_steps=10", "pretrain.resume=true"]), "params.yaml")
    proc = run_cmd([sys.executable, "-m", "tasks.pretrain", "--params", "params.yaml"], cwd=tokenized, check=False)
    lines = proc.stderr.strip().splitlines()  # what it resumes from, then the one-line error
    assert proc.returncode == 2 and lines[-1].startswith("error: checkpoint models/pretrain: model.safetensors is truncated"), proc.stderr
    assert [ln for ln in lines if ln.startswith("error")] == lines[-1:] and len(lines) <= 2, proc.stderr


def test_short_windows_share_of_every_step(tokenized):
    """short_fraction cuts that share of every micro-batch's windows into short_block pieces: the
    same tokens, shorter attention; none cut changes nothing, and val_loss_short scores the
    validation windows cut the same way. Shares that are not whole windows are refused."""
    args = [*SMALL, "pretrain.max_steps=6", "pretrain.eval_every=0", "pretrain.short_block=16"]
    base = pretrain.run(compose([*args, "pretrain.short_fraction=0"]))
    off = curve()
    assert base["val_loss_short"] > base["val_loss"]  # 16-token pieces see less context than 64-token windows
    mixed = pretrain.run(compose([*args, "pretrain.short_fraction=0.5"]))
    half = curve()
    assert half[1] != off[1] and mixed["tokens_seen"] == base["tokens_seen"]  # the same tokens, less context
    again = pretrain.run(compose([*args, "pretrain.short_fraction=0.5"]))
    assert curve() == half and again["val_loss_short"] == mixed["val_loss_short"]  # a pure function of (seed, step)
    header = Path("metrics/pretrain_curve.csv").read_text().splitlines()[0]
    assert header == "step,train_loss,val_loss,val_loss_short"
    for bad, msg in (
        ("pretrain.short_fraction=0.3", r"pretrain.short_fraction=0.3 must be in \[0, 1\] and a whole number"),
        ("pretrain.short_block=24", r"pretrain.short_block=24 must be > 0 and divide the training window \(64 tokens\)"),
    ):
        with pytest.raises(InputError, match=msg):
            pretrain.run(compose([*args, "pretrain.short_fraction=0.5", bad]))


def test_icl_score_from_val_only_after_training(tokenized):
    """The ICL score (model/icl.py) is measured after training on val.bin: a finished run resumed with
    train.bin's tokens replaced writes the same score; other val.bin tokens change it."""
    import numpy as np

    from model.icl import position_loss

    args = [*SMALL, "pretrain.max_steps=10", "pretrain.icl.windows=16", "pretrain.icl.early=[40,60]", "pretrain.icl.late=[450,500]"]
    first = pretrain.run(compose(args))
    meta = json.loads(Path("data/tokenized/meta.json").read_text())
    val = np.fromfile("data/tokenized/val.bin", dtype=meta["dtype"])
    pl = position_loss(load_checkpoint("models/pretrain").model, val, meta["eos_id"], 64, windows=16, early=[40, 60],
                       late=[450, 500], seed=compose(args).seed)
    written = json.loads(Path("metrics/pretrain.json").read_text())
    assert pl.early == (5, 8) and pl.late == (57, 64)  # Olsson's 40-60 and 450-500 scaled to the smoke model's 64 tokens
    assert written["icl_score"] == first["icl_score"] == pytest.approx(pl.score, abs=1e-6)
    assert written["icl_windows"] == pl.windows == min(16, meta["val_docs"])  # the smoke corpus has few val documents
    assert written["icl_long_docs"] == pl.long_docs > 0 and written["icl_score_long"] == pytest.approx(pl.score_long, abs=1e-6)
    rows = Path("metrics/pretrain_position_loss.csv").read_text().splitlines()
    assert rows[0] == "position,loss,loss_long" and len(rows) == 1 + 32 and rows[1].startswith("0,")

    train = Path("data/tokenized/train.bin")
    tokens = np.fromfile(train, dtype=meta["dtype"])
    np.random.default_rng(0).permutation(tokens).tofile(train)  # other train tokens: no effect
    resumed = pretrain.run(compose([*args, "pretrain.resume=true"]))
    assert resumed["step"] == 10 and resumed["icl_score"] == first["icl_score"]
    np.random.default_rng(0).permutation(val).tofile("data/tokenized/val.bin")
    assert pretrain.run(compose([*args, "pretrain.resume=true"]))["icl_score"] != first["icl_score"]


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tokenized):
    """A write that fails (here a file size limit, RLIMIT_FSIZE, as a full disk fails it) while the
    final checkpoint is saved: one line names the checkpoint and the file, exit 1, and the previous
    checkpoint stays byte for byte, loadable, with no temp folder beside it."""
    import resource

    pretrain.run(compose([*SMALL, "pretrain.max_steps=5"]))
    before = {f.name: f.read_bytes() for f in Path("models/pretrain").iterdir()}
    metrics_before = Path("metrics/pretrain.json").read_bytes()
    write_params(compose([*SMALL, "pretrain.max_steps=10", "pretrain.ckpt_every=0"]), "params.yaml")
    limit = len(before["model.safetensors"]) // 2  # every other file the stage writes is smaller

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "tasks.pretrain", "--params", "params.yaml"], capture_output=True, text=True,
                          preexec_fn=small_disk)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    import re

    assert re.fullmatch(r"error: checkpoint models/pretrain: writing (trainer.pt|model.safetensors) failed \(.+\); "
                        r"the previous checkpoint is kept", errors[0]), errors[0]
    assert {f.name: f.read_bytes() for f in Path("models/pretrain").iterdir()} == before
    assert load_checkpoint("models/pretrain").meta["step"] == 5
    assert Path("metrics/pretrain.json").read_bytes() == metrics_before  # written after the checkpoint: not reached
    assert [p.name for p in Path("models").iterdir()] == ["pretrain"]  # no .pretrain.tmp-* left


def test_other_code_starts_fresh(tmp_path, monkeypatch, capfd):
    """An unfinished run is continued only by the code that started it (tasks/ and model/)."""
    import shutil

    from tasks import resume
    from tasks.resume import Resume

    code = tmp_path / "code" / "tasks"
    shutil.copytree(Path(resume.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "world"))
    monkeypatch.setattr(resume, "CODE_DIRS", [code])
    monkeypatch.chdir(tmp_path)
    cfg = compose([*SMALL])
    res = Resume(cfg, "pretrain", sections=["seed", "pretrain"], inputs=[], out_dir="models/pretrain")
    res.folder.mkdir(parents=True)
    (res.folder / "trainer.pt").write_bytes(b"")
    (res.folder / "meta.json").write_text(json.dumps({"step": 3, **res.meta()}))
    assert Resume(cfg, "pretrain", sections=["seed", "pretrain"], inputs=[], out_dir="models/pretrain").start() == res.folder
    (code / "common.py").write_text((code / "common.py").read_text() + "\n# an edit\n")
    capfd.readouterr()
    assert Resume(cfg, "pretrain", sections=["seed", "pretrain"], inputs=[], out_dir="models/pretrain").start() is None
    assert "starting fresh: the code (tasks/, model/) changed since the unfinished run" in capfd.readouterr().err

