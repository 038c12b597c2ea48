"""``enlightengan evaluate``: NIQE of inputs, enhanced outputs and training-free baselines.

A Ray Data job over an image prefix (local or ``s3://``)::

    keys -> read + decode, score input and baselines (CPU tasks)
         -> Enhancer (actor pool, GPU or CPU) -> score enhanced (CPU tasks) -> driver

Per image it records NIQE (Mittal et al. 2013, lower is better; ``enlightengan.metrics``) and
mean luma of the input, the generator's output, gamma correction and histogram equalisation,
all computed in the same run on the same decoded pixels. The driver writes ``scores.parquet``,
``scores.csv``, ``summary.md`` (means beside the paper's Table I) and ``contact_sheet.png``.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
import sys
import time

import numpy as np

from pipelines.errors import UserError
from pipelines.evaluate.spec import EvaluateJob
from pipelines.inference.backends import choose_backend
from pipelines.inference.checkpoints import SharedCheckpoint, load_checkpoint_files
from pipelines.inference.scores import luma_mean, safe_niqe
from pipelines.inference.stages import (
    TASK_CPUS,
    InferenceSettings,
    RowStatus,
    decoded_images,
    enhance_stage,
)
from pipelines.io.storage import (
    IMAGE_EXTENSIONS,
    check_access,
    list_files,
    resolve,
    write_bytes,
)
from pipelines.ops.ray_runtime import init_ray
from pipelines.ops.resources import WORKER_FLAGS, Request, ensure_placeable
from pipelines.options import STARTER_NAME, Summary, json_value, memory_bytes, storage_of

VARIANTS = ("input", "enhanced", "gamma", "histeq")
# With --compare, a second model's output is scored too, in this column.
COMPARED = "compared"
VARIANT_TITLES = {
    "input": "input",
    "enhanced": "EnlightenGAN",
    "gamma": "gamma",
    "histeq": "histogram equalisation",
    COMPARED: "second model",
}
# The contact sheet's columns, left to right: the input, the training-free baselines, then the
# models, the one evaluated (--checkpoint) last, beside the one it is compared with.
SHEET_ORDER = ("input", "gamma", "histeq", COMPARED, "enhanced")
THUMBNAIL_SIDE = 320
# NIQE, Table I of the EnlightenGAN paper (as transcribed in the reference document).
PAPER_TABLE = {
    "columns": ("EnlightenGAN", "LIME", "NPE", "SRIE", "RetinexNet"),
    "rows": {
        "MEF": (3.232, 3.720, 3.524, 3.475, 4.149),
        "LIME": (3.719, 4.155, 3.905, 3.788, 4.420),
        "NPE": (4.113, 4.268, 3.953, 3.986, 4.485),
        "VV": (2.581, 2.489, 2.524, 2.850, 2.602),
        "DICM": (3.570, 3.846, 3.760, 3.899, 4.200),
        "all": (3.385, 3.629, 3.525, 3.650, 3.920),
    },
}


def thumbnail_png(image: np.ndarray) -> bytes:
    from PIL import Image

    picture = Image.fromarray(image)
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _decoded(batch: dict[str, np.ndarray], index: int) -> np.ndarray:
    height, width = int(batch["height"][index]), int(batch["width"][index])
    return np.frombuffer(batch["pixels"][index], dtype=np.uint8).reshape(height, width, 3)


def _images_of(batch: dict[str, np.ndarray], status: RowStatus) -> dict[int, np.ndarray]:
    """The decoded images of the batch's rows in ``status``, by row index."""
    return {i: _decoded(batch, i) for i, s in enumerate(batch["status"]) if s == status}


def _score_into(batch, variant: str, images: dict[int, np.ndarray], sample_keys) -> None:
    count = len(batch["key"])
    scores = np.full(count, math.nan)
    lumas = np.full(count, math.nan)
    thumbnails = np.empty(count, dtype=object)
    thumbnails[:] = b""
    for index, image in images.items():
        scores[index] = safe_niqe(image)
        lumas[index] = luma_mean(image)
        if batch["key"][index] in sample_keys:
            thumbnails[index] = thumbnail_png(image)
    batch[f"niqe_{variant}"] = scores
    batch[f"luma_{variant}"] = lumas
    batch[f"thumb_{variant}"] = thumbnails


