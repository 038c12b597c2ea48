"""The GPU check: what one GPU does for enhance and for training, in one JSON, in under 8 minutes.

Needs only torch, numpy, Pillow and this repository (``enlightengan``, and ``pipelines.io.images``
for the codec, which imports nothing but Pillow and numpy): no Ray. Sections, each with its
own time budget and its own try/except, so a failure costs one section, not the run:

- ``environment``: torch, CUDA, the card, the photo and the VGG weights used;
- ``codec``: Pillow JPEG decode and encode of one photo on one CPU core, as enhance does them;
- ``enhance``: the default-size generator on 600x400 photos, pixels in and out on the device
  (uint8 host-to-device, normalise, forward, back to uint8, device-to-host), for bf16 and fp16
  autocast with channels_last at batch sizes 1..64, and fp32 / NCHW / eager-without-input-check
  rows at one batch size for comparison; images/s and the split of a batch's time;
- ``cuda_graphs``: the same forward captured in a CUDA graph (bf16, channels_last);
- ``compile``: ``torch.compile`` in a child process killed at its budget (compile time counted);
- ``pipeline``: per image, decode + host-to-device + forward + device-to-host + encode at the
  best batch size, and how many CPU cores keep one GPU busy;
- ``training``: :func:`enlightengan.training.training_step` at the paper's size (default
  config: batch 32 on one GPU, 320 crops, full VGG) in samples/s, fp32 and bf16, peak memory.

``--cpu --tiny`` runs every section on the CPU with the tiny config, small images and a few
iterations (CI proves the script with it). Results go to ``--out`` (default
``$OUT/gpu_check.json`` when ``$OUT`` is set, else ``gpu_check.json``).

Run on a GPU: ``python3 benchmarks/gpu_check.py`` (or ``bash benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
for path in (str(ROOT), str(BENCHMARKS)):
    if path not in sys.path:
        sys.path.insert(0, path)

from bench_codec import camera_jpeg, codec_timings, sample_photo  # noqa: E402

import enlightengan.generator as generator_module  # noqa: E402
from enlightengan.config import EnlightenGANConfig, tiny_config  # noqa: E402
from enlightengan.generator import Generator  # noqa: E402
from pipelines.io.images import decode_image, encode_like  # noqa: E402

GOAL_IMAGES_PER_S_PER_H100 = 1000.0
# Reference recipe: 200 epochs of max(914, 1016) samples in about 3 hours on 3 GTX 1080 Ti.
PAPER_SAMPLES = 200 * 1016
PAPER_SECONDS = 3 * 3600.0
PAPER_GPUS = 3
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Plan:
    """Sizes and budgets of one run: the GPU defaults, or ``--tiny`` for a CPU proof."""

    def __init__(self, tiny: bool, device: torch.device):
        # Tiny budgets are loose: its work is small, and every variant should run even on a
        # busy CI machine; the GPU budgets add up to under 8 minutes with start-up.
        self.tiny = tiny
        self.device = device
        self.config = tiny_config() if tiny else EnlightenGANConfig()
        self.width, self.height = (96, 64) if tiny else (600, 400)
        self.codec_sizes = [(96, 64), (400, 300)] if tiny else [(600, 400), (4000, 3000)]
        self.codec_repeats = 2 if tiny else 10
        self.batch_sizes = [1, 2] if tiny else [1, 2, 4, 8, 16, 32, 64]
        self.compare_batch = 2 if tiny else 16
        self.graph_batches = [2] if tiny else [8, 32]
        self.compile_batch = 2 if tiny else 32
        self.compile_backend = "eager" if tiny else "inductor"
        self.compile_modes = ["default"] if tiny else ["default", "max-autotune-no-cudagraphs"]
        self.min_iterations = 2 if tiny else 10
        self.warmup_calls = 1 if tiny else 2
        self.seconds_per_point = 0.2 if tiny else 1.5
        self.train_batch = self.config.optim.batch_size
        self.train_crop = self.config.augment.crop_size
        self.train_steps = 2 if tiny else 8
        self.budgets = {
            "codec": 60.0 if tiny else 25.0,
            "enhance": 60.0 if tiny else 100.0,
            "cuda_graphs": 60.0 if tiny else 40.0,
            "pipeline": 60.0 if tiny else 20.0,
            "enhancer": 60.0 if tiny else 15.0,
            "training": 60.0 if tiny else 90.0,
            "compile": 120.0 if tiny else 130.0,
        }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def autocast(device: torch.device, precision: str, cache_enabled: bool = True):
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache_enabled)


def shape_only_check(images: torch.Tensor) -> None:
    """The generator's input check without its finiteness test, which reads a value back from
    the device (a sync that CUDA graph capture forbids); uint8 pixels are always finite."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) RGB batch, got shape {tuple(images.shape)}")


