import io
import sys

from pipelines.ops.plain_text import PlainTextStream, plain_text_without_terminal

# What Ray's driver prints after a repeated worker line, colour codes and all.
RAY_DEDUP_NOTE = "\x1b[32m [repeated 2x across cluster]\x1b[0m\n"


def test_escape_sequences_are_dropped_and_text_kept():
    stream = io.StringIO()
    plain = PlainTextStream(stream)
    plain.write("(pid=1) \x1b[36mstep 3\x1b[39m" + RAY_DEDUP_NOTE)
    plain.writelines(["\x1b[1;31mbold red\x1b[0m ", "\x1b[2Kcleared\n"])
    plain.flush()
    assert stream.getvalue() == "(pid=1) step 3 [repeated 2x across cluster]\nbold red cleared\n"


def test_streams_are_plain_only_while_the_block_runs(capsys):
    before = sys.stdout, sys.stderr
    with plain_text_without_terminal():  # pytest's capture is no terminal
        print("out" + RAY_DEDUP_NOTE, end="")
        print("err" + RAY_DEDUP_NOTE, end="", file=sys.stderr)
    assert (sys.stdout, sys.stderr) == before
    print("\x1b[32mafter\x1b[0m")
    captured = capsys.readouterr()
    assert captured.out == "out [repeated 2x across cluster]\n\x1b[32mafter\x1b[0m\n"
    assert captured.err == "err [repeated 2x across cluster]\n"