def score_input_and_baselines(batch, sample_keys: frozenset, gamma: float):
    """CPU task before the generator: scores of the input and of each baseline."""
    from enlightengan.baselines import gamma_correction, histogram_equalization

    ready = _images_of(batch, RowStatus.PENDING)
    _score_into(batch, "input", ready, sample_keys)
    _score_into(
        batch, "gamma", {i: gamma_correction(im, gamma) for i, im in ready.items()}, sample_keys
    )
    _score_into(
        batch, "histeq", {i: histogram_equalization(im) for i, im in ready.items()}, sample_keys
    )
    return batch


def keep_input_pixels(batch):
    """CPU task before a compared model: keep the decoded input for the first model."""
    batch["input_pixels"] = batch["pixels"].copy()
    return batch


def score_compared(batch, sample_keys: frozenset):
    """CPU task after the compared model: score its output, then restore the input pixels,
    pending again for the model evaluated."""
    ready = _images_of(batch, RowStatus.ENHANCED)
    _score_into(batch, COMPARED, ready, sample_keys)
    batch["pixels"] = batch.pop("input_pixels")
    status = batch["status"].astype(object)
    status[list(ready)] = RowStatus.PENDING
    batch["status"] = status
    return batch


def score_enhanced(batch, sample_keys: frozenset):
    """CPU task after the generator: score its output, then drop the pixels."""
    ready = _images_of(batch, RowStatus.ENHANCED)
    _score_into(batch, "enhanced", ready, sample_keys)
    for column in ("pixels", "icc_profile", "exif", "output_key", "format", "input_bytes"):
        batch.pop(column, None)
    return batch


def enhancer_cpus(job: EvaluateJob, comparing: bool) -> float:
    """CPUs of each enhancer actor: ``--cpus-per-worker``, else one, or half of one with a GPU
    or with two pools (two pools of one CPU each would hold both cores of a 2-core machine and
    leave none for the decode and scoring tasks: the job would wait forever)."""
    return job.cpus_per_worker or (0.5 if job.gpus_per_worker or comparing else 1.0)


def resource_request(job: EvaluateJob, comparing: bool) -> Request:
    """What the job needs from the cluster: one or two pools of enhancer actors, and room for
    one of its decode and scoring tasks beside them."""
    return Request(
        "evaluate",
        task_cpus=TASK_CPUS,
        workers=job.workers,
        per_worker={
            "CPU": enhancer_cpus(job, comparing),
            "GPU": job.gpus_per_worker,
            "memory": memory_bytes(job.memory_per_worker) or 0,
        },
        pools=2 if comparing else 1,
        flags=WORKER_FLAGS,
        tasks="decode and scoring tasks",
    )


def run_pipeline(
    keys, source, checkpoint_files, job: EvaluateJob, compared_files=None
) -> list[dict]:
    """Build and run the dataset; returns one dict per image (scores and sample thumbnails).
    ``compared_files``: a second model's checkpoint files, scored as the ``compared`` variant."""
    # Twice the sheet's rows: some of the first keys may fail to decode.
    sample_keys = frozenset(keys[: 2 * max(0, job.samples)])
    pairs = [(key, key) for key in keys]
    dataset = decoded_images(pairs, source, job.max_pixels, min(len(keys), 16 * job.workers))
    dataset = dataset.map_batches(
        score_input_and_baselines,
        fn_kwargs={"sample_keys": sample_keys, "gamma": job.gamma},
        batch_size=None,
        num_cpus=0.5,
    )
    settings = InferenceSettings(
        device=job.device,
        backend=job.backend,
        precision=job.precision,
        batch_size=job.batch_size,
        tile_size=job.tile_size or None,
        torch_threads=job.threads_per_worker,
    )

    actor_cpus = enhancer_cpus(job, compared_files is not None)

    shared = []  # the driver keeps the checkpoints' objects until the rows are collected

    def enhance(dataset, files):
        shared.append(SharedCheckpoint.put(files))
        return enhance_stage(
            dataset,
            shared[-1],
            settings,
            workers=job.workers,
            cpus=actor_cpus,
            gpus=job.gpus_per_worker,
            memory=memory_bytes(job.memory_per_worker),
        )

    if compared_files is not None:
        dataset = dataset.map_batches(keep_input_pixels, batch_size=None, num_cpus=0.5)
        dataset = enhance(dataset, compared_files)
        dataset = dataset.map_batches(
            score_compared,
            fn_kwargs={"sample_keys": sample_keys},
            batch_size=None,
            num_cpus=0.5,
        )
    dataset = enhance(dataset, checkpoint_files)
    dataset = dataset.map_batches(
        score_enhanced, fn_kwargs={"sample_keys": sample_keys}, batch_size=None, num_cpus=0.5
    )
    return _collect_rows(dataset)


