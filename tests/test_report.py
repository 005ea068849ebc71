"""The results page's goal verdicts are computed from the metrics, not written by hand, and its
blocks land in the markdown files that hold them, links rewritten for the file's folder."""

import json

from tasks.report import (
    STAMP_END,
    fill_blocks,
    finetune_goals,
    headline,
    page_tail,
    relink,
    rlhf_goals,
    scaling_goal,
    scaling_section,
    seeds_section,
    slug,
    stale,
    verdicts_gpt1,
    verdicts_prompting,
)


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def gpt_metrics(tmp_path):
    """Fine-tuning and prompt-eval metrics of three tasks, and their word baselines."""
    m = tmp_path / "metrics"
    vs = lambda acc, diff, ci95, n=600: {"acc": acc, "diff": diff, "ci95": ci95, "n": n}  # noqa: E731
    ft = {"sentiment": {"pretrain": {"lm0.5": {"test_acc": 0.995}}, "scratch": {"lm0.5": {"test_acc": 0.90}},
                        "vs": {"zero-shot": vs(0.995, 0.0, 0.0), "baseline": vs(0.6, 0.395, 0.07), "scratch": vs(0.9, 0.095, 0.025)}},
          "entailment": {"pretrain": {"lm0.5": {"test_acc": 0.58}}, "scratch": {"lm0.5": {"test_acc": 0.54}},
                         "vs": {"zero-shot": vs(0.55, 0.03, 0.045), "baseline": vs(0.49, 0.09, 0.05), "scratch": vs(0.54, 0.04, 0.035)}},
          "story_cloze": {"pretrain": {"lm0.5": {"test_acc": 0.60}}, "scratch": {"lm0.5": {"test_acc": 0.23}},
                          "vs": {"zero-shot": vs(0.27, 0.33, 0.05), "baseline": vs(0.45, 0.15, 0.06), "scratch": vs(0.23, 0.37, 0.05)}},
          "my_nli": {"pretrain": {"lm0.5": {"test_acc": 0.70}}, "scratch": {"lm0.5": {"test_acc": 0.60}},  # a user task: no template
                     "vs": {"baseline": vs(0.5, 0.2, 0.05), "scratch": vs(0.6, 0.1, 0.05)}}}
    write(m / "finetune.json", ft)
    k = lambda acc, chance=None, **kw: {"acc": acc, "n": 200, "truncated": 0, **({"chance": chance} if chance is not None else {}), **kw}  # noqa: E731
    write(m / "prompt_eval.json", {"pretrain": {
        "sentiment": {"k0": k(1.0, 0.5), "k4": k(0.9, gain=-0.1, gain_ci95=0.05)},
        "entailment": {"k0": k(0.62, 1 / 3), "k4": k(0.70, gain=0.08, gain_ci95=0.05)},
        "story_cloze": {"k0": k(0.27, 0.25), "k4": k(0.42, gain=0.02, gain_ci95=0.06, truncated=3)},
        "word_map": {"k0": k(0.25, 0.25), "k4": k(0.60, gain=0.35, gain_ci95=0.08)}}})  # in-context only: at chance zero-shot
    return m


def rows_of(text):
    return {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}


def test_fine_tuning_and_prompting_verdicts(tmp_path):
    m = gpt_metrics(tmp_path)
    rows = rows_of(verdicts_gpt1(m))
    # zero-shot at the ceiling too: nothing left to beat; the others clear their intervals
    assert rows["sentiment"].endswith("| 99.5 | 99.5 (+0.0 ± 0.0, ceiling) | 60.0 (+39.5 ± 7.0) | 90.0 (+9.5 ± 2.5) | met |")
    # 3 points above zero-shot, but within its ±4.5: not beyond noise, so not met
    assert rows["entailment"].endswith("| 58.0 | 55.0 (+3.0 ± 4.5, not cleared) | 49.0 (+9.0 ± 5.0) | 54.0 (+4.0 ± 3.5) | **NOT met** |")
    assert rows["story_cloze"].endswith("| 60.0 | 27.0 (+33.0 ± 5.0) | 45.0 (+15.0 ± 6.0) | 23.0 (+37.0 ± 5.0) | met |")
    assert rows["my_nli"].endswith("| 70.0 | – | 50.0 (+20.0 ± 5.0) | 60.0 (+10.0 ± 5.0) | met |")  # no zero-shot bar to clear
    text = verdicts_prompting(m)
    assert "| 3 of 800 | met |" in text  # 0.4% of the k=4 contexts cut
    assert "| 2 of 4: entailment, word_map | **NOT met** |" in text  # two gains beyond their intervals, of four: not most
    assert "| 1 of 1 | met |" in text  # the in-context-only task, judged apart
    # story cloze: 0.27 is within 1.96·sqrt(0.25·0.75/200) = 0.06 of its chance 0.25; word_map is left out (in-context only)
    assert "| 2 of 3; not: story_cloze | met |" in text


