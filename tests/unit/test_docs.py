"""The README and docs/ stay true to the repository: links, settings, commands.

A newcomer follows the README's links and runs its commands; a moved file, a renamed heading,
a new setting nobody documented or a Makefile target that went away should fail here, not in
their shell.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devtools.stack import REPO_ROOT
from gateway.settings import GatewaySettings

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

# [text](target) outside code spans; images too. Targets with a scheme are not checked.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    """The page without fenced blocks and code spans, where brackets are not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = _CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text())
    return {_anchor(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def relative_links(page: Path) -> list[str]:
    return [t for t in _LINK.findall(_prose(page.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in relative_links(page):
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in _anchors(resolved):
            broken.append(f"{target}: no heading #{fragment}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_points_at_an_existing_file_and_heading(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_checker_sees_a_broken_link_and_a_broken_anchor(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A page\n\n## Some `code` heading, here\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#some-code-heading-here) [web](https://example.com)\n"
        "[gone](missing.md) [bad anchor](there.md#nowhere) `[not a link](nowhere.md)`\n"
        "```\n[in a fence](fenced.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md: no such file", "there.md#nowhere: no heading #nowhere"]


def test_every_setting_is_in_the_settings_page() -> None:
    """docs/settings.md promises every setting: each field of the settings classes is there."""
    page = (DOCS / "settings.md").read_text()
    missing = [name.upper() for name in GatewaySettings.model_fields if f"`{name.upper()}`" not in page]
    assert missing == []


def test_the_readme_commands_name_what_exists() -> None:
    """`make X` targets are in the Makefile; `python -m X` modules of ours are files."""
    readme = README.read_text()
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    code = " ".join(_FENCE.findall(readme) + _CODE_SPAN.findall(readme))
    used = set(re.findall(r"\bmake ([\w-]+)", code))
    assert used and used <= targets, used - targets
    ours = re.compile(r"python3? -m ((?:benchmarks|devtools|gateway|jewel_dagster)[\w.]*)")
    for page in PAGES:
        for module in ours.findall(page.read_text()):
            path = REPO_ROOT / module.replace(".", "/")
            assert path.with_suffix(".py").exists() or (path / "__main__.py").exists(), f"{page.name}: {module}"


def test_the_readme_stays_a_front_door() -> None:
    """What a newcomer reads in ten minutes; depth belongs in docs/."""
    assert len(README.read_text().splitlines()) <= 250


def test_the_readme_deploys_with_the_commands_the_deploy_test_runs() -> None:
    """Issue 31: the README's Deployment commands are the guide's, word for word, and the guide's
    are what `make deploy-test` runs (deploy/deploy_test.py reads them from it)."""
    from devtools.deploy_docs import doc_commands

    guide = DOCS / "deployment.md"
    expected = doc_commands(guide, "One machine") + doc_commands(guide, "Scale-out")
    assert doc_commands(README, "Deployment") == expected