def without_finite_check():
    return mock.patch.object(generator_module, "check_image_batch", shape_only_check)


def make_forward(model: torch.nn.Module, device: torch.device, precision: str, **autocast_args):
    """uint8 NHWC batch on the device -> uint8 NHWC enhanced batch on the device."""

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        # NHWC pixels permuted to NCHW are channels_last already: no copy is made.
        images = pixels.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        with autocast(device, precision, **autocast_args):
            outputs = model(images)
        values = ((outputs.float() + 1.0) * 127.5).clamp_(0.0, 255.0).round_()
        return values.to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    return forward


def build_generator(plan: Plan, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = Generator(plan.config.generator).to(plan.device).eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def photo_batch(plan: Plan, batch: int, content: str = "photo") -> torch.Tensor:
    """(batch, H, W, 3) uint8: the sample photo repeated, or random pixels (``content="noise"``,
    which spares the compile child importing the photo's package; the network's time does not
    depend on the pixels)."""
    if content == "noise":
        generator = torch.Generator().manual_seed(0)
        shape = (batch, plan.height, plan.width, 3)
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    pixels, _ = sample_photo(plan.width, plan.height)
    return torch.from_numpy(np.stack([pixels] * batch))


def time_calls(
    call: Callable[[], object],
    device: torch.device,
    plan: Plan,
    deadline: float,
    seconds: float | None = None,
) -> tuple[float, int]:
    """Mean seconds per call after warm-up calls; runs at least ``min_iterations`` calls and
    stops after ``seconds`` (default ``seconds_per_point``) or at the section's deadline."""
    seconds = plan.seconds_per_point if seconds is None else seconds
    for _ in range(plan.warmup_calls):
        call()
    synchronize(device)
    calls, started = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        elapsed = time.perf_counter() - started
        if calls >= plan.min_iterations and (elapsed >= seconds or time.monotonic() > deadline):
            break
    synchronize(device)
    return (time.perf_counter() - started) / calls, calls


def split_batch(plan: Plan, forward, batch: int, deadline: float) -> dict:
    """One batch's time: host-to-device (pinned uint8), forward on the device, device-to-host."""
    host = photo_batch(plan, batch)
    if plan.device.type == "cuda":
        host = host.pin_memory()
    on_device = host.to(plan.device)
    with torch.inference_mode():
        result = forward(on_device)
    back = torch.empty_like(result, device="cpu")
    if plan.device.type == "cuda":
        back = back.pin_memory()

    def upload():
        on_device.copy_(host, non_blocking=True)

    def download():
        back.copy_(result, non_blocking=True)

    reset_peak(plan.device)
    with torch.inference_mode():
        forward_s, calls = time_calls(lambda: forward(on_device), plan.device, plan, deadline)
    copy_seconds = plan.seconds_per_point / 5
    h2d_s, _ = time_calls(upload, plan.device, plan, deadline, copy_seconds)
    d2h_s, _ = time_calls(download, plan.device, plan, deadline, copy_seconds)
    return {
        "batch": batch,
        "images_per_s": batch / forward_s,
        "forward_ms_per_batch": forward_s * 1e3,
        "h2d_ms_per_batch": h2d_s * 1e3,
        "d2h_ms_per_batch": d2h_s * 1e3,
        "forward_calls_timed": calls,
        "peak_memory_bytes": peak_bytes(plan.device),
    }


def section_enhance(plan: Plan, deadline: float) -> dict:
    rows = []
    variants = [
        (precision, True, batch, False)
        for precision in ("bf16", "fp16")
        for batch in plan.batch_sizes
    ] + [
        ("fp32", True, plan.compare_batch, False),
        ("bf16", False, plan.compare_batch, False),
        ("bf16", True, plan.compare_batch, True),
    ]
    for precision, channels_last, batch, skip_check in variants:
        if time.monotonic() > deadline:
            rows.append({"precision": precision, "batch": batch, "skipped": "section budget"})
            continue
        model = build_generator(plan, channels_last)
        forward = make_forward(model, plan.device, precision)
        patch = without_finite_check() if skip_check else contextlib.nullcontext()
        with patch:
            row = split_batch(plan, forward, batch, deadline)
        row.update(
            precision=precision,
            memory_format="channels_last" if channels_last else "nchw",
            input_finite_check=not skip_check,
        )
        rows.append(row)
        print(
            f"  enhance {precision} {row['memory_format']} batch {batch}: "
            f"{row['images_per_s']:.1f} img/s",
            flush=True,
        )
    timed = [row for row in rows if "images_per_s" in row]
    best = max(timed, key=lambda row: row["images_per_s"])
    return {"rows": rows, "best": best, "width": plan.width, "height": plan.height}


def section_cuda_graphs(plan: Plan, deadline: float) -> dict:
    if plan.device.type != "cuda":
        return {"skipped": "CUDA graphs need a CUDA device"}
    rows = []
    model = build_generator(plan, channels_last=True)
    forward = make_forward(model, plan.device, "bf16", cache_enabled=False)
    with without_finite_check(), torch.inference_mode():
        for batch in plan.graph_batches:
            static_input = photo_batch(plan, batch).to(plan.device)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    forward(static_input)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                forward(static_input)
            seconds, calls = time_calls(graph.replay, plan.device, plan, deadline)
            rows.append({"batch": batch, "images_per_s": batch / seconds, "calls": calls})
            print(f"  cuda graph bf16 batch {batch}: {batch / seconds:.1f} img/s", flush=True)
    return {"rows": rows, "precision": "bf16", "memory_format": "channels_last"}


def section_compile(plan: Plan, deadline: float, args: argparse.Namespace) -> dict:
    """Each mode in a child process, killed when the section's time is up."""
    rows = []
    for mode in plan.compile_modes:
        remaining = deadline - time.monotonic()
        if remaining < 10:
            rows.append({"mode": mode, "skipped": "section budget"})
            continue
        with tempfile.TemporaryDirectory() as scratch:
            result_path = Path(scratch) / "compile.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--compile-child", mode]
            command += ["--out", str(result_path)] + (["--cpu"] if args.cpu else [])
            command += ["--tiny"] if args.tiny else []
            command += ["--threads", str(args.threads)] if args.threads else []
            started = time.perf_counter()
            outcome = run_child(command, remaining)
            row = json.loads(result_path.read_text()) if result_path.exists() else {}
            row.update(mode=mode, child_seconds=time.perf_counter() - started)
            if outcome:
                row["error"] = outcome
            rows.append(row)
            print(f"  compile {mode}: {row.get('images_per_s', 'no result')} img/s", flush=True)
    return {"rows": rows, "backend": plan.compile_backend, "batch": plan.compile_batch}


