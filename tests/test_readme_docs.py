"""The README and docs/ as a newcomer reads them: the README opens with the two commands (a real
sweep, the tests), every file they name exists in the repository, and nothing points at what a
clone does not have (issue threads, notes, ../shared)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["pip install uv && uv run lh execute examples/quick.yaml", "uv run pytest -n 2"]
    assert text.index("```bash") < text.index("\n## ")  # before any section


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_file_a_page_names_exists(page):
    text = page.read_text()
    named = set(re.findall(r"\b((?:docs|examples|benchmarks|lambda_hat|scripts|tests)/[\w./-]*\w)", text))
    named |= {f"docs/{m}" for m in re.findall(r"\]\(((?!https?:)[\w./-]+)\)", text) if page.parent.name == "docs"}
    named |= {m for m in re.findall(r"\]\(((?!https?:)[\w./-]+)\)", text) if page.name == "README.md"}
    missing = [n for n in sorted(named) if "*" not in n and not any(ROOT.glob(n + "*"))]
    assert missing == [], f"{page.name} names files the repository does not have"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_page_points_outside_the_repository(page):
    text = page.read_text()
    outside = re.findall(r"(?i)\bissue\s*(?:#?\d+|note)|the issue\b|\.\./shared|shared/ARCHITECTURE", text)
    assert outside == [], f"{page.name}: {outside}"
