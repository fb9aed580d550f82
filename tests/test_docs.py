"""The README and docs/ hold no dead links and document only what exists.

- every relative Markdown link in README.md (and the other pages at the root) and docs/**/*.md points to a
  file or folder of this repository, and every #anchor to a heading of the page it names (GitHub's slugs);
- every `--option` written for an `edgevision SUBCOMMAND` is an option of that subcommand's parser: options
  in command lines (`edgevision export run/ --out bundle/ --formats tflite`, in code spans and in code
  blocks), and bare `--option` code spans in a section whose heading names a command
  (## `edgevision train DATA_DIR --out RUN_DIR`, and the headings under it); a bare `--option` elsewhere
  must be an option of some subcommand;
- every subcommand has a section in docs/ and a row in docs/cli.md, and every option of a subcommand is
  mentioned in its section (the docs are each command's full list of options).

No TensorFlow: `build_parser()` imports only the CLI (about 0.3 s).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pytest

from edgevision.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted(ROOT.glob("*.md")), *sorted((ROOT / "docs").rglob("*.md"))]  # README.md, SECURITY.md, docs/
DOC_PAGES = sorted((ROOT / "docs").rglob("*.md"))

# Bare `--option` code spans, outside any command's section, that belong to another program than
# `edgevision` (each with where it is written), so they are not looked up in edgevision's parser.
OTHER_PROGRAMS_OPTIONS = {
    # `python -m edgevision.train.bench streaming --train-workers 8,12,16` (docs/measured.md: the
    # streaming benchmark's own option, written as a bare span in its table and prose)
    "--train-workers",
}

OPTION = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"(?<!\\)!?\[(?:[^\[\]\\]|\\.|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EDGEVISION = re.compile(r"^(?:\S*/)?edgevision$")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*:?$")  # `edgevision COMMAND: error: …`


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


# --- Markdown, as much as the checks need ---------------------------------------------------------------------

@dataclass
class Section:
    heading: str                      # the heading's text ("" before the first heading)
    level: int
    command: str | None               # the subcommand this section documents (inherited by sub-headings)
    prose: list[str] = field(default_factory=list)   # lines outside code blocks
    code: list[str] = field(default_factory=list)    # lines of fenced code blocks


def code_spans(text: str) -> list[str]:
    """The contents of the inline code spans of a paragraph (CommonMark: a run of n backticks to the next
    run of exactly n), with line breaks as spaces."""
    spans, i = [], 0
    while True:
        m = re.compile(r"`+").search(text, i)
        if not m:
            return spans
        ticks = m.group(0)
        close = re.compile(r"(?<!`)" + ticks + r"(?!`)").search(text, m.end())
        if not close:
            i = m.end()
            continue
        spans.append(" ".join(text[m.end():close.start()].split()))
        i = close.end()


def blank_code_spans(text: str) -> str:
    """The text with every code span's contents replaced by spaces (links are not looked for in code)."""
    out, i = [], 0
    while True:
        m = re.compile(r"`+").search(text, i)
        if not m:
            return "".join(out) + text[i:]
        close = re.compile(r"(?<!`)" + m.group(0) + r"(?!`)").search(text, m.end())
        if not close:
            out.append(text[i:m.end()])
            i = m.end()
            continue
        out.append(text[i:m.end()] + re.sub(r"[^\n]", " ", text[m.end():close.start()]) + close.group(0))
        i = close.end()


def paragraphs(lines: list[str]) -> list[str]:
    text = "\n".join(lines)
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def heading_text(raw: str) -> str:
    """A heading as GitHub renders it to text: no code-span backticks, link text without its target,
    no emphasis markers or HTML tags."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)
    text = re.sub(r"<[^>]+>", "", text)
    text = text.replace("`", "")
    text = re.sub(r"(\*+|(?<!\w)_+|_+(?!\w))", "", text)
    return text


def slug(raw: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation other than - and _ dropped, spaces to -."""
    text = heading_text(raw).strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in "-_ ")
    return text.replace(" ", "-")