def run_child(command: list[str], timeout: float) -> str | None:
    """Run ``command`` in its own process group; None when it succeeded, else what went wrong.

    At the timeout the whole group is killed, the compiler's worker processes with it."""
    child = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return f"killed after {timeout:.0f} s (section budget)"
    return None if child.returncode == 0 else stderr[-2000:]


def compile_child(plan: Plan, mode: str, out: Path) -> None:
    """Compile the bf16 channels_last forward, time the first call and the steady rate."""
    model = build_generator(plan, channels_last=True)
    options = {"backend": plan.compile_backend}
    if plan.compile_backend == "inductor":
        options["mode"] = mode
    compiled = torch.compile(make_forward(model, plan.device, "bf16"), **options)
    pixels = photo_batch(plan, plan.compile_batch, content="noise").to(plan.device)
    with without_finite_check(), torch.inference_mode():
        started = time.perf_counter()
        compiled(pixels)
        synchronize(plan.device)
        compile_s = time.perf_counter() - started
        out.write_text(json.dumps({"compile_s": compile_s}))
        deadline = time.monotonic() + 30
        seconds, calls = time_calls(lambda: compiled(pixels), plan.device, plan, deadline)
    batch = plan.compile_batch
    result = {"compile_s": compile_s, "images_per_s": batch / seconds, "calls": calls}
    out.write_text(json.dumps(result))


