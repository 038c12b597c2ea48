"""Fine-tuning: a training run that starts from a trained model instead of random weights.

A source (:class:`InitSource`) is the shipped starter model, a native checkpoint, or a
generator in the authors' released layout. It gives the generator's architecture and weights,
and the two discriminators where it has them (a checkpoint written by training does, and so
does the starter, itself such a checkpoint; the authors' files never do). Everything else
starts fresh: the step counter, Adam's moments and the learning-rate schedule.

The run's config (:func:`fine_tune_config`) is the source's own config (the recipe that trained
it; the paper's defaults for the authors' layout) with the user's settings on top, except:

* generator settings that define the weights (:data:`GENERATOR_ARCHITECTURE`) come from the
  source, and a given value that differs is an error (``batch`` and ``sync_batch`` norms hold
  the same weights and may be swapped); so do the discriminators' when the source has them;
* ``optim.lr`` defaults to :data:`FINETUNE_LR` unless it is given: the paper's 1e-4 moves a
  trained model far from where it started within a few Adam steps.

Pure PyTorch: where the source lives (a folder, a bucket) is the caller's business.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from enlightengan.checkpoint import DISCRIMINATOR_NAMES, Checkpoint, save_checkpoint
from enlightengan.config import EnlightenGANConfig, GeneratorConfig
from enlightengan.discriminator import build_discriminators
from enlightengan.generator import Generator
from enlightengan.official_weights import import_official_state_dict
from enlightengan.serialization import CheckpointError, load_weights_only
from enlightengan.training import GANModules

FINETUNE_LR = 2e-5
GENERATOR_ARCHITECTURE = (
    "base_channels",
    "norm",
    "upsample_align_corners",
    "attention_skips",
    "attention_output",
)
DISCRIMINATOR_ARCHITECTURE = ("base_channels", "global_layers", "patch_layers")
SAME_WEIGHTS_NORMS = frozenset({"batch", "sync_batch"})
STARTER_MODEL_CARD = "enlightengan/weights/starter.md"


@dataclass(frozen=True)
class InitSource:
    """A model to start training from, read and checked.

    Attributes:
        kind: ``starter``, ``checkpoint`` or ``official`` (the authors' generator layout).
        uri: where it came from, safe to print and store (no credentials).
        config: the config that trained it; None for the authors' layout (the reference's).
        generator_state: the generator's float32 state dict.
        generator_sha256: sha256 of the file that holds the generator's weights.
        discriminator_states: ``{"global_d": ..., "patch_d": ...}``, or None (fresh ones).
        discriminators_sha256: sha256 of the discriminators' file, when there is one.
        model_card: the source's model card, when it has one.
        resolved: the checkpoint a training run's URI stood for (its latest), when it differs.
    """

    kind: str
    uri: str
    config: EnlightenGANConfig | None
    generator_state: dict[str, torch.Tensor]
    generator_sha256: str
    discriminator_states: dict[str, dict[str, torch.Tensor]] | None = None
    discriminators_sha256: str | None = None
    model_card: str | None = None
    resolved: str | None = None

    @property
    def has_discriminators(self) -> bool:
        return self.discriminator_states is not None

    @property
    def generator_config(self) -> GeneratorConfig:
        return self.config.generator if self.config is not None else GeneratorConfig()

    def record(self) -> dict[str, Any]:
        """What the run's config.json says about its start (JSON, no credentials)."""
        return {
            "source": self.uri,
            "kind": self.kind,
            "sha256": self.generator_sha256,
            "discriminators": "loaded" if self.has_discriminators else "fresh",
            "discriminators_sha256": self.discriminators_sha256,
            "model_card": self.model_card,
            "resolved": self.resolved,
        }


def discriminator_line(record: Mapping[str, Any]) -> str:
    """The one line saying whether the discriminators come from the source."""
    if record.get("discriminators") == "loaded":
        return "discriminators: loaded from the source"
    return "discriminators: fresh (source has none)"


def starter_source() -> InitSource:
    """The shipped starter model, a checkpoint like any other (with its discriminators when
    this release ships them), once its pinned index is checked."""
    from enlightengan.checkpoint import load_networks
    from enlightengan.shipped_weights import (
        StarterWeightsMissing,
        starter_checkpoint_path,
        verified_starter_index,
    )

    try:
        index = verified_starter_index()
    except StarterWeightsMissing as error:
        raise CheckpointError(str(error)) from None
    source = checkpoint_source(load_networks(starter_checkpoint_path()), "starter", index)
    return replace(source, kind="starter", model_card=STARTER_MODEL_CARD)


def checkpoint_source(
    checkpoint: Checkpoint, uri: str, index: Mapping[str, Any], resolved: str | None = None
) -> InitSource:
    """A native checkpoint (its networks, as :func:`enlightengan.checkpoint.load_networks`
    reads them); ``index`` is its ``checkpoint.json``, whose sha256s identify the weights;
    ``resolved``: which checkpoint ``uri`` named (a training run names its latest)."""
    states = checkpoint.network_states
    has_discriminators = all(name in states for name in DISCRIMINATOR_NAMES)
    files = index["files"]
    return InitSource(
        kind="checkpoint",
        uri=uri,
        config=checkpoint.config,
        generator_state=states["generator"],
        generator_sha256=files["generator.pt"]["sha256"],
        discriminator_states=(
            {name: states[name] for name in DISCRIMINATOR_NAMES} if has_discriminators else None
        ),
        discriminators_sha256=(
            files["discriminators.pt"]["sha256"] if has_discriminators else None
        ),
        resolved=resolved,
    )


