"""The model package stays pure PyTorch: no Ray, object storage or Arrow anywhere in it."""

import ast
from pathlib import Path

import enlightengan

FORBIDDEN = {"ray", "fsspec", "s3fs", "boto3", "botocore", "pyarrow"}


def imported_top_level_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_enlightengan_imports_no_ray_storage_or_arrow():
    files = sorted(Path(enlightengan.__file__).parent.rglob("*.py"))
    assert len(files) >= 8
    offenders = {
        str(path.name): sorted(imported_top_level_modules(path.read_text()) & FORBIDDEN)
        for path in files
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_detector_sees_forbidden_imports():
    assert imported_top_level_modules("import ray.data\nfrom pyarrow import fs") == {
        "ray",
        "pyarrow",
    }
