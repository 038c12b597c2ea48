"""The Ray layer's structure, checked on the source: job packages stand side by side on shared
code and never import each other; the shared layers import no job at all."""

from __future__ import annotations

import ast
from pathlib import Path

import pipelines

ROOT = Path(pipelines.__file__).parent
JOBS = ("prepare", "train", "enhance", "evaluate", "export")
SHARED = ("io", "inference", "errors", "plots", "options", "specs")
# Built on the jobs: the demo runs them in turn, the starter's tools build its corpus and ship
# it, ops starts and joins clusters, submits and checks resources; api and cli front them all.
TOOLING = ("demo", "starter", "ops", "api", "cli")


def part_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def imported_parts(path: Path) -> set[str]:
    """The ``pipelines`` sub-packages or modules a file imports, anywhere in it."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "pipelines" and len(pieces) > 1:
                parts.add(pieces[1])
    return parts


def sources(*parts: str) -> list[Path]:
    found = []
    for part in parts:
        package = ROOT / part
        found += sorted(package.rglob("*.py")) if package.is_dir() else [ROOT / f"{part}.py"]
    return found


def test_every_job_and_shared_layer_exists():
    for part in JOBS + SHARED:
        assert sources(part) and all(path.exists() for path in sources(part)), part


def test_every_package_and_module_has_a_place():
    parts = {path.name.removesuffix(".py") for path in ROOT.iterdir()}
    parts -= {"__init__", "__pycache__"}
    assert parts == set(JOBS + SHARED + TOOLING)


def test_no_job_imports_another_job():
    crossings = [
        f"{path.relative_to(ROOT)} imports pipelines.{other}"
        for path in sources(*JOBS)
        for other in imported_parts(path) & set(JOBS)
        if other != part_of(path)
    ]
    assert crossings == []


def test_shared_layers_import_no_job_and_no_tooling():
    forbidden = set(JOBS + TOOLING)
    crossings = [
        f"{path.relative_to(ROOT)} imports pipelines.{other}"
        for path in sources(*SHARED)
        for other in imported_parts(path) & forbidden
    ]
    assert crossings == []
