"""The documentation stays true: generated reference pages are current, links resolve, the
README fits on one screen."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import stabcheck.diagnose  # noqa: F401  (registers every code)
from stabcheck.cli import cli
from stabcheck.explain import MARKDOWN_PAGES
from stabcheck.findings import REGISTRY
from stabcheck.thresholds import Thresholds

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
README_LIMIT = 12_000  # bytes: the README is the one screen; reference lives in docs/

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
ANCHOR = re.compile(r'<a id="([^"]+)"></a>')
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("page", sorted(MARKDOWN_PAGES))
def test_generated_page_is_current(page: str) -> None:
    result = CliRunner().invoke(cli, ["explain", "--markdown", page], catch_exceptions=False)
    assert result.exit_code == 0
    committed = (DOCS / f"{page}.md").read_text(encoding="utf-8")
    assert committed == result.stdout, (
        f"docs/{page}.md is out of date with the registry; regenerate it with: "
        f"python -m stabcheck explain --markdown {page} > docs/{page}.md")


def test_generated_pages_cover_every_code_and_threshold() -> None:
    findings, thresholds = MARKDOWN_PAGES["findings"](), MARKDOWN_PAGES["thresholds"]()
    assert [c for c in REGISTRY if f'<a id="{c.lower()}"></a>' not in findings] == []
    defaults = Thresholds()
    assert [n for n in Thresholds.model_fields
            if f'<a id="{n}"></a>`{n}` | ' not in thresholds
            or f" | {getattr(defaults, n)!r} | " not in thresholds] == []


def test_every_code_has_a_source_and_a_recommendation() -> None:
    for info in REGISTRY.values():
        assert info.source and info.recommendation and info.explanation, info.code
        for name in info.thresholds:
            assert name in Thresholds.model_fields, (info.code, name)


def test_readme_fits_on_one_screen() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, (
        f"README.md is {size} bytes (limit {README_LIMIT}): move reference material to docs/")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    text = FENCE.sub("", text)
    anchors, seen = set(ANCHOR.findall(text)), dict[str, int]()
    for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE):
        slug = _slug(heading)
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        missing_anchor = (anchor and resolved.suffix == ".md" and resolved.exists()
                          and anchor not in _anchors(resolved.read_text(encoding="utf-8")))
        if not resolved.exists() or missing_anchor:
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    assert _broken_links(page) == [], f"{page.relative_to(ROOT)}: links to nothing"


def test_link_checker_catches_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Exit codes\n", encoding="utf-8")
    page.write_text("[a](other.md#exit-codes) [b](missing.md) [c](other.md#nowhere) "
                    "[d](https://example.com/x.md)\n```\n[e](inside-a-fence.md)\n```\n",
                    encoding="utf-8")
    assert _broken_links(page) == ["missing.md", "other.md#nowhere"]
