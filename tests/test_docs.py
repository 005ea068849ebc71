"""The README and the pages of docs/ stay whole: every relative link lands on a file (and a heading),
every page is reachable from the README, every results block is one the report writes, in one
place, and up to date (the check of `python -m tasks.report --check`), and the README stays short
with the results in its first screen."""

import re
from collections import Counter
from pathlib import Path

from tasks.report import LINK, OPENING, TITLES, block_files, sections, slug, stale

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "RESULTS.md"]
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)  # a fenced code block


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code, where links and headings are meant."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file (a repeated heading gets -1, -2, ...)."""
    seen, out = Counter(), set()
    for mo in re.finditer(r"^#{1,6} +(.+?) *$", FENCE.sub("", path.read_text(encoding="utf-8")), re.MULTILINE):
        s = slug(mo.group(1))
        out.add(s if not seen[s] else f"{s}-{seen[s]}")
        seen[s] += 1
    return out


def relative_links(path: Path) -> list[tuple[str, Path, str]]:
    """(link, target file, anchor) of each relative link in the file; the target is the file itself for `#anchor`."""
    out = []
    for mo in LINK.finditer(prose(path.read_text(encoding="utf-8"))):
        url = mo.group(2)
        if re.match(r"[a-zA-Z][\w+.-]*:", url):  # http:, https:, mailto:
            continue
        target, _, anchor = url.partition("#")
        out.append((url, (path.parent / target).resolve() if target else path, anchor))
    return out


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for url, target, anchor in relative_links(page):
            if not target.exists():
                broken.append(f"{page.relative_to(ROOT)}: {url}: no such file")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target):
                broken.append(f"{page.relative_to(ROOT)}: {url}: no such heading in {target.relative_to(ROOT)}")
    assert broken == []


def test_the_link_check_finds_a_dead_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Top\n\n[ok](p.md#top) [gone](q.md) [bad anchor](#nowhere) `[code](x.md)`\n```\n[fenced](y.md)\n```\n")
    links = {url: (target.exists(), not anchor or anchor in anchors(target)) for url, target, anchor in relative_links(page)}
    assert links == {"p.md#top": (True, True), "q.md": (False, True), "#nowhere": (True, False)}


def test_every_docs_page_is_reachable_from_the_readme():
    reached, todo = {README}, [README]
    while todo:
        for _, target, _ in relative_links(todo.pop()):
            if target.suffix == ".md" and target.is_file() and target not in reached:
                reached.add(target)
                todo.append(target)
    assert [p.name for p in DOCS if p not in reached] == []


def test_results_blocks_are_the_reports_and_each_in_one_place():
    where = [(name, f.name) for f in block_files(README, ROOT / "docs") for name in OPENING.findall(f.read_text(encoding="utf-8"))]
    names = [name for name, _ in where]
    assert sorted(set(names) - set(TITLES)) == []  # a block the report does not write would never be refreshed
    assert [n for n, c in Counter(names).items() if c > 1] == []  # no table in two places
    assert ("headline", "README.md") in where


def test_results_blocks_are_up_to_date(monkeypatch):
    monkeypatch.chdir(ROOT)  # the report reads metrics/, docs/scaling.md and params.yaml from the repository root
    secs, files = sections(Path("metrics")), block_files(Path("README.md"), Path("docs"))
    assert stale(secs, Path("RESULTS.md"), files) == []  # everything the report reads is in git


def test_readme_is_short_with_results_in_the_first_screen():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200
    assert "<!-- results:headline -->" in lines[:60]
