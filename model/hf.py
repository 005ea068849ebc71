"""Hugging Face GPT-2 interop: import (via `model.from_pretrained`) and export of our checkpoints.

HF GPT-2 stores attention/MLP weights as `Conv1D` (in, out), the transpose of nn.Linear, and is
always pre-LN with biases, so only pre-LN models export. Importing needs only safetensors and
config.json; `transformers` is imported lazily by `verify_export`, the one helper that runs it.

    python -m model.hf export <checkpoint> <out_dir> [--verify]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from model.checkpoint import (
    TIED,
    TOKENIZER,
    WEIGHTS,
    CheckpointError,
    atomic_folder,
    load_checkpoint,
    weights_of,
)
from model.gpt import GPTConfig

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older HF checkpoints
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # the same tanh-approximated GELU


def config_from_hf(raw: dict, folder: Path) -> GPTConfig:
    """GPTConfig from an HF GPT-2 config.json; refuses variants our GPT does not compute."""
    n_embd = raw.get("n_embd", 768)
    unsupported = {
        "activation_function": (raw.get("activation_function", "gelu_new"), ACTIVATIONS),
        "n_inner": (raw.get("n_inner"), (None, 4 * n_embd)),
        "scale_attn_weights": (raw.get("scale_attn_weights", True), (True,)),
        "scale_attn_by_inverse_layer_idx": (raw.get("scale_attn_by_inverse_layer_idx", False), (False,)),
        "add_cross_attention": (raw.get("add_cross_attention", False), (False,)),
    }
    for key, (value, ok) in unsupported.items():
        if value not in ok:
            raise CheckpointError(f"checkpoint {folder}: config.json {key}={value!r} is not supported")
    try:
        return GPTConfig(
            vocab_size=raw.get("vocab_size", 50257),
            block_size=raw.get("n_positions", raw.get("n_ctx", 1024)),
            n_layer=raw.get("n_layer", 12),
            n_head=raw.get("n_head", 12),
            n_embd=n_embd,
            dropout=raw.get("resid_pdrop", 0.1),
            bias=True,
            norm_position="pre",
            layer_norm_epsilon=raw.get("layer_norm_epsilon", 1e-5),
        )
    except ValueError as e:
        raise CheckpointError(f"checkpoint {folder}: config.json is invalid ({e})") from None


def state_dict_from_hf(tensors: dict[str, torch.Tensor], folder: Path) -> dict[str, torch.Tensor]:
    """HF GPT-2 tensor names/layout -> ours: `transformer.` prefix, Conv1D weights transposed."""
    out = {}
    for name, t in tensors.items():
        if name.endswith(HF_BUFFERS):
            continue
        if name == TIED:  # only tied GPT-2 heads are supported; the tie makes it redundant
            wte = tensors.get("transformer.wte.weight", tensors.get("wte.weight"))
            if wte is None or not torch.equal(t, wte):
                raise CheckpointError(f"checkpoint {folder}: {WEIGHTS} has an lm_head not tied to wte")
            continue
        name = name if name.startswith("transformer.") else "transformer." + name
        out[name] = t.t().contiguous() if name.endswith(CONV1D) else t
    return out


def state_dict_to_hf(tensors: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our tensors -> HF GPT-2 names/layout; biases we do not have (bias=False) are written as zeros."""
    out = {name: (t.t().contiguous() if name.endswith(CONV1D) else t) for name, t in tensors.items()}
    if not config.bias:
        C = config.n_embd
        sizes = {"ln_1": C, "ln_2": C, "attn.c_attn": 3 * C, "attn.c_proj": C, "mlp.c_fc": 4 * C, "mlp.c_proj": C}
        dtype = out["transformer.wte.weight"].dtype
        for i in range(config.n_layer):
            for layer, size in sizes.items():
                out[f"transformer.h.{i}.{layer}.bias"] = torch.zeros(size, dtype=dtype)
        out["transformer.ln_f.bias"] = torch.zeros(C, dtype=dtype)
    return out


def config_to_hf(config: GPTConfig, meta: dict) -> dict:
    """An HF GPT-2 config.json; bos/eos/pad ids come from meta's `bos_token_id` etc. when present."""
    hf = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "scale_attn_weights": True,
    }
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        hf[key] = meta.get(key)
    return hf


def export_hf(checkpoint_dir, out_dir) -> Path:
    """Write checkpoint `checkpoint_dir` as a folder `GPT2LMHeadModel.from_pretrained` loads (same logits)."""
    ckpt = load_checkpoint(checkpoint_dir)
    if ckpt.config.norm_position != "pre":
        raise ValueError(
            f"checkpoint {checkpoint_dir}: norm_position={ckpt.config.norm_position!r} cannot be exported; "
            "Hugging Face GPT-2 is pre-LN only"
        )
    if ckpt.config.pos_encoding != "learned":
        raise ValueError(f"checkpoint {checkpoint_dir}: pos_encoding={ckpt.config.pos_encoding!r} cannot be exported; "
                         "Hugging Face GPT-2 has learned position embeddings only")
    with atomic_folder(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(config_to_hf(ckpt.config, ckpt.meta), indent=2) + "\n")
        # no lm_head.weight: GPT-2 ties it to wte on load, exactly as HF's own save_pretrained does
        save_file(state_dict_to_hf(weights_of(ckpt.model), ckpt.config), tmp / WEIGHTS, metadata={"format": "pt"})
        if ckpt.tokenizer_path is not None:
            shutil.copyfile(ckpt.tokenizer_path, tmp / TOKENIZER)
    return Path(out_dir)


def verify_export(checkpoint_dir, hf_dir, *, seq_len: int = 32, seed: int = 0) -> float:
    """Max |logit difference| between our checkpoint and `transformers` on the exported folder (random ids)."""
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        raise RuntimeError("verifying an export needs `transformers` (pip install 'instructflow[hf]')") from None
    ours = load_checkpoint(checkpoint_dir).model.float().eval()
    theirs = GPT2LMHeadModel.from_pretrained(hf_dir).float().eval()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(ours.config.vocab_size, (2, min(seq_len, ours.config.block_size)), generator=g)
    with torch.no_grad():
        return (ours(idx) - theirs(idx).logits).abs().max().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.hf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="export a pre-LN checkpoint as a Hugging Face GPT-2 folder")
    export.add_argument("checkpoint", help="our checkpoint folder")
    export.add_argument("out_dir", help="folder to write (replaced atomically)")
    export.add_argument("--verify", action="store_true", help="load the result with transformers and compare logits")
    args = parser.parse_args(argv)
    try:
        out = export_hf(args.checkpoint, args.out_dir)
        print(f"exported {args.checkpoint} -> {out}")
        if args.verify:
            diff = verify_export(args.checkpoint, out)
            print(f"max |logit difference| vs transformers: {diff:.2e}")
            if diff > 1e-4:
                print(f"error: exported logits differ by {diff:.2e} (> 1e-4)", file=sys.stderr)
                sys.exit(1)
    except (CheckpointError, ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
