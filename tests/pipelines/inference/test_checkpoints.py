"""The checkpoint the jobs hand to their actors: the shipped starter model travels as its one
weights file, checked without torch in the driver, and stages into a checkpoint directory."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from enlightengan.checkpoint import load_generator
from enlightengan.starter import load_starter_generator
from pipelines.errors import UserError
from pipelines.inference import checkpoints
from pipelines.inference.checkpoints import load_checkpoint_files, staged_checkpoint


def test_the_starter_check_loads_no_torch_in_the_driver():
    """A default run's driver checks the starter by its sha256 only: torch's import (over a
    CPU-second) stays in the actors, which load the model anyway."""
    code = (
        "import sys\n"
        "from pipelines.inference.checkpoints import load_checkpoint_files\n"
        "found = load_checkpoint_files('starter')\n"
        "print(sorted(found.files), 'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split() == ["['starter.pt']", "False"]


def test_the_staged_starter_is_the_shipped_generator():
    found = load_checkpoint_files(None)
    assert found.description.startswith("the shipped starter model")
    with staged_checkpoint(found.files) as directory:
        staged = load_generator(directory, map_location="cpu")
    assert not directory.exists()  # the staged files are removed with the block
    shipped = load_starter_generator()
    for (name, ours), (_, theirs) in zip(
        staged.state_dict().items(), shipped.state_dict().items(), strict=True
    ):
        assert torch.equal(ours, theirs), name


def test_a_damaged_starter_file_is_one_user_error(tmp_path, monkeypatch):
    damaged = tmp_path / "starter.pt"
    damaged.write_bytes(b"not the shipped weights")
    monkeypatch.setattr("enlightengan.shipped_weights.starter_weights_path", lambda: damaged)
    with pytest.raises(UserError, match="pinned sha256"):
        checkpoints.load_checkpoint_files("starter")
