"""Every unmarked shell and Python example of README.md and the docs, run as it is written:
page by page, block after block, with real bash and Python, in a scratch folder that holds
what the examples name (``photos/low``, ``photos/normal``, ``photo.jpg``, a tiny training run
``runs/exp1``, a checkpoint of the paper's architecture ``runs/reference``, and ``.venv``).
Each block must exit 0, and each ``enlightengan`` command that names an ``--output`` (and is no
dry run) must have written it. Heavy: each command starts its own Ray and imports torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.docs.examples import (
    PYTHON,
    ROOT,
    RUN,
    SHELL,
    Example,
    all_examples,
    enlightengan_commands,
)
from tests.fixtures.photos import darken, fit_within, wheel_photo

pytestmark = pytest.mark.heavy

BLOCK_TIMEOUT_S = 900


def runnable() -> dict[str, list[Example]]:
    pages: dict[str, list[Example]] = {}
    for example in all_examples():
        if example.kind == RUN:
            pages.setdefault(str(example.path.relative_to(ROOT)), []).append(example)
    return pages


PAGES = runnable()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """What the examples expect to find in the folder they run in."""
    from enlightengan.checkpoint import save_checkpoint
    from enlightengan.config import EnlightenGANConfig, tiny_config
    from enlightengan.generator import Generator
    from tests.enlightengan.textured_generator import textured_generator

    root = tmp_path_factory.mktemp("examples")
    # The examples written for a checkout call `.venv/bin/enlightengan`.
    (root / ".venv").symlink_to(Path(sys.executable).parent.parent)
    for domain, names in (("low", ("coffee", "astronaut")), ("normal", ("china", "flower"))):
        folder = root / "photos" / domain
        folder.mkdir(parents=True)
        for name in names:
            pixels = fit_within(wheel_photo(name), 480, 480)
            if domain == "low":
                pixels = darken(pixels)
            Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"{name}.jpg", quality=92)
    Image.fromarray(darken(fit_within(wheel_photo("rocket"), 240, 240))).save(root / "photo.jpg")
    config = tiny_config()
    save_checkpoint(
        root / "runs" / "exp1" / "train" / "checkpoint_000002",
        config=config,
        networks={"generator": textured_generator(config.generator, seed=2)},
        trainer_state={"step": 2, "epoch": 0},
    )
    reference = EnlightenGANConfig()
    save_checkpoint(
        root / "runs" / "reference",
        config=reference,
        networks={"generator": Generator(reference.generator)},
        trainer_state={"step": 0, "epoch": 0},
    )
    return root


def environment(ray_tmp: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        ENLIGHTENGAN_RAY_TMPDIR=ray_tmp,
        PYTHONPATH=str(ROOT),
    )
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        env.pop(name, None)
    return env


def run_block(example: Example, folder: Path, scripts: Path, env: dict) -> None:
    script = scripts / f"line{example.line}{'.py' if example.language in PYTHON else '.sh'}"
    script.write_text(example.code)
    if example.language in SHELL:
        command = ["bash", "-e", "-o", "pipefail", str(script)]
    else:
        command = [sys.executable, str(script)]
    result = subprocess.run(
        command,
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    output = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"{example.where} exited {result.returncode}:\n{output}"


def written_outputs(example: Example) -> list[str]:
    outputs = []
    if example.language not in SHELL:
        return outputs
    for command in enlightengan_commands(example.code):
        if "--dry-run" in command or "--output" not in command:
            continue
        outputs.append(command[command.index("--output") + 1])
    return outputs


@pytest.mark.parametrize("page", sorted(PAGES))
def test_the_examples_of_the_page_run_as_written(page, template, tmp_path):
    folder = tmp_path / "work"
    shutil.copytree(template, folder, symlinks=True)
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="ray-ex-", dir="/tmp")
    try:
        env = environment(ray_tmp)
        for example in PAGES[page]:
            run_block(example, folder, scripts, env)
            for output in written_outputs(example):
                assert (folder / output).exists(), f"{example.where}: nothing at {output}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
