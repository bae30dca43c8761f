"""The README and docs/ stay true to the repository: relative links and their anchors resolve, the
tools/, scripts/ and configs/ paths they name exist, the `make` targets they name are in the
Makefile, and the README stays a short guide. Pure Python, no network."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
README_MAX_LINES = 250

FENCE = re.compile(r'^```.*?^```[ \t]*$', re.M | re.S)
CODE_SPAN = re.compile(r'(`+)(.+?)\1', re.S)
LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
HEADING = re.compile(r'^(#{1,6})\s+(.*?)\s*#*\s*$', re.M)
# a path under tools/, scripts/ or configs/, not part of a longer path or URL
REPO_PATH = re.compile(r'(?<![\w./-])(?:tools|scripts|configs)/[\w./-]*[\w-]')
MAKE = re.compile(r'(?<![\w./-])make((?:\s+[A-Z_][A-Z0-9_]*=\S*)*)\s+([a-z][\w-]*)')
TARGET = re.compile(r'^([A-Za-z0-9_.-]+(?:[ \t]+[A-Za-z0-9_.-]+)*)[ \t]*:(?!=)', re.M)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def without_code(text: str) -> str:
    """``text`` with fenced blocks and code spans blanked (links inside code are not links)."""
    text = FENCE.sub(lambda m: '\n' * m.group(0).count('\n'), text)
    return CODE_SPAN.sub('', text)


def code_of(text: str) -> list[str]:
    """The fenced blocks and code spans of ``text``."""
    blocks = [m.group(0) for m in FENCE.finditer(text)]
    return blocks + [m.group(2) for m in CODE_SPAN.finditer(FENCE.sub('', text))]


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation but ``-`` and ``_`` dropped, spaces
    to ``-``."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # a link's text only
    text = re.sub(r'<[^>]+>', '', text).strip().lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeated headings numbered as GitHub does."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for match in HEADING.finditer(FENCE.sub('', path.read_text())):
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f'{anchor}-{count}')
    return found


def relative_links() -> list[tuple[Path, str]]:
    links = []
    for doc in DOCS:
        for match in LINK.finditer(without_code(doc.read_text())):
            target = match.group(1)
            if not re.match(r'^[a-z][a-z0-9+.-]*:', target, re.I):  # http(s), mailto, ...
                links.append((doc, target))
    return links


def repo_paths() -> list[tuple[Path, str]]:
    found = []
    for doc in DOCS:
        names = {m.group(0) for m in REPO_PATH.finditer(doc.read_text())}
        found += [(doc, name) for name in sorted(names)]
    return found


def make_targets() -> list[tuple[Path, str]]:
    found = []
    for doc in DOCS:
        names = {m.group(2) for code in code_of(doc.read_text()) for m in MAKE.finditer(code)}
        found += [(doc, name) for name in sorted(names)]
    return found


def makefile_targets() -> set[str]:
    text = (ROOT / 'Makefile').read_text()
    return {name for m in TARGET.finditer(text) for name in m.group(1).split()
            if not name.startswith('.')}


LINKS = relative_links()
PATHS = repo_paths()
TARGETS = make_targets()


def test_there_are_docs_to_check():
    assert (ROOT / 'README.md').exists() and len(DOCS) > 1
    assert LINKS and PATHS and TARGETS


@pytest.mark.parametrize('doc, target', LINKS,
                         ids=[f'{rel(doc)}->{target}' for doc, target in LINKS])
def test_relative_link_resolves(doc: Path, target: str):
    file_part, _, anchor = target.partition('#')
    path = (doc.parent / file_part).resolve() if file_part else doc
    assert path.exists(), f'{rel(doc)}: link target {file_part} does not exist'
    if anchor:
        assert path.is_file() and path.suffix == '.md', \
            f'{rel(doc)}: #{anchor} points into {file_part}, which is not a Markdown file'
        assert anchor in anchors(path), \
            f'{rel(doc)}: {rel(path)} has no heading with the anchor #{anchor}'


@pytest.mark.parametrize('doc, name', PATHS, ids=[f'{rel(doc)}:{name}' for doc, name in PATHS])
def test_named_path_exists(doc: Path, name: str):
    assert (ROOT / name).exists(), f'{rel(doc)} names {name}, which is not in the repository'


@pytest.mark.parametrize('doc, target', TARGETS,
                         ids=[f'{rel(doc)}:make {target}' for doc, target in TARGETS])
def test_make_target_exists(doc: Path, target: str):
    assert target in makefile_targets(), f'{rel(doc)} names `make {target}`, not in the Makefile'


def test_readme_is_short():
    lines = (ROOT / 'README.md').read_text().count('\n')
    assert lines <= README_MAX_LINES, f'README.md has {lines} lines (at most {README_MAX_LINES})'


def test_every_docs_page_starts_with_a_title_and_is_linked_from_the_readme():
    readme = (ROOT / 'README.md').read_text()
    for page in DOCS[1:]:
        assert page.read_text().startswith('# '), f'{rel(page)} does not start with a # title'
        assert f'(docs/{page.name})' in readme, f'README.md does not link {rel(page)}'
