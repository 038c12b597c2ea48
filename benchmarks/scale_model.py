"""Scale on paper: a bucket of photos through ``enlightengan enhance`` on N GPU nodes, from
measured parts and named assumptions.

Every input is a named field of :class:`Inputs`; its default is either a measurement quoted in
BENCHMARKS.md ("measured") or an assumption ("assumed"), and the GPU's forward rate is a
parameter until ``benchmarks/gpu_check.py`` has run on a GPU. Override any field with
``--set name=value`` or a JSON file (``--inputs``), or take the GPU rate and the CPU codec costs
from a GPU check's JSON (``--gpu-check gpu_check.json``). The script prints one markdown table
per photo size: wall time, what bounds it, S3 requests and their cost, manifest size, memory.

S3 requests per image, counted from the code paths of a first run (no resume):
- listing (``pipelines.io.listing``): one ``ListObjectsV2`` page per 1,000 keys;
- read (``pipelines.inference.stages.read_and_decode``): pyarrow's ``open_input_file`` sends a
  ``HeadObject`` for the size, then one ranged ``GetObject`` (2 GET-class requests);
- write (``pipelines.enhance.sink.write_enhanced`` -> ``storage.write_bytes``): one ``PutObject``
  per output (pyarrow sends objects below its 10 MB part size in one request);
- manifest (``ManifestSink``): one ``PutObject`` per ``--manifest-rows`` rows (256).

Run: ``python benchmarks/scale_model.py [--gpu-rate 1000] [--nodes 8,32,128]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from enlightengan.config import GeneratorConfig  # noqa: E402
from enlightengan.inference import tile_starts  # noqa: E402


@dataclass(frozen=True)
class PhotoSize:
    """One photo size and its measured (or assumed) per-image costs."""

    name: str
    width: int
    height: int
    decode_cpu_s: float
    encode_cpu_s: float
    input_bytes: float
    output_bytes: float


@dataclass(frozen=True)
class Inputs:
    """Everything the model uses; see BENCHMARKS.md ("Scale on paper") for each source."""

    photos: float = 100e6
    # PARAMETER until the GPU check runs: 600x400 images/s of one GPU (the project's goal).
    gpu_images_per_s: float = 1000.0
    gpus_per_node: int = 1  # assumed: the lent device machine's shape
    cores_per_node: int = 16  # assumed: the lent device machine's shape
    cores_reserved_per_node: int = 2  # assumed: actor, Ray daemons, listing and manifest tasks
    node_network_bytes_per_s: float = 1.25e9  # assumed: 10 Gbit/s per node to S3
    s3_list_page_seconds: float = 0.1  # assumed: one ListObjectsV2 page of 1,000 keys
    listing_keys_per_s_cpu: float = 20_829.0  # measured: bench_listing, 200,000 local keys
    list_page_keys: int = 1000
    gets_per_image: float = 2.0  # counted: HeadObject + GetObject
    puts_per_image: float = 1.0  # counted: one PutObject per output
    manifest_rows_per_part: int = 256  # enhance --manifest-rows default
    manifest_bytes_per_row: float = 55.6  # measured: a real run's Parquet parts (zstd)
    resume_index_bytes_per_row: float = 100.0  # the resume index's own estimate (enhance_plan)
    driver_heap_mib: float = 415.0  # measured: bench_listing driver heap, flat in key count
    put_price_per_1000: float = 0.005  # assumed: S3 Standard PUT/COPY/POST/LIST, us-east-1
    get_price_per_1000: float = 0.0004  # assumed: S3 Standard GET/HEAD and others, us-east-1
    put_per_s_per_prefix: float = 3500.0  # AWS: per partitioned prefix
    get_per_s_per_prefix: float = 5500.0  # AWS: per partitioned prefix
    tile_size: int = 1024  # enhance's default --tile-size
    tile_overlap: int = 64
    sizes: tuple[PhotoSize, ...] = (
        # measured: bench_codec medians (CPU-seconds), 600x400 photo at camera JPEG settings
        PhotoSize("600x400", 600, 400, 0.0019, 0.0019, 50_000, 75_000),
        # decode/encode measured at 4000x3000; bytes assumed for a camera JPEG (4 MB in) and
        # the measured out/in ratio of enhance's quality-95 4:4:4 JPEG (1.5x)
        PhotoSize("12 MP (4000x3000)", 4000, 3000, 0.130, 0.100, 4_000_000, 6_000_000),
    )


def processed_pixels(width: int, height: int, inputs: Inputs) -> int:
    """Pixels the generator runs on for one photo, as the Enhancer does it: halved above
    ``halve_above_width``, padded to 16, tiled with overlaps above ``tile_size``."""
    config = GeneratorConfig()
    if config.halve_above_width is not None and width > config.halve_above_width:
        width, height = width // 2, height // 2
    multiple = config.pad_multiple
    padded = [math.ceil(side / multiple) * multiple for side in (height, width)]
    if max(width, height) <= inputs.tile_size:
        return padded[0] * padded[1]
    tile = max(multiple, min(inputs.tile_size, config.halve_above_width or inputs.tile_size))
    tile = tile // multiple * multiple
    tiles = [
        (min(tile, side), len(tile_starts(side, min(tile, side), inputs.tile_overlap, multiple)))
        for side in padded
    ]
    return tiles[0][0] * tiles[0][1] * tiles[1][0] * tiles[1][1]


def per_node_rates(size: PhotoSize, inputs: Inputs) -> dict[str, float]:
    """Images/s one node could sustain if each resource alone were the limit."""
    reference = processed_pixels(600, 400, inputs)
    gpu = inputs.gpu_images_per_s * reference / processed_pixels(size.width, size.height, inputs)
    cores = inputs.cores_per_node - inputs.cores_reserved_per_node
    return {
        "GPU": gpu * inputs.gpus_per_node,
        "CPU decode+encode": cores / (size.decode_cpu_s + size.encode_cpu_s),
        "network": inputs.node_network_bytes_per_s / (size.input_bytes + size.output_bytes),
    }


def scenario(size: PhotoSize, nodes: int, inputs: Inputs) -> dict:
    """Wall time, bound, requests, cost and sizes for ``nodes`` nodes."""
    node = per_node_rates(size, inputs)
    listing = min(
        inputs.listing_keys_per_s_cpu, inputs.list_page_keys / inputs.s3_list_page_seconds
    )
    limits = {name: rate * nodes for name, rate in node.items()}
    limits["listing (one task)"] = listing
    bound = min(limits, key=limits.get)
    rate = limits[bound]
    photos = inputs.photos
    lists = photos / inputs.list_page_keys
    gets = photos * inputs.gets_per_image
    parts = math.ceil(photos / inputs.manifest_rows_per_part)
    puts = photos * inputs.puts_per_image + parts
    cost = (
        lists + puts
    ) * inputs.put_price_per_1000 / 1000 + gets * inputs.get_price_per_1000 / 1000
    return {
        "nodes": nodes,
        "images_per_s": rate,
        "bound": bound,
        "next_bound": sorted(limits, key=limits.get)[1],
        "wall_hours": photos / rate / 3600,
        "gpu_busy": rate / limits["GPU"],
        "requests_millions": {"LIST": lists / 1e6, "GET+HEAD": gets / 1e6, "PUT": puts / 1e6},
        "cost_usd": cost,
        "put_prefixes_needed": math.ceil(
            rate * inputs.puts_per_image / inputs.put_per_s_per_prefix
        ),
        "get_prefixes_needed": math.ceil(
            rate * inputs.gets_per_image / inputs.get_per_s_per_prefix
        ),
        "manifest_parts": parts,
        "manifest_gb": photos * inputs.manifest_bytes_per_row / 1e9,
        "resume_index_task_gb": photos * inputs.resume_index_bytes_per_row / 1e9,
        "driver_heap_mib": inputs.driver_heap_mib,
    }


def table(size: PhotoSize, nodes: list[int], inputs: Inputs) -> str:
    node = per_node_rates(size, inputs)
    lines = [
        f"### {size.name}: per node GPU {node['GPU']:.0f}, CPU {node['CPU decode+encode']:.0f}, "
        f"network {node['network']:.0f} images/s; generator runs on "
        f"{processed_pixels(size.width, size.height, inputs) / 1e6:.2f} MP per photo",
        "",
        "| nodes | images/s | bound by (next) | wall h | GPU busy | LIST / GET+HEAD / PUT (M) "
        "| S3 $ | PUT / GET prefixes | manifest parts, GB | resume index GB | driver MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for count in nodes:
        row = scenario(size, count, inputs)
        requests = row["requests_millions"]
        lines.append(
            f"| {count} | {row['images_per_s']:,.0f} | {row['bound']} ({row['next_bound']}) "
            f"| {row['wall_hours']:.1f} | {row['gpu_busy']:.0%} "
            f"| {requests['LIST']:.2f} / {requests['GET+HEAD']:.0f} / {requests['PUT']:.1f} "
            f"| {row['cost_usd']:,.0f} | {row['put_prefixes_needed']} / "
            f"{row['get_prefixes_needed']} | {row['manifest_parts']:,}, "
            f"{row['manifest_gb']:.1f} | {row['resume_index_task_gb']:.0f} "
            f"| {row['driver_heap_mib']:.0f} |"
        )
    return "\n".join(lines)


def from_gpu_check(path: Path, inputs: Inputs) -> Inputs:
    """The GPU rate (best 600x400 images/s) and the 600x400 codec costs of a GPU check run."""
    results = json.loads(path.read_text())
    rate = results["summary"]["best_enhance_images_per_s"]
    sizes = list(inputs.sizes)
    for row in results.get("codec", {}).get("result", {}).get("rows", []):
        for index, size in enumerate(sizes):
            if (size.width, size.height) == (row["width"], row["height"]):
                sizes[index] = dataclasses.replace(
                    size,
                    decode_cpu_s=row["decode_cpu_s"]["median"],
                    encode_cpu_s=row["encode_cpu_s"]["median"],
                )
    return dataclasses.replace(inputs, gpu_images_per_s=rate, sizes=tuple(sizes))


def with_overrides(inputs: Inputs, values: dict) -> Inputs:
    fields = {field.name: field for field in dataclasses.fields(Inputs) if field.name != "sizes"}
    unknown = set(values) - set(fields)
    if unknown:
        raise SystemExit(f"unknown inputs {sorted(unknown)}; known: {sorted(fields)}")
    converted = {name: type(getattr(inputs, name))(value) for name, value in values.items()}
    return dataclasses.replace(inputs, **converted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="8,32,128", help="comma-separated node counts")
    parser.add_argument("--gpu-rate", type=float, help="600x400 images/s of one GPU")
    parser.add_argument("--gpu-check", type=Path, help="a gpu_check.json to take rates from")
    parser.add_argument("--inputs", type=Path, help="JSON object of Inputs fields to override")
    parser.add_argument("--set", action="append", default=[], help="NAME=VALUE override")
    args = parser.parse_args(argv)
    inputs = Inputs()
    if args.gpu_check:
        inputs = from_gpu_check(args.gpu_check, inputs)
    overrides = json.loads(args.inputs.read_text()) if args.inputs else {}
    overrides.update(item.split("=", 1) for item in args.set)
    if args.gpu_rate is not None:
        overrides["gpu_images_per_s"] = args.gpu_rate
    inputs = with_overrides(inputs, overrides)
    nodes = [int(count) for count in args.nodes.split(",")]
    print(
        f"{inputs.photos:,.0f} photos; one GPU: {inputs.gpu_images_per_s:,.0f} images/s at "
        f"600x400; {inputs.gpus_per_node} GPU and {inputs.cores_per_node} cores per node\n"
    )
    for size in inputs.sizes:
        print(table(size, nodes, inputs) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