def _collect_rows(dataset) -> list[dict]:
    rows = []
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        names = list(batch)
        for index in range(len(batch["key"])):
            rows.append({name: json_value(batch[name][index]) for name in names})
    return sorted(rows, key=lambda row: row["key"])


def paper_set_for(choice: str, input_uri: str) -> str | None:
    """The paper table row to show: an explicit name, or the input folder's name (auto)."""
    rows = {name.lower(): name for name in PAPER_TABLE["rows"]}
    if choice.lower() == "none":
        return None
    if choice.lower() != "auto":
        if choice.lower() not in rows:
            raise UserError(f"--paper-set must be one of {', '.join(rows)}, auto or none")
        return rows[choice.lower()]
    return rows.get(posixpath.basename(input_uri.rstrip("/")).lower())


def summarise(rows: list[dict], variants: tuple[str, ...] = VARIANTS) -> dict:
    """Counts and per-variant means over images scored in every variant."""
    scored = [
        row
        for row in rows
        if row["status"] != RowStatus.FAILED
        and all(math.isfinite(row[f"niqe_{v}"]) for v in variants)
    ]
    failed = {}
    for row in rows:
        if row["status"] == RowStatus.FAILED:
            failed[row["reason"]] = failed.get(row["reason"], 0) + 1
    means = {
        variant: {
            "niqe": float(np.mean([row[f"niqe_{variant}"] for row in scored])) if scored else None,
            "luma": float(np.mean([row[f"luma_{variant}"] for row in scored])) if scored else None,
        }
        for variant in variants
    }
    return {"images": len(rows), "scored": len(scored), "failed": failed, "means": means}


