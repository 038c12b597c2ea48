"""The checkpoint the jobs hand to their actors: the shipped starter model travels as its
ordinary checkpoint files, checked against the pinned index without torch in the driver, and
stages into a checkpoint directory like any other."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from enlightengan import shipped_weights
from enlightengan.checkpoint import load_generator, load_networks
from enlightengan.starter import load_starter_generator, load_starter_networks
from pipelines.errors import UserError
from pipelines.inference import checkpoints
from pipelines.inference.checkpoints import load_checkpoint_files, staged_checkpoint


def test_the_starter_check_loads_no_torch_in_the_driver():
    """A default run's driver checks the starter by its pinned index only: torch's import (over
    a CPU-second) stays in the actors, which load the model anyway."""
    code = (
        "import sys\n"
        "from pipelines.inference.checkpoints import load_checkpoint_files\n"
        "found = load_checkpoint_files('starter')\n"
        "print(sorted(found.files), 'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split() == [
        "['checkpoint.json',",
        "'config.json',",
        "'generator.pt']",
        "False",
    ]


def test_the_staged_starter_is_the_shipped_generator():
    found = load_checkpoint_files(None)
    assert found.description.startswith("the shipped starter model")
    assert set(found.files) == set(checkpoints.CHECKPOINT_FILES_FOR_INFERENCE)
    with staged_checkpoint(found.files) as directory:
        staged = load_generator(directory, map_location="cpu")
    assert not directory.exists()  # the staged files are removed with the block
    shipped = load_starter_generator()
    for (name, ours), (_, theirs) in zip(
        staged.state_dict().items(), shipped.state_dict().items(), strict=True
    ):
        assert torch.equal(ours, theirs), name


def test_the_starter_travels_with_its_discriminators_for_fine_tuning():
    found = load_checkpoint_files("starter", with_discriminators=True)
    assert checkpoints.DISCRIMINATORS_FILE in found.files
    with staged_checkpoint(found.files) as directory:
        staged = load_networks(directory)
    shipped = load_starter_networks()
    for name, state in shipped.network_states.items():
        assert all(torch.equal(staged.network_states[name][k], v) for k, v in state.items())


@pytest.fixture
def starter_copy(tmp_path, monkeypatch):
    copy = tmp_path / "starter"
    shutil.copytree(shipped_weights.starter_checkpoint_path(), copy)
    monkeypatch.setattr(shipped_weights, "starter_checkpoint_path", lambda: copy)
    return copy


def test_a_damaged_starter_file_is_one_user_error(starter_copy):
    (starter_copy / "generator.pt").write_bytes(b"not the shipped weights")
    with pytest.raises(UserError, match="generator.pt does not match its sha256"):
        checkpoints.load_checkpoint_files("starter")


def test_a_replaced_starter_index_is_one_user_error(starter_copy):
    index = starter_copy / "checkpoint.json"
    index.write_bytes(index.read_bytes() + b"\n")
    with pytest.raises(UserError, match="pinned sha256"):
        checkpoints.load_checkpoint_files("starter")
