"""Inference backends: which runtime runs the generator's forward inside the Enhancer.

* ``torch``: the generator itself (eager PyTorch, fp32 or bf16/fp16 autocast, NCHW or
  channels_last), on the CPU or a GPU.
* ``onnxruntime``: the project's own ONNX export of the checkpoint (``pipelines.inference.graphs``) in an
  onnxruntime CPU session, fp32. The Enhancer keeps doing batching, tiling, halving of very wide
  images and the padding to a multiple of 16 (see ``enlightengan.inference``), so the graph only
  ever sees padded batches and every backend returns the same images.
* ``auto``: the fastest of these for the device and the CPU, chosen by the CPU's flags (see
  :func:`choose_backend`).

The ONNX file is exported once per checkpoint and machine, at actor start, into a local cache
keyed by the SHA-256 of the checkpoint's inference files, so a restarted actor (or a second
actor on the same node) loads it instead of exporting again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.options import BACKENDS, PRECISIONS

INSTALL_HINT = "pip install onnx onnxruntime (both are dependencies of enlightengan-ray)"
# Bump when the exported graph changes for the same checkpoint (older cache files are ignored).
EXPORT_FORMAT = "padded-v1"
ONNX_OPSET = 18
# The legacy (TorchScript-based) exporter: it exports the generator much faster than the dynamo
# exporter, and the export is all actor start-up time.
ONNX_EXPORTER = "legacy"
CACHE_ENV = "ENLIGHTENGAN_CACHE_DIR"
# Largest max |onnxruntime - torch| accepted on the start-up check batch (float units, [-1, 1]).
EXPORT_TOLERANCE = 1e-3
CHECK_SHAPE = (1, 3, 48, 64)


@dataclass(frozen=True)
class BackendChoice:
    """The backend and precision that will run, and why (printed at actor start)."""

    backend: str
    precision: str
    reason: str


def cpu_flags() -> set[str]:
    """The flags of the first CPU in /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def onnxruntime_available() -> bool:
    """Whether onnx and onnxruntime are installed, found without importing them: importing
    onnx costs an actor over half a second it needs only when it exports."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def resolve_precision(precision: str, device: str, flags: set[str] | None = None) -> str:
    """``precision`` unless it is ``auto``, which is bf16 autocast on a GPU and on a CPU with
    AMX (which runs bf16 natively; flags from /proc/cpuinfo unless given), else fp32: the one
    rule for inference (:func:`choose_backend`) and training."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16"
    return "bf16" if "amx_bf16" in (cpu_flags() if flags is None else flags) else "fp32"


def choose_backend(
    backend: str, precision: str, device: str, flags: set[str] | None = None
) -> BackendChoice:
    """Resolve ``auto`` backend and precision for this device and CPU (flags from
    /proc/cpuinfo unless given); an explicit choice is kept, or refused with a
    :class:`~pipelines.errors.UserError` when it cannot run.

    ``auto`` on a GPU: torch, bf16 autocast. On a CPU with AMX: torch with bf16 autocast, which
    AMX runs natively. On other CPUs, AVX512-BF16 ones included (whose bf16 convolutions are
    slower than fp32 ones and drift further from fp32): onnxruntime fp32 when it is installed,
    else torch fp32. onnxruntime runs fp32 only.
    """
    from pipelines.errors import UserError

    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.startswith("cuda"):
        if backend == "onnxruntime":
            raise UserError("--backend onnxruntime runs on the CPU: drop --gpus-per-worker")
        return BackendChoice("torch", resolve_precision(precision, device), "GPU")
    if backend == "onnxruntime":
        if precision not in ("auto", "fp32"):
            raise UserError(
                f"--backend onnxruntime runs fp32 only: drop --precision {precision} "
                "or use --backend torch"
            )
        if not onnxruntime_available():
            raise UserError(f"--backend onnxruntime needs onnx and onnxruntime: {INSTALL_HINT}")
        return BackendChoice("onnxruntime", "fp32", "asked for")
    chosen = resolve_precision(precision, device, flags)
    if backend == "torch":
        return BackendChoice("torch", chosen, "asked for")
    if precision in ("bf16", "fp16"):
        return BackendChoice("torch", precision, f"{precision} runs in torch only")
    if chosen == "bf16":
        return BackendChoice("torch", "bf16", "the CPU has AMX: native bf16")
    if onnxruntime_available():
        return BackendChoice("onnxruntime", "fp32", "fastest fp32 runtime on CPUs without AMX")
    return BackendChoice("torch", "fp32", "onnxruntime is not installed")


