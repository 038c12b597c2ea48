"""The starter model shipped inside the package: where its checkpoint is and the pin it must match.

The starter is an ordinary checkpoint directory (:mod:`enlightengan.checkpoint`),
``enlightengan/weights/starter/``, whose ``checkpoint.json`` lists every other file's sha256 and
size. Pinning the index's own sha256 (:data:`STARTER_SHA256`) therefore pins the whole model.

Nothing here imports torch, so a driver can check the files (and hand their bytes to the workers
that will load them) without paying torch's import. Loading is :mod:`enlightengan.checkpoint`'s
job, as for any checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from collections.abc import Iterable
from pathlib import Path

# What names the shipped model wherever a checkpoint URI goes (`--checkpoint starter`).
STARTER_NAME = "starter"
# sha256 of weights/starter/checkpoint.json, which holds the sha256 and size of every file of the
# checkpoint; a changed or damaged file is refused rather than run.
STARTER_SHA256 = "559873b28188c3c7983ccfdb0d520f3662317bbeb35d912a5869e2e53c1c39ab"
STARTER_INDEX_FILE = "checkpoint.json"


class StarterWeightsMissing(ValueError):
    """The shipped checkpoint is absent or is not the one this release pinned."""


def starter_checkpoint_path() -> Path:
    """The shipped starter's checkpoint directory inside the installed package."""
    return Path(str(importlib.resources.files("enlightengan") / "weights" / "starter"))


def model_card_path() -> Path:
    return starter_checkpoint_path().with_name("starter.md")


def verified_starter_index(directory: str | Path | None = None) -> dict:
    """The starter checkpoint's parsed index, refused unless its sha256 is :data:`STARTER_SHA256`.

    ``directory``: where the starter checkpoint is (default: the shipped one). The index's own
    entries then vouch for every other file, which loading checks as for any checkpoint.
    """
    return json.loads(_verified_index_bytes(Path(directory or starter_checkpoint_path())))


def _verified_index_bytes(directory: Path) -> bytes:
    index_path = directory / STARTER_INDEX_FILE
    if not index_path.is_file():
        raise StarterWeightsMissing(
            f"the starter checkpoint is missing from the installation ({index_path})"
        )
    data = index_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != STARTER_SHA256:
        raise StarterWeightsMissing(
            f"{index_path} does not match its pinned sha256: the starter checkpoint is damaged "
            "or was replaced; reinstall the package"
        )
    return data


def verified_starter_checkpoint() -> Path:
    """The shipped starter's checkpoint directory, once its index matches the pin."""
    verified_starter_index()
    return starter_checkpoint_path()


def starter_checkpoint_files(names: Iterable[str]) -> dict[str, bytes]:
    """The bytes of the starter checkpoint's files ``names`` (the index among them when asked),
    each checked against the pinned index's sha256 and size; names the index does not list are
    left out. Reads nothing else and needs no torch."""
    directory = starter_checkpoint_path()
    index_bytes = _verified_index_bytes(directory)
    listed = json.loads(index_bytes).get("files", {})
    files: dict[str, bytes] = {}
    for name in names:
        if name == STARTER_INDEX_FILE:
            files[name] = index_bytes
            continue
        if name not in listed:
            continue
        path = directory / name
        data = path.read_bytes() if path.is_file() else b""
        entry = listed[name]
        if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get(
            "sha256"
        ):
            raise StarterWeightsMissing(
                f"{path} does not match its sha256 in the pinned {STARTER_INDEX_FILE}: the "
                "starter checkpoint is damaged or was replaced; reinstall the package"
            )
        files[name] = data
    return files
