"""The results page's goal verdicts are computed from the metrics, not written by hand."""

import json

from tasks.report import scaling_section, verdicts13


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_fine_tuning_and_few_shot_verdicts(tmp_path):
    m = tmp_path / "metrics"
    ft = {"sentiment": {"pretrain": {"lm0.5": {"test_acc": 0.995}}, "scratch": {"lm0.5": {"test_acc": 0.90}}},
          "entailment": {"pretrain": {"lm0.5": {"test_acc": 0.58}}, "scratch": {"lm0.5": {"test_acc": 0.54}}},
          "story_cloze": {"pretrain": {"lm0.5": {"test_acc": 0.60}}, "scratch": {"lm0.5": {"test_acc": 0.23}}}}
    write(m / "finetune.json", ft)
    k = lambda acc, **kw: {"acc": acc, "n": 200, "truncated": 0, **kw}  # noqa: E731
    write(m / "prompt_eval.json", {"pretrain": {
        "sentiment": {"k0": k(1.0), "k4": k(0.9, gain=-0.1, gain_ci95=0.05)},
        "entailment": {"k0": k(0.62), "k4": k(0.70, gain=0.08, gain_ci95=0.05)},
        "story_cloze": {"k0": k(0.40), "k4": k(0.42, gain=0.02, gain_ci95=0.06, truncated=3)}}})
    stats = tmp_path / "stats.json"
    write(stats, {"tasks": {"sentiment": {"difficulty": {"bow": 0.6, "chance": 0.5}},
                            "entailment": {"difficulty": {"bow": 0.49, "majority": 0.33}},
                            "story_cloze": {"difficulty": {"overlap": 0.45}}}})
    text = verdicts13(m, stats)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["sentiment"].endswith("| met |")  # 99.5% clears the bar by itself
    assert "| 58.0 | 62.0 | 49.0 | 54.0 | **NOT met** |" in rows["entailment"]  # below its zero-shot score
    assert "| 60.0 | 40.0 | 45.0 | 23.0 | met |" in rows["story_cloze"]
    assert "| 3 of 600 | met |" in text  # 0.5% of the k=4 contexts cut
    assert "| 1 of 3: entailment | **NOT met** |" in text  # one gain beyond its interval, of three


def test_scaling_section_reads_the_report(tmp_path):
    assert "not run" in scaling_section(tmp_path / "missing.md")
    doc = tmp_path / "scaling.md"
    doc.write_text("# Scaling\n\nGenerated ... stamp\n\n| size | layers |\n|---|---|\n| a | 1 |\n")
    out = scaling_section(doc)
    assert out.endswith("| size | layers |\n|---|---|\n| a | 1 |\n") and "Generated" not in out