@lru_cache(maxsize=None)
def parse(page: Path) -> tuple[Section, ...]:
    sections = [Section("", 0, None)]
    stack: list[Section] = []
    in_fence = None
    for line in page.read_text(encoding="utf-8").split("\n"):
        fence = FENCE.match(line)
        if in_fence:
            if fence and fence.group(1) == in_fence:
                in_fence = None
            else:
                sections[-1].code.append(line)
            continue
        if fence:
            in_fence = fence.group(1)
            continue
        m = HEADING.match(line)
        if m:
            level, text = len(m.group(1)), m.group(2)
            while stack and stack[-1].level >= level:
                stack.pop()
            command = next((c for c in map(command_of, code_spans(text)) if c), None)
            if command is None and stack:
                command = stack[-1].command
            section = Section(text, level, command)
            sections.append(section)
            stack.append(section)
            continue
        sections[-1].prose.append(line)
    return tuple(sections)


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for section in parse(page)[1:]:
        base = slug(section.heading)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


# --- the CLI ----------------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def cli() -> tuple[set[str], dict[str, set[str]]]:
    parser = build_parser()
    top = {o for a in parser._actions for o in a.option_strings}
    subs = parser._subparsers._group_actions[0].choices
    return top, {name: {o for a in sub._actions for o in a.option_strings} for name, sub in subs.items()}


def words(command_line: str) -> list[str]:
    try:
        return shlex.split(command_line, comments=True)
    except ValueError:  # an unbalanced quote in an example: split on blanks
        return command_line.split()


def invocations(text: str) -> list[tuple[str, list[str]]]:
    """(subcommand, its --options) for every `edgevision SUBCOMMAND ...` command in a command line or a
    shell snippet (`&&`, ` | `, `;` separate commands; `$ `, `sudo` and VAR=value before one are skipped;
    `a|b` without blanks is a choice of values, not a pipe).
    A placeholder (COMMAND) is returned as "", an option right after `edgevision` as "--"."""
    found = []
    for segment in re.split(r"&&|\|\||;|\s\|\s", text):
        tokens = words(segment)
        while tokens and (tokens[0] in ("$", "sudo") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0])):
            tokens = tokens[1:]
        if len(tokens) < 2 or not EDGEVISION.match(tokens[0]):
            continue
        head = tokens[1]
        if head.startswith("-"):
            found.append(("--", options_in(" ".join(tokens[1:]))))
        elif PLACEHOLDER.match(head):
            found.append(("", options_in(" ".join(tokens[2:]))))
        else:
            found.append((head, options_in(" ".join(tokens[2:]))))
    return found


def options_in(text: str) -> list[str]:
    return OPTION.findall(text)


def command_of(span: str) -> str | None:
    """The subcommand a heading's code span names (`edgevision train DATA_DIR --out RUN_DIR` -> train)."""
    found = invocations(span)
    return found[0][0] if found and found[0][0] not in ("", "--") else None


def command_lines(section: Section) -> list[str]:
    """The code block lines of a section, a line continued with a trailing backslash joined to the next."""
    lines, current = [], ""
    for line in section.code:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    if current:
        lines.append(current)
    return lines


# --- (a) links ----------------------------------------------------------------------------------------------------

def links(page: Path) -> list[str]:
    found = []
    for section in parse(page):
        for paragraph in paragraphs(section.prose):
            found += LINK.findall(blank_code_spans(paragraph))
    return found


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_and_anchor_exists(page):
    problems = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not checked offline
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if ROOT not in (dest, *dest.parents):
            problems.append(f"{target}: outside the repository")
        elif not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {rel(dest)} (headings: {sorted(anchors(dest))})")
    assert not problems, f"{rel(page)}:\n" + "\n".join(problems)


def test_docs_are_linked_from_the_readme_or_the_index():
    linked = set()
    for page in (ROOT / "README.md", ROOT / "docs" / "README.md"):
        for target in links(page):
            path = target.partition("#")[0]
            if path and not re.match(r"^[a-z][a-z0-9+.-]*:", path):
                linked.add((page.parent / path).resolve())
    orphans = [rel(p) for p in DOC_PAGES if p.resolve() not in linked]
    assert not orphans, f"docs pages that neither README.md nor docs/README.md link to: {orphans}"


def test_slugs_follow_github():
    assert slug("Quick start (Python 3.11, offline after the install)") == "quick-start-python-311-offline-after-the-install"
    assert slug("`edgevision train DATA_DIR --out RUN_DIR`") == "edgevision-train-data_dir---out-run_dir"
    assert slug("Measured: on 64-bit Arm (emulated)") == "measured-on-64-bit-arm-emulated"
    assert slug("The bundle (`bundle.json`)") == "the-bundle-bundlejson"


