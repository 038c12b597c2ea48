"""Pictures a run writes: a sample grid (input | enhanced) and loss curves, as PNG bytes.

Both return bytes so the caller can put them anywhere :mod:`pipelines.io.storage` reaches
(a local run folder or a bucket). Grids use Pillow only; curves use matplotlib's Agg backend
(no display needed). Train, enhance and evaluate share them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

GRID_GAP = 4


def to_uint8_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """A (3, H, W) tensor in [-1, 1] or an (H, W, 3) uint8 array -> (H, W, 3) uint8."""
    if isinstance(image, torch.Tensor):
        tensor = image.detach().float().cpu()
        if tensor.ndim != 3 or tensor.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) tensor, got {tuple(tensor.shape)}")
        unit = ((tensor.clamp(-1.0, 1.0) + 1.0) * 127.5).round()
        return unit.to(torch.uint8).permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) array, got {array.dtype} {array.shape}")
    return array


def sample_grid_png(
    columns: Mapping[str, Sequence[np.ndarray | torch.Tensor]], caption: str | None = None
) -> bytes:
    """One row per sample, one column per entry of ``columns`` (e.g. input | enhanced).

    Every column must hold the same number of images; images in a row may differ in size
    (cells are as large as the largest image). A column title row and an optional caption
    line are drawn on top.
    """
    names = list(columns)
    if not names:
        raise ValueError("sample_grid_png needs at least one column")
    rows = [len(columns[name]) for name in names]
    if len(set(rows)) != 1 or rows[0] == 0:
        raise ValueError(f"every column needs the same, non-zero number of images, got {rows}")
    cells = [[to_uint8_image(image) for image in columns[name]] for name in names]
    cell_height = max(image.shape[0] for column in cells for image in column)
    cell_width = max(image.shape[1] for column in cells for image in column)
    header = 14 * (2 if caption else 1)
    width = len(names) * cell_width + (len(names) + 1) * GRID_GAP
    height = header + rows[0] * cell_height + (rows[0] + 1) * GRID_GAP
    canvas = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    if caption:
        draw.text((GRID_GAP, 1), caption, fill=(230, 230, 230))
    for column_index, name in enumerate(names):
        left = GRID_GAP + column_index * (cell_width + GRID_GAP)
        draw.text((left, header - 13), name, fill=(230, 230, 230))
        for row_index, image in enumerate(cells[column_index]):
            top = header + GRID_GAP + row_index * (cell_height + GRID_GAP)
            canvas.paste(Image.fromarray(image), (left, top))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def loss_curve_png(
    records: Sequence[Mapping[str, float]],
    terms: Sequence[str],
    x_key: str = "step",
    title: str = "EnlightenGAN training losses",
) -> bytes:
    """One panel per term: the raw values and a moving average, against ``x_key``.

    ``records`` are metric dicts (e.g. the lines of a run's metrics.jsonl); terms missing from
    every record are skipped, non-finite values are left out of the plot.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    present = [term for term in terms if any(term in record for record in records)]
    if not present:
        raise ValueError(f"none of {list(terms)} appear in the records")
    columns = min(3, len(present))
    panel_rows = math.ceil(len(present) / columns)
    figure = Figure(figsize=(4.2 * columns, 2.8 * panel_rows), dpi=100, layout="constrained")
    figure.suptitle(title)
    for index, term in enumerate(present):
        axes = figure.add_subplot(panel_rows, columns, index + 1)
        points = [
            (float(record[x_key]), float(record[term]))
            for record in records
            if term in record and x_key in record and math.isfinite(float(record[term]))
        ]
        if points:
            xs, ys = (np.asarray(values) for values in zip(*points, strict=True))
            axes.plot(xs, ys, linewidth=0.8, alpha=0.45, label=term)
            window = max(1, len(ys) // 20)
            if window > 1:
                smooth = np.convolve(ys, np.ones(window) / window, mode="valid")
                axes.plot(xs[window - 1 :], smooth, linewidth=1.6, label=f"mean of {window}")
        axes.set_title(term, fontsize=10)
        axes.set_xlabel(x_key)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def contact_sheet_png(
    rows: Sequence[Mapping[str, tuple[np.ndarray, str]]],
    row_labels: Sequence[str],
    title: str,
) -> bytes:
    """A before/after sheet: one row per sample, one column per variant (``input``,
    ``enhanced``, baselines), each panel titled with its variant and a caption (e.g. its NIQE).

    ``rows[i]`` maps variant name -> (uint8 (H, W, 3) image, caption); every row has the same
    variants in the same order. ``row_labels`` (e.g. the image keys) label the rows.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("contact_sheet_png needs at least one row")
    variants = list(rows[0])
    aspect = max(image.shape[1] / image.shape[0] for row in rows for image, _ in row.values())
    panel_width = 3.2
    panel_height = panel_width / aspect + 0.55
    figure = Figure(
        figsize=(panel_width * len(variants), panel_height * len(rows) + 0.6),
        dpi=110,
        layout="constrained",
    )
    figure.suptitle(title, fontsize=12)
    grid = figure.subplots(len(rows), len(variants), squeeze=False)
    for row_index, (row, label) in enumerate(zip(rows, row_labels, strict=True)):
        for column_index, variant in enumerate(variants):
            axes = grid[row_index][column_index]
            image, caption = row[variant]
            axes.imshow(to_uint8_image(image))
            axes.set_title(f"{variant}\n{caption}", fontsize=9)
            axes.set_xticks([])
            axes.set_yticks([])
            if column_index == 0:
                axes.set_ylabel(label if len(label) <= 28 else "..." + label[-25:], fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