def checkpoint_digest(checkpoint_dir: str | os.PathLike, names: tuple[str, ...]) -> str:
    """SHA-256 over the named checkpoint files (name and bytes), in order."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(Path(checkpoint_dir) / name, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """``$ENLIGHTENGAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/enlightengan``, else
    ``~/.cache/enlightengan``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "enlightengan"


def cached_onnx_export(checkpoint_dir: str | os.PathLike, generator, cache: Path | None = None):
    """The ONNX file of this checkpoint's generator, exported now unless the cache has it.

    Concurrent actors on one machine take a file lock, so one exports and the others load."""
    from pipelines.inference.checkpoints import CHECKPOINT_FILES_FOR_INFERENCE
    from pipelines.inference.graphs import export_onnx

    key = checkpoint_digest(checkpoint_dir, CHECKPOINT_FILES_FOR_INFERENCE)
    folder = (cache or cache_dir()) / "onnx"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        # A read-only home (some cluster images) still gets a cache per machine.
        folder = Path(tempfile.gettempdir()) / "enlightengan-onnx"
        folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}-{EXPORT_FORMAT}-opset{ONNX_OPSET}.onnx"
    with _locked(folder / f"{key}.lock"):
        if not path.exists():
            handle, partial = tempfile.mkstemp(dir=folder, suffix=".partial.onnx")
            os.close(handle)
            try:
                export_onnx(generator, Path(partial), ONNX_OPSET, ONNX_EXPORTER)
                os.replace(partial, path)
            finally:
                Path(partial).unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class OnnxRuntimeForward:
    """An onnxruntime CPU session with the Enhancer's forward contract: a (B, 3, H, W) float32
    host tensor in [-1, 1], sides multiples of 16, -> the generator's output, same shape."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        threads: int | None = None,
        optimization: str = "all",
        spinning: bool = False,
    ) -> None:
        import onnxruntime

        levels = {
            "disable": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = levels[optimization]
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        # Busy-waiting threads would take CPU from the decode and encode tasks sharing the node.
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if spinning else "0"
        )
        self.session = onnxruntime.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, batch):
        import torch

        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        (output,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(output)


def onnxruntime_forward(checkpoint_dir, generator, threads: int | None) -> OnnxRuntimeForward:
    """Export (or load from the cache) and open the session; check it against torch once.

    A cache file that onnxruntime cannot load, or whose output differs from the generator's,
    is exported again once."""
    import torch

    from pipelines.inference.graphs import check_batch

    probe = check_batch(CHECK_SHAPE)
    with torch.inference_mode():
        expected = generator.float().eval()(probe)
    for attempt in range(2):
        path = cached_onnx_export(checkpoint_dir, generator)
        try:
            forward = OnnxRuntimeForward(path, threads)
            difference = float((forward(probe) - expected).abs().max())
        except Exception as error:  # onnxruntime raises its own types for a bad file
            difference, failure = float("inf"), error
        else:
            failure = None
        if difference <= EXPORT_TOLERANCE:
            return forward
        path.unlink(missing_ok=True)
        if attempt == 1:
            detail = f"{type(failure).__name__}: {failure}" if failure else f"{difference:.3g}"
            raise RuntimeError(f"the ONNX export of the generator does not match it ({detail})")
    raise AssertionError("unreachable")


def build_backend_enhancer(checkpoint_dir, settings, enhancer_settings: dict):
    """The Enhancer for ``settings.backend`` (``InferenceSettings``); ``enhancer_settings``
    are the ``EnhancerSettings`` fields apart from precision, which the choice sets."""
    from enlightengan.checkpoint import load_generator
    from enlightengan.inference import Enhancer, EnhancerSettings

    choice = choose_backend(settings.backend, settings.precision, settings.device)
    print(
        f"enhance backend: {choice.backend}, {choice.precision} ({choice.reason})",
        file=sys.stderr,
    )
    generator = load_generator(checkpoint_dir, map_location="cpu")
    options = {**enhancer_settings, "precision": choice.precision}
    if choice.backend == "onnxruntime":
        forward = onnxruntime_forward(checkpoint_dir, generator, settings.torch_threads)
        options["channels_last"] = False
        return Enhancer(generator, EnhancerSettings(**options), forward=forward)
    return Enhancer(generator, EnhancerSettings(**options))
