"""MkDocs hook: the command-line reference, generated at build time from the ``enlightengan``
command's own argparse parsers (``pipelines.cli.build_parser``), so no flag is copied by hand.

``docs/reference/cli.md`` holds the marker ``<!-- cli-reference -->``; this hook replaces it
with one section per sub-command (its usage line, then a table of options per argument group,
each with its help text and default as ``--help`` prints them). ``submit JOB`` lists only the
submission's own options: it takes every option of ``enlightengan JOB`` besides."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
PAGE = "reference/cli.md"
WIDTH = 96

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"{PAGE} lost its marker {MARKER}")
    return markdown.replace(MARKER, cli_reference())


def cli_reference() -> str:
    from pipelines.cli import build_parser

    parser = build_parser()
    sections = [_usage(parser), _options_tables(parser, "enlightengan", level=3)]
    top_level = _subcommands(parser)
    for name, sub in top_level.items():
        sections.append(_command(f"enlightengan {name}", sub, top_level, level=2))
    return _tidy("\n\n".join(section for section in sections if section))


def _command(title: str, parser, top_level: dict, level: int, inherited=None) -> str:
    """One sub-command's section; ``inherited``: the job parser whose options a ``submit JOB``
    parser forwards (listed on that job's section, not again here)."""
    heading = "#" * level
    parts = [f"{heading} {title}", _text(parser.description or "")]
    skip: set[str] = set()
    if inherited is not None:
        job = title.rsplit(" ", 1)[1]
        skip = {option for action in inherited._actions for option in action.option_strings}
        parts.append(f"Takes every option of [`enlightengan {job}`](#enlightengan-{job}), plus:")
    else:
        parts.append(_usage(parser))
    parts.append(_options_tables(parser, title, level + 1, skip=skip))
    for name, sub in _subcommands(parser).items():
        parts.append(_command(f"{title} {name}", sub, top_level, level + 1, top_level.get(name)))
    return "\n\n".join(part for part in parts if part)


def _subcommands(parser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _usage(parser) -> str:
    formatter = _formatter(parser)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return f"```text\n{formatter.format_help().strip()}\n```"


def _formatter(parser):
    """The formatter of ``enlightengan --help`` (it adds each flag's default to its help)."""
    from pipelines.options import HelpFormatter

    return HelpFormatter(prog=parser.prog, width=WIDTH)


def _options_tables(parser, title: str, level: int, skip: frozenset | set = frozenset()) -> str:
    formatter = _formatter(parser)
    tables = []
    for group in parser._action_groups:
        rows = []
        for action in group._group_actions:
            if action.help == argparse.SUPPRESS or isinstance(
                action, argparse._SubParsersAction | argparse._HelpAction
            ):
                continue
            if action.option_strings and set(action.option_strings) <= skip:
                continue
            invocation = formatter._format_action_invocation(action)
            if action.choices is not None and not action.option_strings:
                invocation = f"{action.dest} {{{','.join(map(str, action.choices))}}}"
            rows.append(f"| `{invocation}` | {_cell(formatter._expand_help(action))} |")
        if rows:
            name = group.title or "options"
            tables.append(
                f"{'#' * level} {title}: {_text(name)}\n\n| option | meaning |\n|---|---|\n"
                + "\n".join(rows)
            )
    return "\n\n".join(tables)


def _text(text: str) -> str:
    """Prose from a parser, safe in Markdown: no raw HTML, no emphasis by accident."""
    return " ".join(text.split()).replace("<", "&lt;").replace(">", "&gt;").replace("*", r"\*")


def _cell(text: str) -> str:
    return _text(text).replace("|", r"\|")


def _tidy(text: str) -> str:
    return text.replace(str(Path.home()), "~")
