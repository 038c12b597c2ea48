"""The fenced examples of README.md and the docs site, as the docs tests read them.

Every shell or Python block either runs in a test or carries a marker on the line right before
its fence, ``<!-- example: KIND -->`` (an HTML comment: invisible on GitHub and on the site),
saying why it cannot. The kinds (docs/development.md, "These docs", explains them to writers):

- no marker: runs as written, page by page, in ``tests/docs/test_examples.py``;
- ``api``: runs as written in ``tests/pipelines/test_api.py``;
- ``ci``: a command CI runs itself (``.ci/run``, ``scripts/test.sh``, or the test named in
  :data:`CI_RUN_ELSEWHERE`);
- ``cluster``, ``aws``, ``gpu``, ``data``, ``long``: needs a Ray cluster, AWS or an S3 bucket,
  a GPU, data that is not shipped, or longer than CI affords.

Whatever the kind, every ``enlightengan`` command of a shell block must parse with the
command's own parser (``tests/docs/test_site.py``).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

SHELL = frozenset({"bash", "sh", "shell", "console"})
PYTHON = frozenset({"python", "py", "pycon"})
RUN = "run"
KINDS = frozenset({RUN, "api", "ci", "cluster", "aws", "gpu", "data", "long"})

# ``ci`` commands that no CI script holds verbatim, and the test that runs them as written.
CI_RUN_ELSEWHERE = {
    ".venv/bin/enlightengan demo --output demo-output": (
        "tests/pipelines/demo/test_job.py",
        'main(["demo", "--output", str(out)])',
    ),
    ".venv/bin/mkdocs serve": ("tests/docs/test_site.py", '"mkdocs", "build", "--strict"'),
}

MARKER = re.compile(r"^<!--\s*example:\s*(\S+)\s*-->$")
FENCE = re.compile(r"^([ \t]*)(`{3,}|~{3,})[ \t]*([^\s`]*)[^`]*$")
SNIPPET = re.compile(r'^[ \t]*--8<--[ \t]+"([^":]+)(?::[\w-]+)?"[ \t]*$', re.M)
SEPARATORS = frozenset({"&&", "||", ";", "|", "&"})


@dataclass(frozen=True)
class Example:
    """One fenced block: where it is, its language, its marker's kind, its code."""

    path: Path
    line: int
    language: str
    kind: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def documents() -> list[Path]:
    """README.md, every page under docs/, and the Markdown files they include by snippet
    (BENCHMARKS.md, the starter model card), each once."""
    found: list[Path] = []
    pending = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    while pending:
        path = pending.pop(0)
        if path in found:
            continue
        found.append(path)
        for included in SNIPPET.findall(path.read_text()):
            if included.endswith(".md"):
                pending.append(ROOT / included)
    return found


def fenced_blocks(path: Path, text: str | None = None) -> list[Example]:
    """Every fenced block of a Markdown file, with the kind its marker gives (``run``
    without one). A fence with no language gets language ``""``."""
    lines = (path.read_text() if text is None else text).splitlines()
    blocks: list[Example] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence, language = opening.groups()
        previous = lines[index - 1].strip() if index else ""
        marker = MARKER.match(previous)
        body: list[str] = []
        end = index + 1
        while end < len(lines):
            stripped = lines[end].strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                break
            body.append(lines[end][len(indent) :] if lines[end].startswith(indent) else lines[end])
            end += 1
        blocks.append(
            Example(
                path=path,
                line=index + 1,
                language=language.lower(),
                kind=marker.group(1) if marker else RUN,
                code="\n".join(body) + "\n",
            )
        )
        index = end + 1
    return blocks


def all_examples() -> list[Example]:
    """Shell and Python blocks of every document."""
    return [
        block
        for path in documents()
        for block in fenced_blocks(path)
        if block.language in SHELL | PYTHON
    ]


def shell_commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block, as argument lists: continued lines joined,
    comments dropped, split at ``&&``, ``;``, ``|``; a heredoc's body is skipped."""
    commands: list[list[str]] = []
    heredoc_end = None
    for line in re.sub(r"\\\n[ \t]*", " ", code).splitlines():
        if heredoc_end is not None:
            heredoc_end = None if line.strip() == heredoc_end else heredoc_end
            continue
        heredoc = re.search(r"<<-?\s*'?\"?(\w+)", line)
        if heredoc:
            heredoc_end = heredoc.group(1)
            line = line[: heredoc.start()]
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            tokens = [line]
        current: list[str] = []
        for token in tokens:
            if token in SEPARATORS:
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [command for command in commands if command]


def enlightengan_commands(code: str) -> list[list[str]]:
    """The ``enlightengan`` commands of a shell block, as the CLI's arguments (without the
    program name): direct, ``.venv/bin/enlightengan``, ``python -m pipelines.cli`` and the
    entrypoint of ``ray job submit ... --``."""
    found = []
    for command in shell_commands(code):
        while command and re.match(r"^[A-Z_][A-Z0-9_]*=", command[0]):
            command = command[1:]
        if command[:3] == ["ray", "job", "submit"] and "--" in command:
            command = command[command.index("--") + 1 :]
        if command[:3] == ["python", "-m", "pipelines.cli"]:
            command = ["enlightengan", *command[3:]]
        if command and Path(command[0]).name == "enlightengan":
            found.append(command[1:])
    return found


def command_text(command: list[str]) -> str:
    return " ".join(shlex.quote(token) for token in command)
