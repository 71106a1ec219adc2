"""README.md and docs/*.md cannot rot: relative links resolve, `cxr SUB --flag` exists, help examples parse."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from cli.examples import EXAMPLES, START
from cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=\"([^\"]+)\"", re.I)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
MENTION = re.compile(r"(?<![\w./$-])cxr\s+([a-z][a-z-]*(?:/[a-z][a-z-]*)*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def without_code(text: str) -> str:
    """The page with fenced blocks and inline code blanked (links inside code are not links)."""
    return INLINE_CODE.sub(" ", FENCE.sub(" ", text))


def code_segments(text: str) -> list[str]:
    """Each shell line of a fenced block (continuations joined, comments cut) and each inline code span."""
    segments = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines()[1:-1]:
            segments.append(re.split(r"(?:^|\s)#", line, maxsplit=1)[0])
    segments += [span for _, span in INLINE_CODE.findall(FENCE.sub(" ", text))]
    return segments


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>|[`*]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of `page` (a repeated heading gets -1, -2, ... as on GitHub)."""
    names, seen = set(), {}
    for heading in HEADING.findall(FENCE.sub(" ", page.read_text(encoding="utf-8"))):
        base = anchor(heading)
        names.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return names


def broken_links(page: Path) -> list[str]:
    """Relative links (images included) of `page` whose file, or heading anchor in a .md file, is missing."""
    text = without_code(page.read_text(encoding="utf-8"))
    targets = LINK.findall(text) + REFERENCE_LINK.findall(text) + HTML_LINK.findall(text)
    problems = []
    for target in targets:
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            problems.append(f"{page.name}: {target} (no such file)")
        elif fragment and resolved.suffix == ".md" and fragment.lower() not in anchors(resolved):
            problems.append(f"{page.name}: {target} (no such heading)")
    return problems


def command_words(segment: str) -> list[tuple[str, list[str]]]:
    """(`cxr SUB`, its tokens) for each mention in a code segment, up to the next mention or shell separator."""
    mentions = list(MENTION.finditer(segment))
    found = []
    for mention, following in zip(mentions, [*mentions[1:], None], strict=False):
        rest = segment[mention.end() : following.start() if following else len(segment)]
        depth, end = 0, len(rest)
        for i, char in enumerate(rest):  # a `|` inside [...] is an alternative, outside it a pipe
            depth += {"[": 1, "]": -1}.get(char, 0)
            if (char in ";|" or rest.startswith("&&", i)) and depth <= 0:
                end = i
                break
        found.append((mention.group(1), rest[:end].split()))
    return found


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def unknown_cli_words(page: Path, parser: argparse.ArgumentParser) -> list[str]:
    """`cxr SUB` mentions whose sub-command (nested ones included) or `--flag` is not in that command's help."""
    problems = []
    for segment in code_segments(page.read_text(encoding="utf-8")):
        for names, tokens in command_words(segment):
            for name in names.split("/"):  # `cxr predict/evaluate --operating-point`
                sub = subparsers(parser).get(name)
                if sub is None:
                    problems.append(f"{page.name}: `cxr {name}` is not a sub-command")
                    continue
                words = [t for t in tokens if re.fullmatch(r"[a-z][a-z-]*", t)]
                while words and subparsers(sub).get(words[0]) is not None:  # `cxr SUB SUBSUB --flag`
                    sub = subparsers(sub)[words.pop(0)]
                flags = {flag for token in tokens for flag in FLAG.findall(token)}
                problems += [
                    f"{page.name}: `cxr {name} {flag}` is not in `cxr {name} --help`"
                    for flag in sorted(flags - set(sub._option_string_actions))
                ]
    return problems


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    problems = broken_links(page)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_cxr_command_and_flag_written_exists(page, parser):
    problems = unknown_cli_words(page, parser)
    assert not problems, "\n".join(problems)


def test_the_readme_is_a_front_page():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


def test_a_broken_link_anchor_or_image_is_reported(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Server load: SQLite and `PostgreSQL`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#server-load-sqlite-and-postgresql) [web](https://example.org/x)\n"
        "[gone](missing.md) ![picture](docs/none.png) [bad](other.md#no-such-part)\n"
        "`[not a link](nowhere.md)`\n\n[ref]: also-missing.md\n"
    )
    assert broken_links(page) == [
        "page.md: missing.md (no such file)",
        "page.md: docs/none.png (no such file)",
        "page.md: other.md#no-such-part (no such heading)",
        "page.md: also-missing.md (no such file)",
    ]


def test_an_unknown_command_or_flag_is_reported(tmp_path, parser):
    page = tmp_path / "page.md"
    page.write_text(
        "Run `cxr train --data DIR --epochs 3` or `cxr predict/evaluate --operating-point balanced`.\n"
        "```bash\ncxr train --data DIR \\\n    --epoch 3    # --not-checked in a comment\n"
        "cxr models [--json] | cxr promote 3 --force\ncxr cluster up --workers 2 | grep --count up\n"
        "cxr frobnicate --json\n```\n"
    )
    assert unknown_cli_words(page, parser) == [
        "page.md: `cxr train --epoch` is not in `cxr train --help`",
        "page.md: `cxr promote --force` is not in `cxr promote --help`",
        "page.md: `cxr frobnicate` is not a sub-command",
    ]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_help_example_parses(name, parser):
    assert name in subparsers(parser)
    command = re.split(r"\s#", EXAMPLES[name].replace("\\\n", " "), maxsplit=1)[0]
    args = parser.parse_args(shlex.split(command)[1:])
    assert args.command == name
    assert f"example:\n  {EXAMPLES[name].splitlines()[0]}" in subparsers(parser)[name].format_help()


def test_top_level_help_examples_parse(parser):
    lines = [line.split(" #")[0].strip() for line in START.splitlines() if line.strip().startswith("cxr ")]
    assert len(lines) >= 3
    for line in lines:
        assert parser.parse_args(shlex.split(line)[1:]).command in subparsers(parser)
    assert "examples:" in parser.format_help()
