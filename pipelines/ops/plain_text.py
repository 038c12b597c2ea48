"""Plain text where no terminal reads a job's output: no ANSI escape sequences in log files.

Ray's driver prints some of its lines in colour whatever its settings (the note on repeated log
lines is always green), so the streams themselves drop the sequences while a job runs."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator

ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


class PlainTextStream:
    """``stream`` with ANSI escape sequences removed from everything written to it."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(ANSI_ESCAPE.sub("", text))

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def plain_text_without_terminal() -> Iterator[None]:
    """While the block runs, ``sys.stdout`` and ``sys.stderr`` drop ANSI escape sequences
    unless both are terminals (a file or a pipe gets plain text); restored afterwards."""
    if sys.stdout.isatty() and sys.stderr.isatty():
        yield
        return
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = PlainTextStream(sys.stdout), PlainTextStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
