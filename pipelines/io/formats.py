"""File formats the jobs read, as plain constants (no imports, so the CLI can use them)."""

# GIF is listed so that animated files are seen and rejected with a reason, not skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# Decompression-bomb limit for every job that decodes images (Pillow warns from 89 MP).
DEFAULT_MAX_PIXELS = 100_000_000
# What `enlightengan export` writes, and how the generator's static graph behaves.
EXPORT_FORMATS = ("onnx", "torchscript", "official")
ONNX_EXPORTERS = ("dynamo", "legacy")
DEFAULT_ONNX_OPSET = 18
GRAPH_NOTE = (
    "pads to a multiple of pad_multiple inside the graph; never halves inputs wider than "
    "halve_above_width (downscale those first); sides must be >= pad_multiple"
)
