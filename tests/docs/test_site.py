"""The documentation: the site builds with ``mkdocs build --strict`` (a broken link or anchor,
a missing snippet or an API object that does not resolve fails it), the README stays a front
page, and every example in README.md and the docs runs in a test or says why it cannot; every
``enlightengan`` command shown parses with the command's own parser."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import build_parser, resolve
from pipelines.errors import UserError
from tests.docs.examples import (
    CI_RUN_ELSEWHERE,
    KINDS,
    PYTHON,
    ROOT,
    SHELL,
    all_examples,
    documents,
    enlightengan_commands,
    fenced_blocks,
    shell_commands,
)

README = ROOT / "README.md"
# What the snippets and mkdocstrings read, for a build from a copy of the docs.
SOURCES = ("README.md", "BENCHMARKS.md", "enlightengan", "pipelines", "cluster")


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=root,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    result = build(ROOT, site)
    assert result.returncode == 0, result.stdout + result.stderr
    return site


def page_text(site: Path, page: str) -> str:
    html = (site / page / "index.html").read_text()
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_site_builds_with_generated_references_and_included_pages(site):
    cli = page_text(site, "reference/cli")
    for command in build_parser()._subparsers._group_actions[0].choices:
        assert f"enlightengan {command}" in cli, command
    assert "--only-dark" in cli and "--init-from SOURCE" in cli and "(default: 0.79)" in cli
    api = page_text(site, "reference/api")
    for name in ("from_pretrained", "enhance_dataset", "EnhanceJob", "run_enhance", "Summary"):
        assert name in api, name
    # Included, not copied: the model card, the benchmarks, the IAM policies.
    assert "Starter model card" in page_text(site, "model/starter")
    assert "Every ratio compares two things" in page_text(site, "performance")
    assert "AutoscalerLaunchesAndStopsWorkers" in page_text(site, "clusters/aws")
    assert (site / "assets" / "before-after.jpg").is_file()
    assert (site / "search" / "search_index.json").is_file()


def test_a_broken_link_fails_the_strict_build(tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text())
    for name in SOURCES:
        (copy / name).symlink_to(ROOT / name)
    docs = copy / "docs"
    subprocess.run(["cp", "-r", str(ROOT / "docs"), str(docs)], check=True)
    page = docs / "guides" / "enhance.md"
    page.write_text(page.read_text() + "\nSee [the resume rules](train.md#no-such-section).\n")
    result = build(copy, tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-section" in result.stdout + result.stderr


def test_every_block_has_a_language_and_every_marker_a_known_kind():
    for path in documents():
        for block in fenced_blocks(path):
            assert block.language, f"{block.where}: a fence needs a language (text for output)"
            assert block.kind in KINDS, f"{block.where}: unknown example kind {block.kind!r}"
            if block.kind != "run":
                assert block.language in SHELL | PYTHON, f"{block.where}: a marker on a non-example"


def test_api_examples_are_python_and_ci_examples_are_what_ci_runs():
    ci_scripts = (ROOT / ".ci" / "run").read_text() + (ROOT / "scripts" / "test.sh").read_text()
    ci_commands = shell_commands(ci_scripts)
    for example in all_examples():
        if example.kind == "api":
            assert example.language in PYTHON, example.where
        if example.kind != "ci":
            continue
        for command in shell_commands(example.code):
            text = " ".join(command)
            if text in CI_RUN_ELSEWHERE:
                test_file, call = CI_RUN_ELSEWHERE[text]
                assert call in (ROOT / test_file).read_text(), (example.where, text)
            else:
                assert command in ci_commands, f"{example.where}: CI does not run {text!r}"


def test_every_enlightengan_command_shown_parses():
    parser = build_parser()
    checked = 0
    for example in all_examples():
        if example.language not in SHELL:
            continue
        for command in enlightengan_commands(example.code):
            try:
                args = parser.parse_args(command)
            except SystemExit:
                pytest.fail(f"{example.where}: `enlightengan {shlex.join(command)}` does not parse")
            if getattr(args, "config", None) is None:
                try:
                    resolve(args)
                except UserError as error:
                    pytest.fail(f"{example.where}: `enlightengan {shlex.join(command)}`: {error}")
            checked += 1
    assert checked >= 30


def test_the_checks_catch_a_wrong_flag_a_bare_fence_and_an_unknown_marker(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- example: clustr -->\n```bash\nls\n```\n\n```\nplain\n```\n\n"
        "```sh\n.venv/bin/enlightengan enhance --input a \\\n  --no-such-flag b  # comment\n"
        "ray job submit -- python -m pipelines.cli train --data d --output o\n```\n"
    )
    marked, bare, shell = fenced_blocks(page)
    assert marked.kind == "clustr" and marked.kind not in KINDS
    assert bare.language == ""
    assert enlightengan_commands(shell.code) == [
        ["enhance", "--input", "a", "--no-such-flag", "b"],
        ["train", "--data", "d", "--output", "o"],
    ]
    with pytest.raises(SystemExit):
        build_parser().parse_args(enlightengan_commands(shell.code)[0])


def test_the_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 160
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert pictures, "the before/after picture"
    for picture in pictures:
        assert (ROOT / picture).stat().st_size < 400_000, picture
    # The two fresh-machine commands, and .ci/run calling the README's test command.
    commands = [
        " ".join(c) for e in all_examples() if e.path == README for c in shell_commands(e.code)
    ]
    assert "bash scripts/setup.sh" in commands and "bash scripts/test.sh" in commands
    assert re.search(r"^bash scripts/test.sh$", (ROOT / ".ci" / "run").read_text(), re.M)
    for link in re.findall(r"\]\(((?:docs/|enlightengan/|BENCHMARKS)[^)#]*)", text):
        assert (ROOT / link).is_file(), link


def test_the_examples_that_run_cover_every_job_that_runs_on_one_machine():
    jobs = {
        command[0]
        for example in all_examples()
        if example.kind == "run" and example.language in SHELL
        for command in enlightengan_commands(example.code)
    }
    assert {"prepare", "train", "enhance", "evaluate", "export", "import-official"} <= jobs
