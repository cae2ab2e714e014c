"""The README stays a guide that is true: its two set-up commands exist, it stays short, its
links lead to pages and anchors that exist, and the presets it names exist. The reference
tables live in docs/ and are checked by tests/test_docs.py; every code block of both is run by
tests/test_docs_run.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = {
    p.relative_to(ROOT).as_posix(): p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))
}


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    return {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


def test_readme_gives_the_two_commands_and_they_exist() -> None:
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^bash (\S+)", quick, re.MULTILINE)
    assert commands[:2] == ["scripts/up.sh", "scripts/test.sh"]
    for script in commands:
        assert (ROOT / script).is_file()


def test_readme_is_a_guide_of_at_most_250_lines() -> None:
    assert len(README.splitlines()) <= 250
    sections = re.findall(r"^## (.+)$", README, re.MULTILINE)
    assert sections[:2] == ["Quick start", "Your own data: from a CSV file to scored rows"]
    assert {"Console", "Python", "Where next"} <= set(sections)


@pytest.mark.parametrize("source", ["README.md", *PAGES])
def test_links_lead_to_files_and_headings_that_exist(source: str) -> None:
    text = README if source == "README.md" else PAGES[source]
    base = (ROOT / source).parent
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = (base / path).resolve() if path else (ROOT / source)
        assert file.exists(), f"{source}: link to missing {target}"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file.read_text()), f"{source}: no heading for {target}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = set(re.findall(r"\]\((docs/[^)#]+)", README))
    assert linked == set(PAGES), sorted(set(PAGES) ^ linked)


def test_presets_named_in_the_docs_exist() -> None:
    try:
        from training.presets import PRESETS
    except ModuleNotFoundError as exc:
        pytest.skip(f"training presets not built yet ({exc.name})")
    from training.recipes import AUTO

    known = {*PRESETS, AUTO}  # auto: the recipe chosen from the data
    named = set(re.findall(r"--preset (\w+)", README + "".join(PAGES.values())))
    assert "demo" in named
    assert named <= known, f"unknown presets in the docs: {sorted(named - known)}"