# --- (b) options ----------------------------------------------------------------------------------------------------

def documented_options(page: Path) -> list[tuple[str | None, str, str]]:
    """(subcommand or None for "some subcommand", option, where) for every option the page documents."""
    found = []
    for section in parse(page):
        where = f"{rel(page)} § {section.heading or '(top)'}"
        for line in command_lines(section):
            for command, options in invocations(line):
                found += [(command, o, f"{where}: {line.strip()}") for o in options]
                if command not in ("", "--"):
                    found.append((command, "", f"{where}: {line.strip()}"))
        for paragraph in [section.heading, *paragraphs(section.prose)]:
            for span in code_spans(paragraph):
                calls = invocations(span)
                for command, options in calls:
                    found += [(command, o, f"{where}: `{span}`") for o in options]
                    if command not in ("", "--"):
                        found.append((command, "", f"{where}: `{span}`"))
                if not calls and span.startswith("--"):  # a bare option: of this section's command
                    found += [(section.command, o, f"{where}: `{span}`") for o in options_in(span)]
        for paragraph in paragraphs(section.prose):  # an option written outside a code span, likewise
            found += [(section.command, o, f"{where}: {o}") for o in options_in(blank_code_spans(paragraph))]
    return found


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_documented_option_exists(page):
    top, subs = cli()
    everywhere = set().union(*subs.values())
    problems = []
    for command, option, where in documented_options(page):
        if command == "--":
            ok = option in top
        elif command in (None, ""):
            ok = option in everywhere or option in OTHER_PROGRAMS_OPTIONS
        elif command not in subs:
            problems.append(f"no subcommand `edgevision {command}`: {where}")
            continue
        else:
            ok = option == "" or option in subs[command]
        if not ok:
            owner = f"`edgevision {command}`" if command not in (None, "", "--") else "any edgevision subcommand"
            problems.append(f"{option} is not an option of {owner}: {where}")
    assert not problems, "\n".join(problems)


def test_the_checks_see_options():
    """The option checks find what they are meant to find (so that a parsing slip cannot pass silently)."""
    found = [f for page in PAGES for f in documented_options(page)]
    assert ("train", "--val-fraction") in {(c, o) for c, o, _ in found}
    assert ("deploy", "--ssh-option") in {(c, o) for c, o, _ in found}  # a continued command line
    assert ("demo", "") in {(c, o) for c, o, _ in found}  # `.venv/bin/edgevision demo` after &&
    assert invocations("KERAS_BACKEND=jax edgevision train DATA --out RUN --distribute data_parallel") == [
        ("train", ["--out", "--distribute"])]
    assert invocations("$ edgevision import m.tflite --out b      # labels from its metadata --nope") == [
        ("import", ["--out"])]
    assert invocations("pip install 'edgevision[runtime]'") == []
    assert invocations("edgevision verify B --artifact NAME|all --json | tee log") == [("verify", ["--artifact", "--json"])]


# --- (c) every subcommand and option is documented --------------------------------------------------------------

def sections_of(command: str) -> list[Section]:
    return [s for page in DOC_PAGES for s in parse(page) if s.command == command]


def test_every_subcommand_has_a_section_in_docs():
    _, subs = cli()
    missing = [name for name in subs if not sections_of(name)]
    assert not missing, f"subcommands with no `edgevision NAME` heading in docs/: {missing}"


def test_every_option_is_documented_in_its_commands_section():
    """Each command's page is its full list of options: an option added to the parser needs its sentence."""
    _, subs = cli()
    documented = [f for page in DOC_PAGES for f in documented_options(page)]
    problems = []
    for name, options in subs.items():
        mentioned = {o for c, o, _ in documented if c == name}
        missing = sorted(o for o in options if o.startswith("--") and o != "--help" and o not in mentioned)
        if missing:
            problems.append(f"edgevision {name}: {', '.join(missing)}")
    assert not problems, "options not mentioned in their command's docs section:\n" + "\n".join(problems)


def test_the_command_line_page_lists_every_subcommand():
    _, subs = cli()
    page = ROOT / "docs" / "cli.md"
    listed = {c for c, _, _ in documented_options(page)}
    missing = [name for name in subs if name not in listed]
    assert not missing, f"docs/cli.md does not list: {missing}"
