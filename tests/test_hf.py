"""model/hf.py: same logits as transformers' GPT2LMHeadModel in both directions, and the export CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import save_checkpoint
from model.gpt import GPT, GPTConfig
from model.load import from_pretrained
from model.hf import export_hf, verify_export

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
HF_CONFIG = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=300)


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**(dict(vocab_size=300, block_size=64, n_layer=2, n_head=2, n_embd=32) | kw)))
    with torch.no_grad():  # move every tensor off its init value so a mis-mapped one shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def hf_tiny(folder: Path):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_CONFIG, bos_token_id=0, eos_token_id=0))
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(folder)  # safetensors (the only format in transformers >= 5, the default before)
    assert (folder / "model.safetensors").is_file()
    return hf.eval()


def assert_same_logits(ours: GPT, theirs, vocab=300, T=40):
    idx = torch.randint(vocab, (3, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(idx), theirs.eval()(idx).logits, atol=1e-4, rtol=0)


def test_import_hf_gives_the_same_logits(tmp_path):
    theirs = hf_tiny(tmp_path)
    ours = from_pretrained(tmp_path, dropout=0.0)
    assert ours.config == GPTConfig(vocab_size=300, block_size=64, n_layer=2, n_head=2, n_embd=32)
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert_same_logits(ours, theirs)


def test_import_hf_needs_no_transformers(tmp_path):
    hf_tiny(tmp_path)
    code = (
        "import sys; sys.modules['transformers'] = None; "  # any import of it now fails
        "from model import from_pretrained; m = from_pretrained(sys.argv[1]); print(m.config.n_layer)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"


@pytest.mark.parametrize("bias", [True, False])
def test_export_hf_gives_the_same_logits(tmp_path, bias):
    ours = tiny(bias=bias)
    tok = tmp_path / "tokenizer.json"
    tok.write_text("{}")
    save_checkpoint(tmp_path / "ck", ours, {"eos_token_id": 0, "bos_token_id": 0}, tokenizer_path=tok)
    out = export_hf(tmp_path / "ck", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["eos_token_id"] == 0 and config["n_positions"] == 64
    assert (out / "tokenizer.json").read_text() == "{}"
    theirs = transformers.GPT2LMHeadModel.from_pretrained(out)
    assert theirs.lm_head.weight.data_ptr() == theirs.transformer.wte.weight.data_ptr()
    assert_same_logits(ours, theirs)
    if bias:  # and back again
        assert_same_logits(from_pretrained(out), theirs)


def test_export_refuses_post_ln(tmp_path):
    save_checkpoint(tmp_path / "ck", tiny(norm_position="post"), {})
    with pytest.raises(ValueError, match="pre-LN only"):
        export_hf(tmp_path / "ck", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_verify_export(tmp_path):
    save_checkpoint(tmp_path / "ck", tiny(), {})
    assert verify_export(tmp_path / "ck", export_hf(tmp_path / "ck", tmp_path / "hf")) < 1e-4


def test_export_cli(tmp_path):
    save_checkpoint(tmp_path / "ck", tiny(), {"step": 3})
    cmd = [sys.executable, "-m", "model.hf", "export", str(tmp_path / "ck"), str(tmp_path / "hf")]
    ok = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "exported" in ok.stdout and (tmp_path / "hf" / "model.safetensors").is_file()

    cmd = [sys.executable, "-m", "model.hf", "export", str(tmp_path / "missing"), str(tmp_path / "hf2")]
    bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "missing" in bad.stderr and "not found" in bad.stderr
    assert not (tmp_path / "hf2").exists()
