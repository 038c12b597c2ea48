"""CPU generator forward on one 600x400 photo: every inference backend, side by side.

Default architecture (8.6 M parameters), batch 1, the darkened scikit-image ``coffee`` photo,
every candidate run through the same ``Enhancer`` (same pixel conversion, padding and cropping)
on the same cores in this one process. The candidates take turns: each repeat runs every
candidate once, in an order that rotates from repeat to repeat, so a burst of load from other
jobs on the machine hits them alike. Reports each candidate's median, fastest and slowest time,
its speed against onnxruntime (fp32, all graph optimisations) and against the default path
(what ``--backend auto --precision auto`` chooses on this machine), its set-up time (export,
session creation, compilation) and its PSNR against fp32 torch in uint8 pixels.

Candidates: torch eager fp32 NCHW / channels_last, bf16 autocast (on CPUs with native bf16,
or with ``--emulated-bf16``), ``torch.compile`` (inductor, with and without freezing; each
compilation is time-boxed by ``--compile-timeout``), onnxruntime on the project's own ONNX
export at each graph optimisation level and thread count, and OpenVINO (fp32, and bf16 where
native) when it is installed.

Weights: ``--checkpoint DIR``; by default Kaiming-initialised convs with BatchNorm statistics
calibrated on real photos (the reference init's residual is so small that the output equals the
input and every PSNR would be infinite).

Run: ``python benchmarks/bench_generator_cpu.py [--repeats 15] [--only onnxruntime,torch]``.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enlightengan.checkpoint import save_checkpoint  # noqa: E402
from enlightengan.config import EnlightenGANConfig  # noqa: E402
from enlightengan.generator import Generator  # noqa: E402
from enlightengan.inference import Enhancer, EnhancerSettings  # noqa: E402
from pipelines.inference import backends as inference_backends  # noqa: E402
from pipelines.inference.stages import InferenceSettings, build_enhancer  # noqa: E402
from tests.enlightengan.textured_generator import darken, psnr, textured_generator  # noqa: E402

REFERENCE = "onnxruntime fp32 all, 2 threads"
DEFAULT = "default (auto/auto)"


class CompileTimeout(Exception):
    pass


def alarm(seconds: int):
    def on_alarm(signum, frame):
        raise CompileTimeout

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)


def torch_candidates(generator: Generator, native_bf16: bool, args) -> dict[str, Callable]:
    def eager(**settings):
        return lambda: Enhancer(generator, EnhancerSettings(tile_size=None, **settings))

    candidates = {
        "torch fp32 NCHW": eager(),
        "torch fp32 channels_last": eager(channels_last=True),
    }
    if native_bf16 or args.emulated_bf16:
        candidates["torch bf16 channels_last"] = eager(precision="bf16", channels_last=True)
        candidates["torch bf16 channels_last, bf16 input layer"] = eager(
            precision="bf16", channels_last=True, float32_input_layer=False
        )
        candidates["torch bf16 NCHW"] = eager(precision="bf16")
    if not args.skip_compile:
        for freezing in (False, True):
            name = f"torch.compile fp32 channels_last{' freezing' if freezing else ''}"
            candidates[name] = compiled(generator, freezing, "fp32", args.compile_timeout)
            if native_bf16:
                name = name.replace("fp32", "bf16")
                candidates[name] = compiled(generator, freezing, "bf16", args.compile_timeout)
    return candidates


def compiled(generator: Generator, freezing: bool, precision: str, timeout: int) -> Callable:
    """A builder of an Enhancer whose forward is the inductor-compiled generator; building it
    runs the first (compiling) call, under ``timeout`` seconds."""

    def build():
        import torch._inductor.config as inductor_config

        inductor_config.freezing = freezing
        torch._dynamo.reset()
        network = generator.to(memory_format=torch.channels_last)
        graph = torch.compile(network, dynamic=False)
        autocast = precision == "bf16"

        def forward(batch: torch.Tensor) -> torch.Tensor:
            inputs = batch.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                return graph(inputs).float()

        enhancer = Enhancer(generator, EnhancerSettings(tile_size=None), forward=forward)
        alarm(timeout)
        try:
            enhancer([darken(data.coffee())])
        finally:
            signal.alarm(0)
        return enhancer

    return build


def onnxruntime_candidates(checkpoint: Path, generator: Generator, cache: Path) -> dict:
    def session(optimization: str, threads: int, spinning: bool = False):
        def build():
            path = inference_backends.cached_onnx_export(checkpoint, generator, cache)
            forward = inference_backends.OnnxRuntimeForward(path, threads, optimization, spinning)
            return Enhancer(generator, EnhancerSettings(tile_size=None), forward=forward)

        return build

    candidates = {REFERENCE: session("all", 2)}
    for level in ("disable", "basic", "extended"):
        candidates[f"onnxruntime fp32 {level}, 2 threads"] = session(level, 2)
    candidates["onnxruntime fp32 all, 1 thread"] = session("all", 1)
    candidates["onnxruntime fp32 all, 2 threads, spinning"] = session("all", 2, True)
    return candidates


def openvino_candidates(checkpoint: Path, generator, cache: Path, native_bf16: bool) -> dict:
    try:
        import openvino
    except ImportError:
        return {}

    def compiled_model(precision: str):
        def build():
            path = inference_backends.cached_onnx_export(checkpoint, generator, cache)
            core = openvino.Core()
            model = core.compile_model(
                core.read_model(str(path)),
                "CPU",
                {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": 2},
            )
            request = model.create_infer_request()

            def forward(batch: torch.Tensor) -> torch.Tensor:
                request.infer({0: batch.numpy()})
                return torch.from_numpy(request.get_output_tensor(0).data.copy())

            return Enhancer(generator, EnhancerSettings(tile_size=None), forward=forward)

        return build

    candidates = {"openvino fp32": compiled_model("f32")}
    if native_bf16:
        candidates["openvino bf16"] = compiled_model("bf16")
    return candidates


def report(durations: dict, outputs: dict, setup_seconds: dict, repeats: int) -> list[dict]:
    """Print the table of medians, ranges, speed ratios and PSNR; return its rows."""
    baseline = outputs["torch fp32 NCHW"]
    medians = {name: statistics.median(values) for name, values in durations.items()}
    print(f"\nafter {repeats} repeats:\n{'candidate':45s} {'median s':>8s} {'min':>6s} "
          f"{'max':>6s} {'vs ort':>6s} {'vs dflt':>7s} {'set-up s':>8s} {'PSNR dB':>7s}")  # fmt: skip
    results = []
    for name in sorted(medians, key=medians.get):
        row = {
            "candidate": name,
            "median_s": medians[name],
            "min_s": min(durations[name]),
            "max_s": max(durations[name]),
            "speed_vs_onnxruntime": medians.get(REFERENCE, float("nan")) / medians[name],
            "speed_vs_default": medians.get(DEFAULT, float("nan")) / medians[name],
            "setup_s": setup_seconds[name],
            "psnr_vs_fp32_db": psnr(outputs[name], baseline),
        }
        results.append(row)
        print(
            f"{name:45s} {row['median_s']:8.3f} {row['min_s']:6.3f} {row['max_s']:6.3f} "
            f"x{row['speed_vs_onnxruntime']:5.2f} x{row['speed_vs_default']:6.2f} "
            f"{row['setup_s']:8.1f} {row['psnr_vs_fp32_db']:7.2f}",
            flush=True,
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per candidate")
    parser.add_argument("--checkpoint", help="checkpoint directory (default: textured weights)")
    parser.add_argument("--only", default="", help="comma-separated name prefixes to keep")
    parser.add_argument("--compile-timeout", type=int, default=300, help="seconds per compile")
    parser.add_argument("--skip-compile", action="store_true", help="no torch.compile")
    parser.add_argument("--emulated-bf16", action="store_true", help="bf16 without native bf16")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-generator-"))
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
        from enlightengan.checkpoint import load_generator

        generator = load_generator(checkpoint, map_location="cpu").eval()
    else:
        config = EnlightenGANConfig()
        generator = textured_generator(config.generator, seed=0)
        checkpoint = save_checkpoint(
            work / "checkpoint",
            config=config,
            networks={"generator": generator},
            trainer_state={"step": 0, "epoch": 0},
        )
    image = darken(data.coffee())
    flags = inference_backends.cpu_flags()
    native_bf16 = bool({"avx512_bf16", "amx_bf16"} & flags)
    choice = inference_backends.choose_backend("auto", "auto", "cpu", flags)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, image {image.shape}, "
        f"native bf16: {native_bf16}; default path: {choice.backend} {choice.precision}"
    )

    def default_path():
        settings = InferenceSettings(backend="auto", precision="auto", torch_threads=2)
        return build_enhancer(checkpoint, settings)

    builders = {DEFAULT: default_path}
    builders |= torch_candidates(generator, native_bf16, args)
    builders |= onnxruntime_candidates(checkpoint, generator, work / "cache")
    builders |= openvino_candidates(checkpoint, generator, work / "cache", native_bf16)
    wanted = [prefix.strip() for prefix in args.only.split(",") if prefix.strip()]
    if wanted:
        keep = {DEFAULT, REFERENCE, "torch fp32 NCHW"}
        builders = {
            name: build
            for name, build in builders.items()
            if name in keep or any(name.startswith(prefix) for prefix in wanted)
        }

    enhancers, setup_seconds, skipped = {}, {}, {}
    for name, build in builders.items():
        started = time.perf_counter()
        try:
            enhancer = build()
            enhancer([image])
        except CompileTimeout:
            skipped[name] = f"compilation over {args.compile_timeout} s"
            continue
        except Exception as error:
            skipped[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
            continue
        setup_seconds[name] = time.perf_counter() - started
        enhancers[name] = enhancer
        print(f"ready: {name} (set-up and first call {setup_seconds[name]:.1f} s)", flush=True)
    for name, why in skipped.items():
        print(f"skipped: {name}: {why}")

    names = list(enhancers)
    durations: dict[str, list[float]] = {name: [] for name in names}
    outputs = {}
    for repeat in range(args.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            outputs[name] = enhancers[name]([image])[0]
            durations[name].append(time.perf_counter() - started)
        # The table after every repeat: a run cut short by a time limit still reports.
        results = report(durations, outputs, setup_seconds, repeat + 1)
        if args.json:
            summary = {"repeats": repeat + 1, "results": results, "skipped": skipped}
            Path(args.json).write_text(json.dumps(summary, indent=2))
    medians = {row["candidate"]: row["median_s"] for row in results}
    if DEFAULT in medians and REFERENCE in medians:
        print(f"\ndefault path ({choice.backend} {choice.precision}) vs onnxruntime: "
              f"x{medians[REFERENCE] / medians[DEFAULT]:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
