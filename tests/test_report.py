"""The results page's goal verdicts are computed from the metrics, not written by hand, and its
blocks land in the markdown files that hold them, links rewritten for the file's folder."""

import json

from tasks.report import (
    STAMP_END,
    fill_blocks,
    headline,
    page_tail,
    relink,
    scaling_goal,
    scaling_section,
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
    ft = {"sentiment": {"pretrain": {"lm0.5": {"test_acc": 0.995}}, "scratch": {"lm0.5": {"test_acc": 0.90}}},
          "entailment": {"pretrain": {"lm0.5": {"test_acc": 0.58}}, "scratch": {"lm0.5": {"test_acc": 0.54}}},
          "story_cloze": {"pretrain": {"lm0.5": {"test_acc": 0.60}}, "scratch": {"lm0.5": {"test_acc": 0.23}}}}
    write(m / "finetune.json", ft)
    k = lambda acc, chance=None, **kw: {"acc": acc, "n": 200, "truncated": 0, **({"chance": chance} if chance is not None else {}), **kw}  # noqa: E731
    write(m / "prompt_eval.json", {"pretrain": {
        "sentiment": {"k0": k(1.0, 0.5), "k4": k(0.9, gain=-0.1, gain_ci95=0.05)},
        "entailment": {"k0": k(0.62, 1 / 3), "k4": k(0.70, gain=0.08, gain_ci95=0.05)},
        "story_cloze": {"k0": k(0.27, 0.25), "k4": k(0.42, gain=0.02, gain_ci95=0.06, truncated=3)}}})
    stats = tmp_path / "stats.json"
    write(stats, {"tasks": {"sentiment": {"difficulty": {"bow": 0.6, "chance": 0.5}},
                            "entailment": {"difficulty": {"bow": 0.49, "majority": 0.33}},
                            "story_cloze": {"difficulty": {"overlap": 0.45}}}})
    return m, stats


def rows_of(text):
    return {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}


def test_fine_tuning_and_prompting_verdicts(tmp_path):
    m, stats = gpt_metrics(tmp_path)
    rows = rows_of(verdicts_gpt1(m, stats))
    assert rows["sentiment"].endswith("| met |")  # 99.5% clears the bar by itself
    assert "| 58.0 | 62.0 | 49.0 | 54.0 | **NOT met** |" in rows["entailment"]  # below its zero-shot score
    assert "| 60.0 | 27.0 | 45.0 | 23.0 | met |" in rows["story_cloze"]
    text = verdicts_prompting(m)
    assert "| 3 of 600 | met |" in text  # 0.5% of the k=4 contexts cut
    assert "| 1 of 3: entailment | **NOT met** |" in text  # one gain beyond its interval, of three
    # story cloze: 0.27 is within 1.96·sqrt(0.25·0.75/200) = 0.06 of its chance 0.25
    assert "| 2 of 3; not: story_cloze | met |" in text


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
    m, stats = gpt_metrics(tmp_path)
    text = headline(m, stats, scaling_doc(tmp_path / "scaling.md", [0.01, 0.02]))
    rows = [line for line in text.splitlines() if line.startswith("| [")]
    assert len(rows) == 12
    by_claim = {r.split("](")[0][3:]: r for r in rows}
    assert by_claim["Pre-training helps fine-tuning"].endswith("| GPT-1 | 2 of 3 tasks beat zero-shot, a word baseline and scratch by "
                                                            "3 points; mean +16.8 points over scratch | **NOT met** |")
    assert "(RESULTS.md#goals-of-gpt-1-fine-tuning)" in by_claim["Pre-training helps fine-tuning"]
    assert by_claim["Few-shot beats zero-shot"].endswith("| beyond noise on 1 of 3: entailment | **NOT met** |")
    assert by_claim["In-context learning grows with model size"].endswith("| met |")
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