def summary_markdown(
    summary: dict, paper_set: str | None, checkpoint: str, source: str, compared: str | None = None
) -> str:
    lines = [
        "# EnlightenGAN evaluation",
        "",
        f"- input: `{source}`",
        f"- checkpoint: `{checkpoint}`",
        *([f"- compared with (`{COMPARED}`): `{compared}`"] if compared else []),
        f"- images: {summary['images']} listed, {summary['scored']} scored in every variant"
        + (f", failed: {summary['failed']}" if summary["failed"] else ""),
        "",
        "NIQE (Mittal et al. 2013; lower is better) and mean luma (0-255), averaged over the "
        "images scored in every variant:",
        "",
        "| variant | NIQE | mean luma |",
        "|---|---|---|",
    ]
    for variant, mean in summary["means"].items():
        niqe_text = f"{mean['niqe']:.3f}" if mean["niqe"] is not None else "n/a"
        luma_text = f"{mean['luma']:.1f}" if mean["luma"] is not None else "n/a"
        lines.append(f"| {variant} | {niqe_text} | {luma_text} |")
    columns, table = PAPER_TABLE["columns"], PAPER_TABLE["rows"]
    lines += [
        "",
        "The paper's NIQE (Table I) for comparison"
        + (
            f"; this set is **{paper_set}**"
            if paper_set
            else " (this input is not one of its sets)"
        )
        + ":",
        "",
        "| set | " + " | ".join(columns) + " | ours (this run) |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    ours = summary["means"]["enhanced"]["niqe"]
    for name, values in table.items():
        mark = f"{ours:.3f}" if name == paper_set and ours is not None else ""
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {mark} |")
    return "\n".join(lines) + "\n"


def _contact_sheet(rows: list[dict], limit: int, titles: dict[str, str]) -> bytes | None:
    from PIL import Image

    from pipelines.plots import contact_sheet_png

    sheet_rows, labels = [], []
    for row in rows:
        if len(sheet_rows) == limit or not all(row.get(f"thumb_{v}") for v in titles):
            continue
        panels = {}
        for variant, variant_title in titles.items():
            with Image.open(io.BytesIO(row[f"thumb_{variant}"])) as picture:
                image = np.asarray(picture.convert("RGB"))
            panels[variant_title] = (
                image,
                f"NIQE {row[f'niqe_{variant}']:.2f}, luma {row[f'luma_{variant}']:.0f}",
            )
        sheet_rows.append(panels)
        labels.append(row["key"])
    if not sheet_rows:
        return None
    title = f"Before / after on {len(sheet_rows)} sample images (NIQE: lower is better)"
    return contact_sheet_png(sheet_rows, labels, title)


def model_titles(job: EvaluateJob) -> dict[str, str]:
    """The contact-sheet titles of the two model columns: given, or ``starter`` for the shipped
    starter model, ``EnlightenGAN`` / ``second model`` for any other checkpoint."""

    def is_starter(uri: str | None) -> bool:
        return uri in (None, STARTER_NAME)

    return {
        "enhanced": job.title or ("starter" if is_starter(job.checkpoint) else "EnlightenGAN"),
        COMPARED: job.compare_title
        or ("starter" if job.compare == STARTER_NAME else VARIANT_TITLES[COMPARED]),
    }


def sheet_titles(variants, titles: dict[str, str] | None = None) -> dict[str, str]:
    """Variant -> column title, in the contact sheet's order (:data:`SHEET_ORDER`)."""
    chosen = {**VARIANT_TITLES, **(titles or {})}
    return {variant: chosen[variant] for variant in SHEET_ORDER if variant in variants}


def write_results(
    rows: list[dict],
    summary: dict,
    markdown: str,
    output,
    samples: int,
    titles: dict[str, str] | None = None,
) -> dict[str, str]:
    """Write the table (Parquet + CSV), summaries and contact sheet; returns name -> URI.
    ``titles``: column titles that replace :data:`VARIANT_TITLES` (e.g. the models')."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    variants = tuple(summary["means"])
    titles = sheet_titles(variants, titles)
    summary = {**summary, "contact_sheet_columns": titles}
    columns = ["key", "status", "reason", "height", "width", "seconds"]
    columns += [f"{kind}_{v}" for v in variants for kind in ("niqe", "luma")]
    table = pa.table({name: [row.get(name) for row in rows] for name in columns})
    written = {}
    parquet = io.BytesIO()
    pq.write_table(table, parquet)
    csv = io.BytesIO()
    pa_csv.write_csv(table, csv)
    files = {
        "scores.parquet": parquet.getvalue(),
        "scores.csv": csv.getvalue(),
        "summary.md": markdown.encode(),
        "summary.json": json.dumps(summary, indent=2).encode(),
    }
    sheet = _contact_sheet(rows, samples, titles)
    if sheet is not None:
        files["contact_sheet.png"] = sheet
    for name, data in files.items():
        target = output.child(name)
        write_bytes(target, data)
        written[name] = target.uri
    return written


def run_evaluate(job: EvaluateJob) -> Summary:
    """Score the job's images (see the module notes); returns the means per variant."""
    choose_backend(job.backend, job.precision, job.device)
    paper_set = paper_set_for(job.paper_set, job.input)
    options = storage_of(job)
    source = check_access(resolve(job.input, options))
    output = check_access(resolve(job.output, options))
    checkpoint = load_checkpoint_files(job.checkpoint, options)
    compared = None if job.compare is None else load_checkpoint_files(job.compare, options)
    keys = list_files(source, extensions=IMAGE_EXTENSIONS)
    if job.limit is not None:
        keys = keys[: job.limit]
    if not keys:
        raise UserError(f"no images under {job.input}")
    print(f"evaluate: {len(keys)} images, checkpoint {checkpoint.description}", file=sys.stderr)
    if compared is not None:
        print(f"evaluate: compared with {compared.description}", file=sys.stderr)
    if job.dry_run:
        return Summary(
            "evaluate",
            {"dry_run": True, "images": len(keys)},
            text=f"dry run: would score {len(keys)} images and write into {job.output}",
        )
    init_ray(job.address, job.num_cpus)
    ensure_placeable(resource_request(job, compared is not None), wait_s=job.wait_for_resources)
    started = time.perf_counter()
    rows = run_pipeline(
        keys, source, checkpoint.files, job, None if compared is None else compared.files
    )
    variants = VARIANTS if compared is None else (*VARIANTS, COMPARED)
    summary = summarise(rows, variants)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    markdown = summary_markdown(
        summary,
        paper_set,
        checkpoint.description,
        source.uri,
        None if compared is None else compared.description,
    )
    written = write_results(rows, summary, markdown, output, job.samples, model_titles(job))
    listing = "\n".join(f"  {name}: {uri}" for name, uri in written.items())
    return Summary(
        "evaluate", {**summary, "written": written}, text=f"{markdown}\nwritten:\n{listing}"
    )