def test_fine_tuning_verdicts_need_the_paired_comparison(tmp_path):
    """A bar is cleared beyond its interval, or at the ceiling only when both are there; metrics without
    the comparison (finetune_report not rerun) are not judged; a missing scratch run is not met."""
    m = tmp_path / "metrics"
    bar = lambda acc, diff, ci95: {"acc": acc, "diff": diff, "ci95": ci95, "n": 600}  # noqa: E731
    write(m / "finetune.json", {
        "old": {"pretrain": {"lm0.5": {"test_acc": 0.9}}},
        "near_ceiling": {"pretrain": {"lm0.5": {"test_acc": 0.995}}, "vs": {  # 99.5 vs 98.5: +1.0 within ±1.2, bar below 99%
            "zero-shot": bar(0.985, 0.01, 0.012), "baseline": bar(0.5, 0.495, 0.04), "scratch": bar(0.9, 0.095, 0.03)}},
        "no_scratch": {"pretrain": {"lm0.5": {"test_acc": 0.8}}, "vs": {"baseline": bar(0.5, 0.3, 0.04)}}})
    goals = finetune_goals(m)
    assert goals["old"]["ok"] is None and goals["near_ceiling"]["ok"] is False and goals["no_scratch"]["ok"] is False
    rows = rows_of(verdicts_gpt1(m))
    assert rows["old"].endswith("| 90.0 | – | – | – | – |")
    assert "98.5 (+1.0 ± 1.2, not cleared)" in rows["near_ceiling"]
    claim = [line for line in headline(m, tmp_path / "none.md").splitlines() if "Pre-training helps" in line][0]
    assert claim.endswith("| 0 of 3 tasks beat zero-shot, a word baseline and scratch beyond the paired 95% interval; "
                          "mean +9.5 points over scratch (one pre-training run: `make gpt1-seeds` runs more) | – |")  # one task not judged: the claim is not judged


def test_scaling_section_reads_the_report(tmp_path):
    assert "not run" in scaling_section(tmp_path / "missing.md")
    doc = tmp_path / "scaling.md"
    doc.write_text("# Scaling\n\nGenerated ... stamp\n\n| size | layers |\n|---|---|\n| a | 1 |\n")
    out = scaling_section(doc)
    assert out.endswith("| size | layers |\n|---|---|\n| a | 1 |\n") and "Generated" not in out


def scaling_doc(path, gains):
    head = "| size | non-embedding params | mean gain k=8 − k=0 | tasks |\n|---|---:|---:|---:|\n"
    rows = "".join(f"| s{i} | {i}.0M | {g:+.3f} | 1/10 |\n" for i, g in enumerate(gains))
    path.write_text(f"# Scaling\n\n{head}{rows}\nBy task:\n\n| task | size | k=0 |\n|---|---|---:|\n| a | s0 | 0.5 |\n")
    return path


def test_scaling_goal_asks_the_gain_to_grow_with_every_size(tmp_path):
    up = scaling_goal(scaling_doc(tmp_path / "up.md", [0.01, 0.02, 0.05]))
    assert up.ok and up.measured == "+0.010 / +0.020 / +0.050 at 0.0M / 1.0M / 2.0M non-embedding parameters"
    assert scaling_goal(scaling_doc(tmp_path / "dip.md", [0.026, 0.042, 0.009])).ok is False
    assert scaling_goal(tmp_path / "missing.md") is None


def test_headline_has_one_row_per_claim_linked_to_its_section(tmp_path):
    m = gpt_metrics(tmp_path)
    text = headline(m, scaling_doc(tmp_path / "scaling.md", [0.01, 0.02]))
    rows = [line for line in text.splitlines() if line.startswith("| [")]
    assert len(rows) == 13
    by_claim = {r.split("](")[0][3:]: r for r in rows}
    assert by_claim["Pre-training helps fine-tuning"].endswith("| GPT-1 | 3 of 4 tasks beat zero-shot, a word baseline and scratch beyond "
                                                            "the paired 95% interval; mean +15.1 points over scratch (one pre-training "
                                                            "run: `make gpt1-seeds` runs more) | **NOT met** |")
    assert "(RESULTS.md#goals-of-gpt-1-fine-tuning)" in by_claim["Pre-training helps fine-tuning"]
    assert by_claim["Few-shot beats zero-shot"].endswith("| beyond noise on 2 of 4: entailment, word_map | **NOT met** |")
    assert by_claim["In-context learning grows with model size"].endswith("| met |")
    assert by_claim["A task is learned from the examples alone"].endswith("| in-context-only tasks beyond noise: 1 of 1 | met |")
    assert by_claim["The auxiliary LM loss helps fine-tuning"].endswith("| – |")  # the default grid has no λ = 0
    # no InstructGPT metrics: those claims are not run, not failed
    assert by_claim["SFT follows instructions (oracle ≥ 0.80)"].endswith("| not run | – |")
    assert by_claim["The pre-training mix (ptx) cuts the alignment tax"].endswith("| not run | – |")


