"""The starter model that ships inside the package: load it without a path.

It is an ordinary checkpoint (:mod:`enlightengan.checkpoint`) in
``enlightengan/weights/starter/``: the generator, the global and patch discriminators that
trained it (for fine-tuning), the config and the index, with the networks' weights stored in
float16 and loaded as float32. The index's sha256 is pinned
(:data:`enlightengan.shipped_weights.STARTER_SHA256`) and the index holds every other file's
sha256, so a changed or damaged file is refused. Its model card, ``weights/starter.md``, says
how it was trained (data, command, steps, time, machine), how it scores and where it falls short.

    from enlightengan.starter import load_starter_generator
    generator = load_starter_generator()          # fp32, eval mode, on the CPU

``Enhancer.from_pretrained("starter")`` loads it the same way as any local checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from enlightengan.checkpoint import Checkpoint, load_generator, load_networks
from enlightengan.generator import Generator
from enlightengan.serialization import CheckpointError
from enlightengan.shipped_weights import (
    STARTER_NAME,
    STARTER_SHA256,
    StarterWeightsMissing,
    model_card_path,
    starter_checkpoint_path,
    verified_starter_checkpoint,
)


def starter_checkpoint() -> Path:
    """The shipped starter's checkpoint directory once its pinned index is checked; raises
    :class:`~enlightengan.serialization.CheckpointError` when it is missing or was changed."""
    try:
        return verified_starter_checkpoint()
    except StarterWeightsMissing as error:
        raise CheckpointError(str(error)) from None


def load_starter_generator() -> Generator:
    """The shipped starter generator: fp32, eval mode, on the CPU."""
    return load_generator(starter_checkpoint(), map_location="cpu")


def load_starter_networks() -> Checkpoint:
    """The shipped starter's config, generator and discriminators (fp32, CPU) as a
    :class:`~enlightengan.checkpoint.Checkpoint` (:func:`enlightengan.checkpoint.load_networks`)."""
    return load_networks(starter_checkpoint(), map_location="cpu")


__all__ = [
    "STARTER_NAME",
    "STARTER_SHA256",
    "load_starter_generator",
    "load_starter_networks",
    "model_card_path",
    "starter_checkpoint",
    "starter_checkpoint_path",
]