def section_enhancer(plan: Plan, deadline: float) -> dict:
    """The project's :class:`enlightengan.inference.Enhancer` as enhance calls it (numpy pixels
    in and out, normalisation on the host), bf16 channels_last, for comparison with the
    on-device pixel path timed in ``enhance``."""
    from enlightengan.inference import Enhancer, EnhancerSettings

    batch = plan.compare_batch
    settings = EnhancerSettings(
        device=str(plan.device),
        precision="bf16",
        channels_last=True,
        batch_size=batch,
        max_pixels_per_batch=batch * plan.width * plan.height,
    )
    enhancer = Enhancer(build_generator(plan, channels_last=True), settings)
    images = list(photo_batch(plan, batch).numpy())
    seconds, calls = time_calls(lambda: enhancer(images), plan.device, plan, deadline)
    print(f"  Enhancer bf16 batch {batch}: {batch / seconds:.1f} img/s", flush=True)
    return {"batch": batch, "precision": "bf16", "images_per_s": batch / seconds, "calls": calls}


def section_codec(plan: Plan, deadline: float) -> dict:
    rows = []
    for width, height in plan.codec_sizes:
        if time.monotonic() > deadline:
            rows.append({"width": width, "height": height, "skipped": "section budget"})
            continue
        rows.append(codec_timings(width, height, plan.codec_repeats))
        print(f"  codec {width}x{height}: {rows[-1]['decode_cpu_s']['median'] * 1e3:.1f} ms decode")
    return {"rows": rows, "cpu_cores_on_machine": os.cpu_count()}


def section_pipeline(plan: Plan, results: dict, deadline: float) -> dict:
    """Per-image split at the best enhance batch: decode, upload, forward, download, encode."""
    best = results["enhance"]["result"]["best"]
    batch = best["batch"]
    pixels, _ = sample_photo(plan.width, plan.height)
    data = camera_jpeg(pixels)
    decode_s, encode_s, count = 0.0, 0.0, 0
    while count < max(plan.min_iterations, batch) and time.monotonic() < deadline:
        started = time.process_time()
        decoded = decode_image(data)
        middle = time.process_time()
        encode_like(decoded.array, decoded.format)
        decode_s += middle - started
        encode_s += time.process_time() - middle
        count += 1
    per_image_ms = {
        "decode_cpu": decode_s / count * 1e3,
        "h2d": best["h2d_ms_per_batch"] / batch,
        "forward": best["forward_ms_per_batch"] / batch,
        "d2h": best["d2h_ms_per_batch"] / batch,
        "encode_cpu": encode_s / count * 1e3,
    }
    device_ms = per_image_ms["h2d"] + per_image_ms["forward"] + per_image_ms["d2h"]
    cpu_ms = per_image_ms["decode_cpu"] + per_image_ms["encode_cpu"]
    return {
        "batch": batch,
        "precision": best["precision"],
        "per_image_ms": per_image_ms,
        "share_of_serial_time": {
            name: value / sum(per_image_ms.values()) for name, value in per_image_ms.items()
        },
        "device_images_per_s": 1e3 / device_ms,
        "cpu_core_images_per_s": 1e3 / cpu_ms,
        "cpu_cores_to_feed_one_device": cpu_ms / device_ms,
        "images_timed_on_cpu": count,
    }


