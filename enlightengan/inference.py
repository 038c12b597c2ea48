"""Inference: enhance images of any size with a trained generator, batched and tiled.

Pixels map to the network's range as ``x / 127.5 - 1`` and back as ``(y + 1) / 2 * 255``
clipped to [0, 255]. The reference then truncates (``astype(uint8)``), which darkens by half a
level on average; the default here rounds to nearest, and ``pixel_rounding="truncate"``
reproduces the reference's PNGs exactly.

Batching: images of the same size are stacked (at most ``batch_size`` images and
``max_pixels_per_batch`` pixels per forward); eval-mode BatchNorm treats every sample alone,
so batching changes results only by floating-point summation order.

Tiling: an image whose longer side exceeds ``tile_size`` is cut into equal tiles that overlap
by at least ``tile_overlap`` pixels; each tile goes through the generator (which pads it to a
multiple of 16 itself) and overlaps are blended with a raised-cosine window, so the network
never sees more than one tile batch at a time whatever the image size (the full-size output
canvas lives in host memory). The U-Net's receptive field is larger than the overlap, so tiled
results differ slightly from whole-image results (tests bound the difference).

Interaction with the reference's halving of images wider than ``halve_above_width`` (2200 px):
an image processed whole is halved inside the generator exactly as in the reference. When an
image is tiled, the Enhancer applies that same decision to the WHOLE image first (average-pool
by 2, enhance, bilinear upsample back), and keeps tiles no wider than ``halve_above_width`` so
the generator never halves a tile a second time. The attention map is linear in the pixels,
so pooling the image equals pooling its attention map, as the generator does.

Pluggable forward: another runtime (an ONNX session, a compiled graph) can replace the
generator's forward through ``Enhancer(generator, settings, forward=...)``. Such a forward only
ever sees host float32 batches whose sides are multiples of ``pad_multiple`` and never wider
than ``halve_above_width``: the Enhancer pads, halves and crops around it exactly as the
generator does inside its own forward, and batching and tiling stay the same.

Reduced precision: with bf16 / fp16 autocast the generator's first convolution, the only layer
that sees the image itself (and its attention map), stays in float32 unless
``float32_input_layer=False``. Rounding the input pixels to bf16's 8-bit mantissa is most of
what bf16 changes: against fp32 it measured 42.9-44.1 dB PSNR on three photos with the
textured test generator, 54.1-56.3 dB with that one layer in float32, for about 7 % more time
on an AMX CPU (BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from enlightengan.checkpoint import (
    INDEX_FILE,
    CheckpointError,
    find_latest_checkpoint,
    load_generator,
    load_official_generator,
)
from enlightengan.config import TONE_TRANSFER_FIELDS, TONE_TRANSFERS, GeneratorConfig
from enlightengan.generator import Generator, check_image_batch, crop_padding, pad_to_multiple
from enlightengan.official_weights import unwrap_module
from enlightengan.shipped_weights import STARTER_NAME, model_card_path
from enlightengan.tone import ToneTransfer

PRECISIONS = ("fp32", "bf16", "fp16")
# The generator's first convolution (the official parameter name), which sees the image.
INPUT_LAYER = "conv1_1"
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PIXEL_ROUNDINGS = ("round", "truncate")
MIN_TILE_SIZE = 64
# (B, 3, H, W) float32 on the host, H and W multiples of pad_multiple -> the generator's output.
ForwardFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EnhancerSettings:
    """How an :class:`Enhancer` runs.

    Attributes:
        device: torch device string (``cpu``, ``cuda``, ``cuda:1``, ...).
        precision: ``fp32``, or ``bf16`` / ``fp16`` autocast on the device (weights stay fp32).
        channels_last: NHWC memory format for weights and inputs (faster on recent CPUs/GPUs).
        batch_size: most images (or tiles) of one size per forward.
        tile_size: longest side processed whole; larger images are tiled. ``None``: never tile.
        tile_overlap: minimum overlap between neighbouring tiles, blended smoothly.
        max_pixels_per_batch: cap on batch * height * width per forward (bounds memory).
        pixel_rounding: ``round`` (default) or ``truncate`` (the reference's ``astype``).
        float32_input_layer: under bf16 / fp16, run the first convolution in float32 (see
            the module notes).
        tone_transfer: ``model`` (default) does what the generator's config says
            (``tone_transfer_strength``; the reference and any model trained without it: the
            generator's output as is), ``on`` transfers the generator's brightening onto the
            input (:mod:`enlightengan.tone`) whatever the config says, ``off`` never does.
        tone_strength: the transfer's strength when it is on; ``None``: the config's (1 when
            the config has none).
        tone_dark_strength: the transfer's strength for very dark inputs
            (:class:`~enlightengan.tone.ToneTransfer` ``dark_strength``); ``None``: the
            config's (``tone_transfer_dark_strength``). Setting ``tone_strength`` alone gives
            every input that one strength.
        tone_denoise: how hard the transfer's base layer is denoised
            (:class:`~enlightengan.tone.ToneTransfer` ``denoise``, in units of the input's
            estimated noise; 0: not at all); ``None``: the config's (``tone_transfer_denoise``).
            The config's noise fade and colour weights always apply.
    """

    device: str = "cpu"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = True
    batch_size: int = 4
    tile_size: int | None = 1024
    tile_overlap: int = 64
    max_pixels_per_batch: int = 4 * 1024 * 1024
    pixel_rounding: Literal["round", "truncate"] = "round"
    float32_input_layer: bool = True
    tone_transfer: Literal["model", "on", "off"] = "model"
    tone_strength: float | None = None
    tone_dark_strength: float | None = None
    tone_denoise: float | None = None

    def validate(self) -> EnhancerSettings:
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device {self.device!r} is not a torch device") from error
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.pixel_rounding not in PIXEL_ROUNDINGS:
            raise ValueError(f"pixel_rounding must be one of {PIXEL_ROUNDINGS}")
        if self.batch_size < 1 or self.max_pixels_per_batch < 1:
            raise ValueError("batch_size and max_pixels_per_batch must be >= 1")
        if self.tile_size is not None:
            if self.tile_size < MIN_TILE_SIZE:
                raise ValueError(f"tile_size must be None or >= {MIN_TILE_SIZE}")
            if not 0 <= self.tile_overlap <= self.tile_size // 4:
                raise ValueError("tile_overlap must be between 0 and tile_size / 4")
        if self.tone_transfer not in TONE_TRANSFERS:
            raise ValueError(
                f"tone_transfer must be one of {TONE_TRANSFERS}, got {self.tone_transfer!r}"
            )
        ToneTransfer(
            strength=1.0 if self.tone_strength is None else self.tone_strength,
            dark_strength=self.tone_dark_strength,
            denoise=0.0 if self.tone_denoise is None else self.tone_denoise,
        ).validate()
        return self

    def tone_for(self, config: GeneratorConfig) -> ToneTransfer | None:
        """The tone transfer these settings ask for with a generator of ``config``."""
        configured = config.tone_transfer_strength
        if self.tone_transfer == "off" or (self.tone_transfer == "model" and configured is None):
            return None
        strength = self.tone_strength if self.tone_strength is not None else configured
        dark_strength = self.tone_dark_strength
        if dark_strength is None and self.tone_strength is None:
            dark_strength = config.tone_transfer_dark_strength
        settings = {
            name.removeprefix("tone_transfer_"): getattr(config, name)
            for name in TONE_TRANSFER_FIELDS
        }
        settings.update(strength=1.0 if strength is None else strength, dark_strength=dark_strength)
        if self.tone_denoise is not None:
            settings["denoise"] = self.tone_denoise
        return ToneTransfer(**settings).validate()


class Enhancer:
    """Enhance uint8 RGB images (H, W, 3), PIL images or float batches with a generator in
    eval mode.

    Load one with :meth:`from_pretrained`, or build it from a generator: the generator is moved
    to ``settings.device`` (and to channels_last when asked) and put in eval mode; the Enhancer
    owns it from then on. ``description`` says where the generator came from.

    ``forward``: run this instead of the generator (see the module notes on its contract); the
    generator then only supplies the config, and ``device``, ``precision`` and
    ``channels_last`` are the forward's business.
    """

    def __init__(
        self,
        generator: Generator,
        settings: EnhancerSettings | None = None,
        forward: ForwardFunction | None = None,
        description: str = "a generator passed in",
    ) -> None:
        self.settings = (settings or EnhancerSettings()).validate()
        self.device = torch.device(self.settings.device)
        generator = unwrap_module(generator).to(self.device).eval()
        if self.settings.channels_last:
            generator = generator.to(memory_format=torch.channels_last)
        self.generator = generator
        self.config: GeneratorConfig = generator.config
        self.external_forward = forward
        self.tone_transfer = self.settings.tone_for(self.config)
        self.description = description

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike = STARTER_NAME,
        settings: EnhancerSettings | None = None,
    ) -> Enhancer:
        """The one way to load a generator from somewhere: ``source`` is ``"starter"`` (the
        model shipped in the package, :mod:`enlightengan.starter`), a local checkpoint
        directory, a directory holding checkpoints such as a training run (the complete one
        with the highest step), or the authors' released generator file (e.g.
        ``200_net_G_A.pth``). Local paths only: ``pipelines.api.load_enhancer`` resolves
        ``s3://`` URIs and chooses the onnxruntime or torch backend, then builds this class.
        The starter is a checkpoint directory like any other, once its pinned index is checked.
        """
        text = os.fspath(source)
        if text == STARTER_NAME:
            from enlightengan.starter import starter_checkpoint

            description = f"the shipped starter model (model card: {model_card_path()})"
            starter = load_generator(starter_checkpoint(), map_location="cpu")
            return cls(starter, settings, description=description)
        if "://" in text:
            raise CheckpointError(
                f"{text} is a URI: enlightengan loads local paths only; "
                "pipelines.api.load_enhancer resolves s3:// URIs"
            )
        path = Path(text)
        if path.is_file():
            generator = load_official_generator(path)
            return cls(generator, settings, description=f"{path} (the authors' weights)")
        if not (path / INDEX_FILE).exists():
            latest = find_latest_checkpoint(path)
            if latest is None:
                raise CheckpointError(
                    f"no complete checkpoint in or under {path}: pass a checkpoint "
                    "directory written by training (it holds checkpoint.json)"
                )
            path = latest
        return cls(load_generator(path, map_location="cpu"), settings, description=str(path))

    def __call__(self, images: Sequence | np.ndarray) -> list:
        """Enhance images; returns one output per input, same size and kind: a uint8
        (H, W, 3) array for an array, an RGB PIL image for a PIL image.

        ``images``: one (H, W, 3) array, an (N, H, W, 3) array, one PIL image, or a sequence
        of (H, W, 3) arrays and PIL images of any sizes (a PIL image of any mode is converted
        to RGB first). Grayscale, RGBA and non-uint8 arrays raise ValueError: convert to 8-bit
        RGB first; anything else raises :class:`ImageTypeError`.
        """
        arrays, from_pil = _as_image_list(images)
        results: list[np.ndarray | None] = [None] * len(arrays)
        groups: dict[tuple[int, int], list[int]] = {}
        for position, array in enumerate(arrays):
            groups.setdefault(array.shape[:2], []).append(position)
        for (height, width), positions in groups.items():
            chunk = 1 if self._needs_tiling(height, width) else self._chunk_size(height, width)
            for start in range(0, len(positions), chunk):
                members = positions[start : start + chunk]
                batch = torch.stack([_to_tensor(arrays[position]) for position in members])
                outputs = self.enhance_tensor(batch)
                if self.tone_transfer is not None:
                    outputs = self._transfer_tone(batch, outputs)
                pixels = self._to_pixels(outputs)
                for position, image in zip(members, pixels, strict=True):
                    results[position] = _to_pil(image) if from_pil[position] else image
        return results  # type: ignore[return-value]

    def enhance_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [-1, 1] -> the generator's output, float32, same shape.

        The output is NOT clamped (like the generator's); clamp to [-1, 1] before turning it
        into pixels. It is returned on the input's device; batches are split, and large images
        tiled, as the settings say.
        """
        check_image_batch(batch)
        height, width = batch.shape[-2:]
        if self._needs_tiling(height, width):
            parts = [self._enhance_whole_image_tiled(batch[i : i + 1]) for i in range(len(batch))]
        else:
            chunk = self._chunk_size(height, width)
            parts = [self._forward(batch[i : i + chunk]) for i in range(0, len(batch), chunk)]
        return torch.cat(parts).to(batch.device)

    def _needs_tiling(self, height: int, width: int) -> bool:
        return self.settings.tile_size is not None and max(height, width) > self.settings.tile_size

    def _chunk_size(self, height: int, width: int) -> int:
        by_pixels = self.settings.max_pixels_per_batch // (height * width)
        return max(1, min(self.settings.batch_size, by_pixels))

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.settings.precision == "fp32":
            return contextlib.nullcontext()
        dtype = AUTOCAST_DTYPES[self.settings.precision]
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @contextlib.contextmanager
    def _float32_input_layer(self):
        """Under autocast, the generator's first convolution runs in float32 while this lasts
        (hooks, removed on exit: the generator itself is not changed)."""
        if self.settings.precision == "fp32" or not self.settings.float32_input_layer:
            yield
            return
        device_type, enabled = self.device.type, []

        def before(module, args):
            enabled.append(torch.is_autocast_enabled(device_type))
            torch.set_autocast_enabled(device_type, False)
            return (args[0].float(), *args[1:])

        def after(module, args, output):
            torch.set_autocast_enabled(device_type, enabled.pop())

        layer = getattr(self.generator, INPUT_LAYER)
        hooks = [layer.register_forward_pre_hook(before), layer.register_forward_hook(after)]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """One generator forward on the device; float32 result on the host."""
        if self.external_forward is not None:
            return self._external_forward(batch)
        inputs = batch.to(self.device, dtype=torch.float32, non_blocking=True)
        if self.settings.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast(), self._float32_input_layer():
            outputs = self.generator(inputs)
        return outputs.float().cpu().contiguous()

    def _external_forward(self, batch: torch.Tensor) -> torch.Tensor:
        """The pluggable forward, with the generator's own halving and padding around it."""
        height, width = batch.shape[-2:]
        inputs = batch.detach().to("cpu", torch.float32)
        halve_above = self.config.halve_above_width
        halve = halve_above is not None and width > halve_above
        if halve:
            inputs = F.avg_pool2d(inputs, 2)
        padded, padding = pad_to_multiple(inputs, self.config.pad_multiple)
        outputs = crop_padding(self.external_forward(padded.contiguous()), padding)
        if halve:
            outputs = F.interpolate(
                outputs,
                size=(height, width),
                mode="bilinear",
                align_corners=self.config.upsample_align_corners,
            )
        return outputs.float().contiguous()

    def _enhance_whole_image_tiled(self, image: torch.Tensor) -> torch.Tensor:
        """One (1, 3, H, W) image, tiled, with the reference's halving decided on the whole."""
        height, width = image.shape[-2:]
        halve_above = self.config.halve_above_width
        tile_size = self.settings.tile_size
        if halve_above is not None:
            tile_size = min(tile_size, halve_above)
        image = image.detach().to("cpu", torch.float32)
        if halve_above is not None and width > halve_above:
            halved = self._enhance_tiles(F.avg_pool2d(image, 2), tile_size)
            return F.interpolate(
                halved,
                size=(height, width),
                mode="bilinear",
                align_corners=self.config.upsample_align_corners,
            )
        return self._enhance_tiles(image, tile_size)

    def _enhance_tiles(self, image: torch.Tensor, tile_size: int) -> torch.Tensor:
        """Equal tiles of at most ``tile_size`` per side, batched, blended by their windows.

        The image is reflection-padded to a multiple of ``pad_multiple`` exactly as the
        generator pads a whole image, and tiles start on multiples of it, so every tile sees
        the same max-pool grid and border padding as a whole-image forward would; the
        generator then never pads a tile. The result is cropped back.
        """
        multiple = self.config.pad_multiple
        padded, padding = pad_to_multiple(image, multiple)
        height, width = padded.shape[-2:]
        tile_size = max(multiple, tile_size // multiple * multiple)
        tile_height, tile_width = min(tile_size, height), min(tile_size, width)
        overlap = self.settings.tile_overlap
        tops = tile_starts(height, tile_height, overlap, multiple)
        lefts = tile_starts(width, tile_width, overlap, multiple)
        vertical = {top: blend_window(top, tile_height, height, overlap) for top in tops}
        horizontal = {left: blend_window(left, tile_width, width, overlap) for left in lefts}
        canvas = torch.zeros_like(padded)
        total_weight = torch.zeros((1, 1, height, width), dtype=padded.dtype)
        corners = [(top, left) for top in tops for left in lefts]
        chunk = self._chunk_size(tile_height, tile_width)
        for start in range(0, len(corners), chunk):
            members = corners[start : start + chunk]
            tiles = torch.cat(
                [padded[..., t : t + tile_height, s : s + tile_width] for t, s in members]
            )
            outputs = self._forward(tiles)
            for output, (top, left) in zip(outputs, members, strict=True):
                weight = vertical[top][:, None] * horizontal[left][None, :]
                rows, cols = slice(top, top + tile_height), slice(left, left + tile_width)
                canvas[0, :, rows, cols] += output * weight
                total_weight[0, 0, rows, cols] += weight
        return crop_padding(canvas / total_weight, padding)

    def _transfer_tone(self, batch: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """The generator's brightening moved onto the input batch, in the network's range."""
        inputs = (batch.float().cpu() + 1.0) * 127.5
        enhanced = (outputs.float().cpu().clamp(-1.0, 1.0) + 1.0) * 127.5
        return self.tone_transfer(inputs, enhanced) / 127.5 - 1.0

    def _to_pixels(self, outputs: torch.Tensor) -> list[np.ndarray]:
        values = ((outputs.float().cpu() + 1.0) / 2.0 * 255.0).clamp_(0.0, 255.0)
        values = values.round_() if self.settings.pixel_rounding == "round" else values.floor_()
        pixels = values.to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [np.ascontiguousarray(image) for image in pixels]


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Start offsets of equal tiles covering ``length``; neighbours overlap by >= ``overlap``.

    With ``length`` and ``tile`` multiples of ``multiple``, every start is one too.
    """
    if length <= tile:
        return [0]
    stride = max(multiple, (tile - overlap) // multiple * multiple)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def blend_window(start: int, tile: int, length: int, overlap: int) -> torch.Tensor:
    """1-D weights of one tile: a raised-cosine ramp over ``overlap`` pixels on each side that
    touches another tile, 1 elsewhere (and on image borders). Always > 0."""
    weights = torch.ones(tile)
    ramp_length = min(overlap, tile // 2)
    if ramp_length == 0:
        return weights
    positions = (torch.arange(ramp_length, dtype=torch.float32) + 0.5) / ramp_length
    ramp = 0.5 - 0.5 * torch.cos(math.pi * positions)
    if start > 0:
        weights[:ramp_length] = ramp
    if start + tile < length:
        weights[tile - ramp_length :] = torch.minimum(weights[tile - ramp_length :], ramp.flip(0))
    return weights


class ImageTypeError(TypeError, ValueError):
    """An input that is neither a numpy array nor a PIL image (a ValueError too, as every other
    bad input is)."""


def _as_image_list(images: Sequence | np.ndarray) -> tuple[list[np.ndarray], list[bool]]:
    """The inputs as uint8 RGB arrays, and which of them were PIL images."""
    if isinstance(images, np.ndarray):
        candidates = list(images) if images.ndim == 4 else [images]
    elif _is_pil(images):
        candidates = [images]
    elif isinstance(images, Sequence) and not isinstance(images, str | bytes):
        candidates = list(images)
    else:
        raise ValueError(f"expected numpy images, got {type(images).__name__}")
    from_pil = [_is_pil(image) for image in candidates]
    arrays = [
        np.asarray(image.convert("RGB")) if pil else image
        for image, pil in zip(candidates, from_pil, strict=True)
    ]
    for position, image in enumerate(arrays):
        _check_pixels(image, position)
    return arrays, from_pil


def _check_pixels(image: object, position: int) -> None:
    where = f"image {position}"
    if not isinstance(image, np.ndarray):
        raise ImageTypeError(
            f"{where}: expected a numpy array, got {type(image).__name__}: pass uint8 "
            "(H, W, 3) numpy arrays or PIL images"
        )
    if image.ndim == 2:
        raise ValueError(f"{where}: grayscale (H, W) image; convert it to RGB (H, W, 3) first")
    if image.ndim != 3 or image.shape[2] != 3:
        kind = "RGBA" if image.ndim == 3 and image.shape[2] == 4 else "not RGB"
        raise ValueError(f"{where}: shape {image.shape} is {kind}; expected RGB (H, W, 3)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{where}: empty image of shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{where}: dtype {image.dtype}; expected uint8 pixels")


def _is_pil(image: object) -> bool:
    """A PIL image, recognised without importing PIL (not a dependency of this package)."""
    return type(image).__module__.startswith("PIL.")


def _to_pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array, mode="RGB")


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1] as x / 127.5 - 1."""
    array = np.ascontiguousarray(image)
    if not array.flags.writeable:
        # torch refuses to alias read-only memory (e.g. Arrow buffers) without a warning.
        array = array.copy()
    pixels = torch.from_numpy(array).permute(2, 0, 1)
    return pixels.to(torch.float32) / 127.5 - 1.0
