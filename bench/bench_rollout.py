"""PPO rollouts: sampling tokens/s with the KV cache vs recomputing the whole context, at the PPO
batch size, and the time split of one PPO update (rollout, scoring, training).

    .venv/bin/python bench/bench_rollout.py [--episodes 64] [--new 40] [--rounds 3] [--threads 2]

Sampling: `--episodes` prompts at once (left-padded, lengths drawn like rl_prompts: 12..88
tokens), temperature 1, exactly `--new` new tokens (no EOS, so both contenders do the same work),
the same generator seed for both; also checks that both sample the same tokens. The model is the
SFT checkpoint (`--sft`, default models/sft) when it exists, else a random GPT of the default
shape (4 layers, 128 wide, vocab 1235, block 128).

The update split runs `model.ppo`, the stage's own algorithm, one update of the stage's default shape
(`--episodes` per update, conf/ppo.yaml's epochs and minibatch), on `rl_prompts.jsonl` with the SFT
policy when both exist (responses stop at EOS, as in the stage), once per value model: separate
(a second network, as `value: rm`) and shared (a head on the policy trunk). Rounds alternate
between contenders so a busy machine slows each alike; times are medians.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.generate import generate
from model.gpt import GPT, GPTConfig
from model.load import from_pretrained
from model.reward import RewardModel  # noqa: E402

SHAPE = GPTConfig(vocab_size=1235, block_size=128, n_layer=4, n_head=4, n_embd=128)


def policy_and_prompts(sft: Path, episodes: int, g: torch.Generator):
    """(model, tokenizer or None, prompt token lists, prompt rows or None)."""
    rows_path = Path("data/raw/instructions/rl_prompts.jsonl")
    if (sft / "model.safetensors").is_file() and rows_path.is_file():
        from model.instruct import encode_prompt
        from model.tokenizer import Tokenizer
        from tasks.common import read_jsonl

        model = from_pretrained(sft).eval()
        tok = Tokenizer.load(sft / "tokenizer.json")
        rows = read_jsonl(rows_path)[:episodes]
        return model, tok, [encode_prompt(tok, r["prompt"], 88)[0] for r in rows], rows
    torch.manual_seed(0)
    model = GPT(SHAPE).eval()
    lens = torch.randint(12, 89, (episodes,), generator=g).tolist()
    return model, None, [torch.randint(2, SHAPE.vocab_size, (n,), generator=g).tolist() for n in lens], None


def bench_sampling(model, prompts, new: int, rounds: int) -> None:
    contenders = {"KV cache": True, "no cache (recompute)": False}
    seconds = {name: [] for name in contenders}
    tokens = {}
    generate(model, [p[:4] for p in prompts[:2]], 2)  # warm-up
    for _ in range(rounds):
        for name, cache in contenders.items():
            g = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            tokens[name] = generate(model, prompts, new, temperature=1.0, use_cache=cache, generator=g).tokens
            seconds[name].append(time.perf_counter() - t0)
    B = len(prompts)
    ref = "KV cache"
    print(f"\nsampling: {B} prompts ({min(map(len, prompts))}-{max(map(len, prompts))} tokens, left-padded) + {new} new "
          f"tokens at temperature 1")
    print(f"{'contender':<22}{'tokens/s (median)':>18}{'cache / this':>14}{'tokens/s (best)':>17}  same tokens")
    for name in contenders:
        med, best = statistics.median(seconds[name]), min(seconds[name])
        same = sum(a == b for a, b in zip(tokens[name], tokens[ref]))
        print(f"{name:<22}{B * new / med:>18,.0f}{med / statistics.median(seconds[ref]):>13.2f}x{B * new / best:>17,.0f}  {same}/{B} rows")


def bench_update(model, tok, prompts, rows, episodes: int, new: int, rounds: int) -> None:
    from omegaconf import OmegaConf

    from model import ppo
    from model.instruct import respond
    from model.train import generator
    from tasks.config import compose

    setups = {}
    for value in ("separate", "shared"):
        overrides = [f"ppo.value={'shared' if value == 'shared' else 'rm'}", f"ppo.episodes={episodes}", f"ppo.max_new_tokens={new}",
                     "ppo.no_eos_penalty=0.0"]
        pc = OmegaConf.to_object(compose(overrides).ppo)  # the stage's defaults (conf/ppo.yaml) but for these
        policy = GPT(model.config)
        policy.load_state_dict(model.state_dict())
        ref = GPT(model.config)
        ref.load_state_dict(model.state_dict())
        critic = RewardModel(policy) if value == "shared" else RewardModel(GPT(model.config))
        learner = ppo.Learner(policy, critic, *ppo.optimizers(policy, critic, pc, "cpu"), shared=value == "shared")
        setups[value] = (pc, policy, ref, RewardModel(ref).eval(), critic, learner)
    times = {v: {"rollout": [], "scoring": [], "training": [], "len": []} for v in setups}
    for r in range(rounds):  # alternate, so a busy machine slows each alike
        for value, (pc, policy, ref, rm, critic, learner) in setups.items():
            g = generator(0, ppo.SAMPLE, r)
            t0 = time.perf_counter()
            if tok is not None:
                out = respond(policy, tok, prompts, new, temperature=1.0, batch_size=episodes, generator=g)
            else:  # a random model never stops: exactly `new` tokens
                gen = generate(policy, prompts, new, temperature=1.0, generator=g)
                out = [{"tokens": t, "eos": False, "text": ""} for t in gen.tokens]
            batch = ppo.make_batch(rows or [{"id": str(i)} for i in range(len(prompts))], prompts, out, 1, "cpu")
            t1 = time.perf_counter()
            policy.eval()
            with torch.no_grad():
                score = rm.normalized(batch.ids, batch.lengths, batch.pos[:, 0] + 1)
            ppo.experience(batch, policy, ref, critic, score, pc, 0.05)
            t2 = time.perf_counter()
            ppo.train_update(learner, batch, pc, r, None)
            t3 = time.perf_counter()
            for k, v in zip(times[value], (t1 - t0, t2 - t1, t3 - t2, batch.mask.sum(1).float().mean().item())):
                times[value][k].append(v)
    pc = next(iter(setups.values()))[0]
    print(f"\none PPO update: {episodes} episodes, {pc.ppo_epochs} epochs x minibatches of {pc.minibatch}, responses up to "
          f"{new} tokens ({'SFT policy, rl_prompts' if tok is not None else 'random model, random prompts'}); medians")
    print(f"{'value model':<12}{'resp. len':>10}{'rollout s':>11}{'scoring s':>11}{'training s':>12}{'total s':>9}"
          f"{'rollout %':>11}{'scoring %':>11}{'training %':>12}")
    totals = {}
    for value, t in times.items():
        s = {k: statistics.median(v) for k, v in t.items()}
        totals[value] = total = s["rollout"] + s["scoring"] + s["training"]
        print(f"{value:<12}{s['len']:>10.1f}{s['rollout']:>11.2f}{s['scoring']:>11.2f}{s['training']:>12.2f}{total:>9.2f}"
              f"{100 * s['rollout'] / total:>10.0f}%{100 * s['scoring'] / total:>10.0f}%{100 * s['training'] / total:>11.0f}%")
    print(f"separate / shared, whole update: {totals['separate'] / totals['shared']:.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=64, help="prompts per rollout batch (the PPO batch size)")
    ap.add_argument("--new", type=int, default=40, help="new tokens per response (the response-length limit)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sft", type=Path, default=Path("models/sft"), help="policy checkpoint; a random GPT when missing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    model, tok, prompts, rows = policy_and_prompts(args.sft, args.episodes, g)
    print(f"{model.config.n_layer} layers x {model.config.n_embd} wide, vocab {model.config.vocab_size}, "
          f"{args.threads} threads, torch {torch.__version__}")
    bench_sampling(model, prompts, args.new, args.rounds)
    bench_update(model, tok, prompts, rows, args.episodes, args.new, args.rounds)


if __name__ == "__main__":
    main()