def official_source(data: bytes, uri: str) -> InitSource:
    """A generator ``.pth`` in the authors' layout (the conversion of ``import-official``)."""
    state = import_official_state_dict(load_weights_only(io.BytesIO(data), "cpu", uri))
    return InitSource(
        kind="official",
        uri=uri,
        config=None,
        generator_state=state,
        generator_sha256=hashlib.sha256(data).hexdigest(),
    )


def fine_tune_config(
    source: InitSource | EnlightenGANConfig | None,
    given: Mapping[str, Any],
    overrides: Mapping[str, Any],
) -> EnlightenGANConfig:
    """The run's config: the source's, then ``given`` (a partial config dict, as a
    ``--model-config`` file holds), then dotted ``overrides``; see the module notes.

    ``source`` may also be the config of a run's stored starting checkpoint (a resumed run:
    its discriminators' architecture is then fixed too) or None (the authors' layout).
    Raises ValueError (one line) when a given setting contradicts the source's architecture.
    """
    if isinstance(source, InitSource):
        base, fixed_discriminators, name = source.config, source.has_discriminators, source.uri
    else:
        base, fixed_discriminators, name = source, source is not None, "run's starting weights"
    base = base or EnlightenGANConfig()
    explicit = _explicit_settings(given, overrides)
    _check_architecture(base, fixed_discriminators, explicit, name)
    data = base.to_dict()
    if "optim.lr" not in explicit:
        data["optim"]["lr"] = FINETUNE_LR
    for section, values in given.items():
        if isinstance(values, Mapping):
            data[section] = {**data.get(section, {}), **values}
        else:
            data[section] = values
    return EnlightenGANConfig.from_dict(data).with_overrides(dict(overrides)).validate()


def lr_origin(given: Mapping[str, Any], overrides: Mapping[str, Any]) -> str:
    """Where a fine-tune run's ``optim.lr`` comes from, for its config.json."""
    if "optim.lr" in _explicit_settings(given, overrides):
        return "given"
    return f"fine-tuning default (enlightengan.finetune.FINETUNE_LR = {FINETUNE_LR:g})"


def _explicit_settings(given: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting the user gave, as ``section.field`` -> value (overrides win)."""
    explicit = {
        f"{section}.{name}": value
        for section, values in given.items()
        if isinstance(values, Mapping)
        for name, value in values.items()
    }
    explicit.update(overrides)
    return explicit


def _check_architecture(
    base: EnlightenGANConfig,
    fixed_discriminators: bool,
    explicit: Mapping[str, Any],
    source_name: str,
) -> None:
    fixed = {f"generator.{name}": getattr(base.generator, name) for name in GENERATOR_ARCHITECTURE}
    if fixed_discriminators:
        fixed.update(
            {
                f"discriminator.{name}": getattr(base.discriminator, name)
                for name in DISCRIMINATOR_ARCHITECTURE
            }
        )
    for key, theirs in fixed.items():
        if key not in explicit or _same(key, explicit[key], theirs):
            continue
        raise ValueError(
            f"{key}={explicit[key]!r} contradicts the --init-from source ({source_name}), whose "
            f"weights have {key}={theirs!r}: drop the setting (the architecture comes from "
            "the source)"
        )


def _same(key: str, given: Any, theirs: Any) -> bool:
    if key == "generator.norm":
        return given == theirs or {given, theirs} <= SAME_WEIGHTS_NORMS
    return given == theirs


def initial_networks(config: EnlightenGANConfig, source: InitSource) -> dict[str, torch.nn.Module]:
    """The generator (and discriminators) the run starts from: built from ``config`` and loaded
    with the source's weights; fresh discriminators are left out."""
    generator = Generator(config.generator)
    try:
        generator.load_state_dict(source.generator_state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"the generator of {source.uri} does not fit generator settings {config.generator}: "
            f"{error}"
        ) from error
    networks: dict[str, torch.nn.Module] = {"generator": generator}
    if source.has_discriminators:
        for name, module in zip(
            DISCRIMINATOR_NAMES, build_discriminators(config.discriminator), strict=True
        ):
            module.load_state_dict(source.discriminator_states[name], strict=True)
            networks[name] = module
    return networks


def save_init_checkpoint(
    directory: str | Path,
    config: EnlightenGANConfig,
    source: InitSource,
    record: Mapping[str, Any] | None = None,
) -> Path:
    """Write the run's starting weights as a checkpoint at step 0 whose trainer state records
    the source (``record``, default :meth:`InitSource.record`); training loads it
    (:func:`apply_init_checkpoint`) when the run has nothing newer."""
    return save_checkpoint(
        directory,
        config=config,
        networks=initial_networks(config, source),
        trainer_state={"step": 0, "epoch": 0, "init_from": dict(record or source.record())},
    )


def apply_init_checkpoint(modules: GANModules, checkpoint: Checkpoint) -> list[str]:
    """Load a starting checkpoint's networks into freshly built ``modules`` (before any DDP
    wrapping); returns the names loaded. Discriminators it lacks keep their fresh weights."""
    loaded = []
    for name, network in modules.trainable().items():
        if name in checkpoint.network_states:
            network.load_state_dict(checkpoint.network_states[name], strict=True)
            loaded.append(name)
    return loaded