def time_training(plan: Plan, vgg: torch.nn.Module, precision: str, deadline: float) -> dict:
    """Samples/s of :func:`training_step` on random crops already on the device."""
    from enlightengan.training import build_modules, build_optimizers, step_generator, training_step

    config = plan.config
    torch.manual_seed(0)
    modules = build_modules(config, vgg)
    for module in (modules.generator, modules.global_d, modules.patch_d, modules.sfp):
        module.to(plan.device).train()
    optimizers = build_optimizers(modules, config.optim)
    shape = (plan.train_batch, 3, plan.train_crop, plan.train_crop)
    generator = torch.Generator(device=plan.device).manual_seed(0)
    low = torch.rand(shape, device=plan.device, generator=generator) * 0.5 - 1.0
    normal = torch.rand(shape, device=plan.device, generator=generator) * 2.0 - 1.0
    reset_peak(plan.device)
    for step in range(plan.warmup_calls):
        rng = step_generator(config.seed, step)
        training_step(modules, optimizers, low, normal, config, rng, DTYPES[precision])
    synchronize(plan.device)
    started, steps = time.perf_counter(), 0
    while steps < plan.train_steps and (steps < 2 or time.monotonic() < deadline):
        rng = step_generator(config.seed, plan.warmup_calls + steps)
        training_step(modules, optimizers, low, normal, config, rng, DTYPES[precision])
        steps += 1
    synchronize(plan.device)
    seconds = (time.perf_counter() - started) / steps
    samples_per_s = plan.train_batch / seconds
    return {
        "precision": precision,
        "samples_per_s": samples_per_s,
        "seconds_per_step": seconds,
        "steps_timed": steps,
        "peak_memory_bytes": peak_bytes(plan.device),
        "paper_recipe_hours_on_this_device": PAPER_SAMPLES / samples_per_s / 3600,
    }


def section_training(plan: Plan, deadline: float, vgg: torch.nn.Module) -> dict:
    rows = []
    for precision in ("fp32", "bf16"):
        if time.monotonic() > deadline:
            rows.append({"precision": precision, "skipped": "section budget"})
            continue
        rows.append(time_training(plan, vgg, precision, deadline))
        print(f"  training {precision}: {rows[-1]['samples_per_s']:.2f} samples/s", flush=True)
        if plan.device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "rows": rows,
        "batch": plan.train_batch,
        "crop": plan.train_crop,
        "paper_samples_per_s": PAPER_SAMPLES / PAPER_SECONDS,
        "paper_samples_per_s_per_gpu": PAPER_SAMPLES / PAPER_SECONDS / PAPER_GPUS,
    }


def load_vgg(config: EnlightenGANConfig) -> tuple[torch.nn.Module, str]:
    """The frozen VGG the SFP loss uses; random weights (same cost) when none is found."""
    from enlightengan.vgg import VGGFeatures, build_vgg_features

    try:
        return build_vgg_features(config.loss.vgg_weights, config.loss.vgg_flavour), "pretrained"
    except (FileNotFoundError, ValueError) as error:
        note = f"random weights (timing is the same): {str(error).splitlines()[0][:200]}"
        return VGGFeatures(None, config.loss.vgg_flavour), note


def environment(plan: Plan) -> dict:
    info = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": str(plan.device),
        "cpu_count": os.cpu_count(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "photo": sample_photo(plan.width, plan.height)[1],
    }
    if plan.device.type == "cuda":
        properties = torch.cuda.get_device_properties(plan.device)
        info.update(
            card=properties.name,
            total_memory_bytes=properties.total_memory,
            capability=f"{properties.major}.{properties.minor}",
            cuda=torch.version.cuda,
        )
    return info


