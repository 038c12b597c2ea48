"""The starter weights file shipped inside the package: where it is and the sha256 it must have.

Nothing here imports torch, so a driver can check the file (and hand its bytes to the workers
that will load it) without paying torch's import. Loading is :mod:`enlightengan.starter`'s job.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from pathlib import Path

# What names the shipped model wherever a checkpoint URI goes (`--checkpoint starter`).
STARTER_NAME = "starter"
# sha256 of weights/starter.pt; a changed or damaged file is refused rather than run.
STARTER_SHA256 = "3ec57ac8a9eee63899d9c0f1e68a7324dee7b9ad07abe4029e858cb04512fb25"
# sha256 of weights/starter-discriminators.pt (the starter's global and patch discriminators,
# for fine-tuning); None while no such file ships, and then the file is not read.
STARTER_DISCRIMINATORS_SHA256: str | None = (
    "5fd36b82289184bb833d81f834d90ef50361fece8e3567bd75cd4ef110027457"
)
DISCRIMINATORS_FILE_NAME = "starter-discriminators.pt"


class StarterWeightsMissing(ValueError):
    """The shipped weights file is absent or is not the file this release pinned."""


def starter_weights_path() -> Path:
    return Path(str(importlib.resources.files("enlightengan") / "weights" / "starter.pt"))


def starter_discriminators_path() -> Path:
    return starter_weights_path().with_name(DISCRIMINATORS_FILE_NAME)


def model_card_path() -> Path:
    return starter_weights_path().with_suffix(".md")


def verified_bytes(path: str | Path, expected_sha256: str | None = None) -> bytes:
    """The file's bytes, refused unless their sha256 is ``expected_sha256`` (when given)."""
    path = Path(path)
    if not path.is_file():
        raise StarterWeightsMissing(
            f"the starter weights are missing from the installation ({path})"
        )
    data = path.read_bytes()
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise StarterWeightsMissing(
            f"{path} does not match its pinned sha256: the file is damaged or was replaced; "
            "reinstall the package"
        )
    return data


def starter_bytes() -> bytes:
    """The shipped starter weights file, checked against :data:`STARTER_SHA256`."""
    return verified_bytes(starter_weights_path(), STARTER_SHA256)


def starter_discriminator_bytes() -> bytes | None:
    """The shipped starter discriminators file checked against its pinned sha256, or None when
    this release ships none (no pin, or no file). A file that fails its pin is refused."""
    path = starter_discriminators_path()
    if STARTER_DISCRIMINATORS_SHA256 is None or not path.is_file():
        return None
    return verified_bytes(path, STARTER_DISCRIMINATORS_SHA256)
