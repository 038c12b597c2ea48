"""MkDocs hook: the reStructuredText roles of this project's docstrings (``:class:`X```,
``:meth:`~a.b.c```) become links of the API reference (mkdocs-autorefs resolves them after this
hook; a name not documented there stays plain code)."""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):<code>(~?)([\w.]+)</code>")


def on_page_content(html: str, page, config, files) -> str:
    return ROLE.sub(_autoref, html)


def _autoref(match: re.Match) -> str:
    tilde, name = match.groups()
    shown = name.rsplit(".", 1)[-1] if tilde else name
    return f'<autoref identifier="{name}" optional><code>{shown}</code></autoref>'