def write_results(results: dict, out: Path) -> None:
    """Write the JSON atomically; called after every section, so a killed run keeps the rest."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(results, indent=2, default=str))
    os.replace(partial, out)


def run_section(
    results: dict, name: str, budget: float, body: Callable[[float], dict], out: Path
) -> None:
    """Run one section under its budget; its outcome (or error) lands in ``results[name]``."""
    print(f"[{name}] budget {budget:.0f} s", flush=True)
    started = time.monotonic()
    entry: dict = {"budget_s": budget}
    try:
        result = body(started + budget)
        entry.update(status="skipped" if "skipped" in result else "ok", result=result)
    except Exception as error:
        entry.update(status="error", error=f"{type(error).__name__}: {error}")
        entry["traceback"] = traceback.format_exc()[-3000:]
        print(f"  {name} failed: {entry['error']}", flush=True)
    entry["seconds"] = time.monotonic() - started
    results[name] = entry
    write_results(results, out)


def summary(results: dict) -> dict:
    enhance = results.get("enhance", {}).get("result", {})
    best_rates = [enhance.get("best", {}).get("images_per_s", 0.0)]
    for name in ("cuda_graphs", "compile"):
        rows = results.get(name, {}).get("result", {}).get("rows", [])
        best_rates += [row.get("images_per_s", 0.0) for row in rows]
    best = max(best_rates)
    training = results.get("training", {}).get("result", {}).get("rows", [])
    rates = {row["precision"]: row["samples_per_s"] for row in training if "samples_per_s" in row}
    paper = PAPER_SAMPLES / PAPER_SECONDS
    return {
        "best_enhance_images_per_s": best,
        "enhance_vs_goal_1000_per_h100": best / GOAL_IMAGES_PER_S_PER_H100,
        "training_samples_per_s": rates,
        "training_vs_paper_3x1080ti": {name: rate / paper for name, rate in rates.items()},
    }


def default_out() -> Path:
    folder = os.environ.get("OUT")
    return Path(folder) / "gpu_check.json" if folder else Path("gpu_check.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (proof, not speed)")
    parser.add_argument("--tiny", action="store_true", help="tiny config, small images, few steps")
    parser.add_argument("--out", type=Path, default=None, help="JSON results path")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: 1 with --cpu)"
    )
    parser.add_argument("--compile-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: pass --cpu (with --tiny for a quick proof)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    # One thread per process: on a shared CPU more threads spin against other jobs.
    threads = args.threads or (1 if args.cpu else None)
    if threads:
        torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = True
    plan = Plan(args.tiny, device)
    out = args.out or default_out()
    if args.compile_child:
        compile_child(plan, args.compile_child, out)
        return 0
    run_started = time.monotonic()
    results: dict = {"mode": {"cpu": args.cpu, "tiny": args.tiny}}
    results["environment"] = environment(plan)
    vgg, vgg_note = load_vgg(plan.config)
    results["environment"]["vgg_weights"] = vgg_note
    sections = {
        "codec": lambda end: section_codec(plan, end),
        "enhance": lambda end: section_enhance(plan, end),
        "cuda_graphs": lambda end: section_cuda_graphs(plan, end),
        "enhancer": lambda end: section_enhancer(plan, end),
        "pipeline": lambda end: section_pipeline(plan, results, end),
        "training": lambda end: section_training(plan, end, vgg),
        "compile": lambda end: section_compile(plan, end, args),
    }
    for name, body in sections.items():
        run_section(results, name, plan.budgets[name], body, out)
    results["summary"] = summary(results)
    results["total_seconds"] = time.monotonic() - run_started
    write_results(results, out)
    print(f"wrote {out} after {results['total_seconds']:.0f} s", flush=True)
    print(json.dumps(results["summary"], indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