def test_slug_is_githubs_anchor():
    assert slug("Goals of InstructGPT step 3 (judged by the oracle)") == "goals-of-instructgpt-step-3-judged-by-the-oracle"
    assert slug("Over-optimisation (Gao et al. 2022): best-of-n and RL against √KL") == "over-optimisation-gao-et-al-2022-best-of-n-and-rl-against-kl"
    assert slug("Fine-tuning (GPT-1 §3.2-3.3)") == "fine-tuning-gpt-1-32-33"
    assert slug("Measured: the pre-trained tiny model (`make pipeline`)") == "measured-the-pre-trained-tiny-model-make-pipeline"


def test_blocks_are_filled_with_links_seen_from_the_file():
    secs = {"a": "![plot](metrics/p.png) [page](docs/scaling.md#top) [web](https://x.org/a) [here](#b)\n"}
    doc = "intro\n<!-- results:a -->\nold\n<!-- /results:a -->\n<!-- results:zz -->\nkept\n<!-- /results:zz -->\n"
    root = fill_blocks(doc, secs)
    assert "[RESULTS.md](RESULTS.md)" in root and "![plot](metrics/p.png) [page](docs/scaling.md#top)" in root and "old" not in root
    assert "<!-- results:zz -->\nkept\n" in root  # a block no section fills is left alone
    nested = fill_blocks(doc, secs, "docs")
    assert "[RESULTS.md](../RESULTS.md)" in nested
    assert "![plot](../metrics/p.png) [page](scaling.md#top) [web](https://x.org/a) [here](#b)" in nested
    assert relink("[x](a/b.md)", "a/c") == "[x](../b.md)"


def test_stale_names_every_difference(tmp_path):
    secs = {"pretrain": "one\n", "sft": "two\n"}
    out = tmp_path / "RESULTS.md"
    out.write_text(f"# Results\n\nany stamp\n{STAMP_END}{page_tail(secs)}")
    (tmp_path / "docs").mkdir()
    readme, page = tmp_path / "README.md", tmp_path / "docs" / "p.md"
    readme.write_text(fill_blocks("<!-- results:pretrain -->\n<!-- /results:pretrain -->\n", secs))
    page.write_text(fill_blocks("x\n<!-- results:sft -->\n<!-- /results:sft -->\n", secs, "docs"))
    assert stale(secs, out, [readme, page]) == []
    assert stale({"pretrain": "one\n", "sft": "changed\n"}, out, [readme]) == [f"{out}: differs from metrics/"]  # README's block pretrain is current
    page.write_text(page.read_text().replace("two", "three"))
    assert stale(secs, out, [page]) == [f"{page}: results blocks differ from metrics/"]
    page.write_text("<!-- results:gone -->\nx\n<!-- /results:gone -->\n<!-- results:sft -->\n")
    problems = stale(secs, out, [page])
    assert any("results:sft has no closing marker" in p for p in problems)
    assert any("results:gone is no section" in p for p in problems)


def rlhf_metrics(tmp_path, seeds_sft: float, seeds_ptx: float = 0.55):
    """evaluate.json of one pipeline seed, and a `make rlhf-seeds` record whose SFT scored `seeds_sft`
    and whose PPO-ptx at the pipeline's seed (its first) scored `seeds_ptx` sampled."""
    m = tmp_path / "metrics"
    pol = lambda gain, ci, win: {"sampled_oracle_score_diff_vs_sft": gain, "sampled_oracle_score_diff_vs_sft_ci": ci,  # noqa: E731
                                 "decisive_win_rate_vs_sft": win, "oracle_score_diff_vs_sft": 0.02, "oracle_score_diff_vs_sft_ci": 0.01}
    write(m / "evaluate.json", {"sft": {"sampled_oracle_score": 0.54}, "ppo_ptx": pol(0.01, 0.02, 0.55) | {"sampled_oracle_score": 0.55},
                                "ppo_gold": pol(0.2, 0.02, 0.9), "oracle_best_of_16": {"oracle_score": 0.82}})
    v = {"sft_sampled": seeds_sft, "sampled_gain": {"gain": 0.2, "ci": 0.01},
         "greedy_wins": {"decisive_win_rate": 0.9, "greedy_diff": 0.05, "greedy_diff_ci": 0.01},
         "recovers_gold": {"gain": 0.2, "gold_gain": 0.25}}
    write(m / "rlhf_seeds.json", {"seeds": [1, 2, 3], "verdicts": v, "per_seed": {"1": {"ppo_ptx": {"sampled": seeds_ptx}}}})
    (m / "rlhf_seeds.md").write_text("| method | seeds |\n|---|---|\n| ppo_ptx | 3 |\n")
    return m


def test_seeds_of_another_sft_policy_are_not_the_verdict(tmp_path):
    """`make rlhf-seeds` pooled over the SFT policy of an earlier pipeline run must not judge the
    current one: the goals fall back to the pipeline's own seed and the seeds table says it is stale."""
    current = rlhf_goals(rlhf_metrics(tmp_path / "a", seeds_sft=0.54))
    assert "3 seeds pooled" in current["sampled_gain"].goal and current["sampled_gain"].measured.startswith("gain +0.200")
    assert current["greedy_wins"].ok is True
    assert "Stale" not in seeds_section(tmp_path / "a" / "metrics")
    m = rlhf_metrics(tmp_path / "b", seeds_sft=0.69)
    old = rlhf_goals(m)
    assert "other policies" in old["sampled_gain"].goal and old["sampled_gain"].measured.startswith("gain +0.010 ± 0.020")
    assert old["greedy_wins"].ok is False and old["recovers_gold"].ok is False  # 0.55 decisive wins; +0.01 vs gold +0.2
    assert seeds_section(m).startswith("**Stale**") and "| ppo_ptx | 3 |" in seeds_section(m)
    assert "another SFT policy" in seeds_section(m)
    # the same SFT policy, but the pipeline's PPO-ptx is not the one the seeds pooled (its code or reward model changed)
    m = rlhf_metrics(tmp_path / "c", seeds_sft=0.54, seeds_ptx=0.57)
    assert "other policies" in rlhf_goals(m)["sampled_gain"].goal
    assert "another ppo_ptx policy: its sampled score at seed 1 0.57 vs 0.55" in seeds_section(m)


def test_alignment_tax_is_met_only_beyond_its_paired_interval(tmp_path):
    """PPO-ptx's smaller tax than PPO's is judged by the paired comparison evaluate writes
    (`alignment_tax`), never by the two point values alone."""
    def goals(pair):
        m = tmp_path / str(len(list(tmp_path.iterdir()))) / "metrics"
        pol = {"pretrain_val_loss": 1.5, "prompt_eval_acc": 0.40}
        ev = {"sft": {}, "pretrain_few_shot": {"pretrain_val_loss": 1.0, "prompt_eval_acc": 0.5},
              "ppo": {"pretrain_val_loss": 3.0, "prompt_eval_acc": 0.30}, "ppo_ptx": pol}
        if pair is not None:
            ev["alignment_tax"] = {"ppo_ptx_vs_ppo": pair}
        write(m / "evaluate.json", ev)
        g = rlhf_goals(m)
        return g["tax_loss"], g["tax_prompt_eval"]

    loss, acc = goals(None)  # point values favour PPO-ptx, but no interval: not judged
    assert loss.ok is None and acc.ok is None and "no paired interval" in loss.measured
    loss, acc = goals({"pretrain_val_loss_diff": -1.5, "pretrain_val_loss_diff_ci": 0.2,
                       "prompt_eval_acc_diff": 0.10, "prompt_eval_acc_diff_ci": 0.04})
    assert loss.ok is True and acc.ok is True and "PPO-ptx − PPO -1.500 ± 0.200" in loss.measured
    loss, acc = goals({"pretrain_val_loss_diff": -0.1, "pretrain_val_loss_diff_ci": 0.2,  # within the interval
                       "prompt_eval_acc_diff": 0.10, "prompt_eval_acc_diff_ci": 0.12})
    assert loss.ok is False and acc.ok is False
    row = [line for line in headline(tmp_path / "0" / "metrics").splitlines() if "cuts the alignment tax" in line]
    assert len(row) == 1 and row[0].endswith("| – |")  # the headline: not judged without the interval


def test_rm_raises_the_oracle_only_beyond_the_paired_interval(tmp_path):
    """"Optimising the reward model raises the true score": the RM score up and the oracle score's
    paired difference from SFT (rl_eval, greedy) above zero beyond its 95% interval."""
    def goal(diff, ci):
        m = tmp_path / f"{diff}_{ci}" / "metrics"
        write(m / "evaluate.json", {"sft": {"rm_score": 0.1}, "ppo": {"rm_score": 0.9, "oracle_score_diff_vs_sft": diff,
                                                                      "oracle_score_diff_vs_sft_ci": ci}})
        return rlhf_goals(m)["rm_oracle_ppo"]

    assert goal(0.002, 0.03).ok is False  # a rise within the noise is no rise
    g = goal(0.05, 0.02)
    assert g.ok is True and g.measured == "RM +0.800, oracle +0.050 ± 0.020"
    assert goal(0.05, None).ok is None
