"""Deciding, as keys stream past, what ``enlightengan enhance`` does with each one.

Two Ray Data stages, both running on streamed rows so that nothing scales with the archive:

- :func:`list_work` (one task, a generator): lists the input page by page (sorted keys, see
  ``pipelines.listing``) and yields rows ``key, output_key, status, reason, recorded_bytes``.
  ``status`` is ``failed`` for a key that cannot be written (escapes the output prefix, collides
  with another key's output, lands in ``_manifest/``), else ``pending``. ``recorded_bytes`` is
  the output size an earlier run's manifest recorded for this key (0: none), looked up in the
  :class:`ResumeIndex`.
- :func:`check_finished` (parallel tasks): a pending row whose output exists with exactly the
  recorded size is ``skipped``; existence alone never counts, so a half-written object or an
  orphan without a manifest row is redone.
"""

from __future__ import annotations

import bisect
import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from pyarrow import fs as pafs

from pipelines.datasink import MANIFEST_DIR, ManifestTarget, manifest_row, read_manifest
from pipelines.enhance_actor import ENHANCED, FAILED, PENDING, SKIPPED, object_column
from pipelines.listing import UNREADABLE, ListingSource
from pipelines.storage import safe_join

FORMAT_EXTENSIONS = {"png": (".png",), "jpeg": (".jpg", ".jpeg")}
INDEX_CHUNK_ROWS = 65536
LOADED_CHUNKS = 4
STAT_CHUNK = 32
STAT_THREADS = 16
CHECK_ROWS = 1000
# Reasons decided while listing (never counted by --limit).
UNUSABLE_KEY_REASONS = (
    "unsafe-key",
    "reserved-key",
    "output-key-collision",
    "undecodable-key",
    "unreadable-folder",
)


def output_key_for(key: str, output_format: str) -> str:
    """The output's relative key: the input's, with the extension changed only when
    ``--format`` asks for a format the extension does not name."""
    if output_format == "same":
        return key
    stem, extension = posixpath.splitext(key)
    wanted = FORMAT_EXTENSIONS[output_format]
    return key if extension.lower() in wanted else stem + wanted[0]


class CollisionGuard:
    """Output keys claimed so far that a later key could still claim again.

    Only the extension changes between a key and its output, so two keys can only share an
    output if they share its stem, and the keys starting with ``stem.`` arrive as one run: in
    UTF-8 binary order of whole keys (AWS S3, the local walk) and in the order of stores that
    walk a directory tree with each folder's names sorted (SeaweedFS). A claim is forgotten
    once the keys have moved past its run, so memory stays at a handful of stems. The first key
    in listing order keeps the output."""

    def __init__(self) -> None:
        self._claims: dict[str, set[str]] = {}

    def claim(self, key: str, output_key: str) -> bool:
        """``False`` when an earlier key already writes ``output_key``."""
        passed = [run for run in self._claims if _past(key, run)]
        for run in passed:
            del self._claims[run]
        run = posixpath.splitext(output_key)[0] + "."
        claimed = self._claims.setdefault(run, set())
        if output_key in claimed:
            return False
        claimed.add(output_key)
        return True


def _past(key: str, run: str) -> bool:
    """Whether ``key`` comes after every key of ``run`` in both listing orders (binary, and by
    folder: there a folder named like a stem, ``a/...``, lists between ``a`` and ``a.png``)."""
    if key.startswith(run):
        return False
    return key > run and key.split("/") > run.split("/")


@dataclass
class ResumeIndex:
    """The finished rows of earlier runs, ``(key, output_key) -> output_bytes`` of the latest
    row, as sorted chunks in the object store; ``first_keys[i]`` is chunk ``i``'s first key.

    Keys are looked up in listing order, (nearly) ascending, so a lookup task holds a few
    chunks at a time."""

    first_keys: list[str]
    chunks: list

    def __post_init__(self) -> None:
        self._loaded: dict[int, dict[tuple[str, str], int]] = {}

    def recorded_bytes(self, key: str, output_key: str) -> int:
        chunk = bisect.bisect_right(self.first_keys, key) - 1
        if chunk < 0:
            return 0
        if chunk not in self._loaded:
            # A directory-tree listing visits "a/..." before "a-b.jpg": keep a few chunks.
            if len(self._loaded) >= LOADED_CHUNKS:
                del self._loaded[next(iter(self._loaded))]
            table = ray.get(self.chunks[chunk])
            self._loaded[chunk] = dict(
                zip(
                    zip(table["key"].to_pylist(), table["output_key"].to_pylist(), strict=True),
                    table["output_bytes"].to_pylist(),
                    strict=True,
                )
            )
        return self._loaded[chunk].get((key, output_key), 0)

    def __getstate__(self):
        return {"first_keys": self.first_keys, "chunks": self.chunks}

    def __setstate__(self, state):
        self.__init__(state["first_keys"], state["chunks"])


@ray.remote(num_returns="streaming")
def _index_chunks(filesystem: pafs.FileSystem, manifest_root: str, chunk_rows: int):
    """First the chunks' first keys, then each chunk (so the driver owns them all)."""
    table = read_manifest(
        filesystem, manifest_root, ["key", "output_key", "status", "output_bytes", "run_id"]
    )
    finished = pc.and_(
        pc.is_in(table["status"], pa.array([ENHANCED, SKIPPED])),
        pc.greater(table["output_bytes"], 0),
    )
    table = table.filter(finished).sort_by([("key", "ascending"), ("run_id", "ascending")])
    # Run ids start with their start time, so the last row of a (key, output_key) is the latest.
    table = table.group_by(["key", "output_key"], use_threads=False).aggregate(
        [("output_bytes", "last")]
    )
    table = table.rename_columns(["key", "output_key", "output_bytes"]).sort_by("key")
    keys = table["key"]
    cuts = []
    start = 0
    while start < len(table):
        cuts.append(start)
        end = min(start + chunk_rows, len(table))
        # A key's rows (one per output format used) stay in one chunk.
        while 0 < end < len(table) and keys[end] == keys[end - 1]:
            end += 1
        start = end
    yield [keys[cut].as_py() for cut in cuts]
    for number, cut in enumerate(cuts):
        end = cuts[number + 1] if number + 1 < len(cuts) else len(table)
        yield table.slice(cut, end - cut)


def build_resume_index(
    filesystem: pafs.FileSystem, manifest_root: str, chunk_rows: int = INDEX_CHUNK_ROWS
) -> ResumeIndex | None:
    """The index of an output's manifest, built by one Ray task; ``None`` when nothing is done.

    That task reads the finished rows' keys (about 100 bytes per image); the driver only keeps
    the chunks' first keys."""
    if filesystem.get_file_info(manifest_root).type != pafs.FileType.Directory:
        return None  # a first run: no task to start
    refs = list(_index_chunks.remote(filesystem, manifest_root, chunk_rows))
    first_keys = ray.get(refs[0])
    return ResumeIndex(first_keys, refs[1:]) if first_keys else None


@dataclass(frozen=True)
class KeyRules:
    """Which listed keys are work, and where their outputs go."""

    output_root: str
    output_format: str = "same"
    extensions: tuple[str, ...] | None = None
    excluded_prefix: str | None = None

    def unusable_reason(self, output_key: str) -> str | None:
        try:
            safe_join(self.output_root, output_key)
        except ValueError:
            return "unsafe-key"
        if output_key.split("/", 1)[0] == MANIFEST_DIR:
            return "reserved-key"
        return None


def list_work(
    batch: dict[str, np.ndarray],
    source: ListingSource,
    rules: KeyRules,
    resume: ResumeIndex | None,
    page_size: int,
    record: ManifestTarget | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data stage (one task, whatever its input row): every wanted key under the input,
    ``page_size`` at a time.

    With ``record``, unusable keys go straight to the manifest and only pending rows leave, so
    ``--limit`` counts images; without it (``--dry-run``) they leave too, to be counted. Pages
    are cut after the filters, so a re-run of this task yields the same pages even while
    outputs appear under an output prefix inside the input."""
    guard = CollisionGuard() if rules.output_format != "same" else None
    wanted: list[str] = []
    for page in source.pages(page_size):
        for key, size in page:
            if size == UNREADABLE:
                wanted.append(key)  # kept whatever the filters: _planned records the reason
            elif rules.extensions is not None and not key.lower().endswith(rules.extensions):
                continue
            elif rules.excluded_prefix is not None and key.startswith(rules.excluded_prefix):
                continue
            else:
                wanted.append(key)
            if len(wanted) >= page_size:
                yield from _planned(wanted, rules, guard, resume, record)
                wanted = []
    if wanted:
        yield from _planned(wanted, rules, guard, resume, record)


def _planned(keys, rules: KeyRules, guard, resume, record) -> Iterator[dict[str, np.ndarray]]:
    rows = []
    for key in keys:
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            # A local file name that is not UTF-8: no object key can name it.
            shown = key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            rows.append((shown, shown, FAILED, "undecodable-key", 0))
            continue
        if key.endswith("/"):
            rows.append((key, key, FAILED, "unreadable-folder", 0))
            continue
        output_key = output_key_for(key, rules.output_format)
        reason = rules.unusable_reason(output_key)
        if reason is None and guard is not None and not guard.claim(key, output_key):
            reason = "output-key-collision"
        if reason:
            rows.append((key, output_key, FAILED, reason, 0))
        else:
            recorded = resume.recorded_bytes(key, output_key) if resume else 0
            rows.append((key, output_key, PENDING, "", recorded))
    if record is not None:
        failed = [row for row in rows if row[2] == FAILED]
        if failed:
            record.write(
                "unusable",
                [
                    manifest_row(k, o, FAILED, why, run_id=record.run_id)
                    for k, o, _, why, _ in failed
                ],
            )
            rows = [row for row in rows if row[2] != FAILED]
    if rows:
        yield _plan_columns(rows)


def _plan_columns(rows: list[tuple]) -> dict[str, np.ndarray]:
    keys, output_keys, statuses, reasons, recorded = zip(*rows, strict=True)
    columns = {
        name: object_column(values)
        for name, values in (
            ("key", keys),
            ("output_key", output_keys),
            ("status", statuses),
            ("reason", reasons),
        )
    }
    columns["recorded_bytes"] = np.array(recorded, dtype=np.int64)
    return columns


def file_infos(filesystem: pafs.FileSystem, paths: list[str]) -> list[pafs.FileInfo]:
    """``get_file_info`` of many paths; on object stores (one request per path, which pyarrow
    sends one after another) through parallel requests."""
    if isinstance(filesystem, pafs.LocalFileSystem) or len(paths) <= STAT_CHUNK:
        return filesystem.get_file_info(paths)
    chunks = [paths[start : start + STAT_CHUNK] for start in range(0, len(paths), STAT_CHUNK)]
    with ThreadPoolExecutor(STAT_THREADS) as pool:
        return [info for infos in pool.map(filesystem.get_file_info, chunks) for info in infos]


def check_finished(
    batch: dict[str, np.ndarray],
    output_filesystem: pafs.FileSystem,
    output_root: str,
    record: ManifestTarget | None = None,
) -> dict[str, np.ndarray]:
    """Mark ``skipped`` the pending rows whose output already has the recorded size.

    With ``record`` the skipped rows are written as this task's own manifest part and left
    out of the output; without it (``--dry-run``) they stay in the batch for counting."""
    candidates = [
        index
        for index, (status, recorded) in enumerate(
            zip(batch["status"], batch["recorded_bytes"], strict=True)
        )
        if status == PENDING and recorded > 0
    ]
    if not candidates:
        return batch
    root = output_root.rstrip("/")
    infos = file_infos(
        output_filesystem, [f"{root}/{batch['output_key'][index]}" for index in candidates]
    )
    status = batch["status"].copy()
    skipped = []
    for index, info in zip(candidates, infos, strict=True):
        if info.type == pafs.FileType.File and info.size == batch["recorded_bytes"][index]:
            status[index] = SKIPPED
            skipped.append(index)
    batch = {**batch, "status": status}
    if record is None or not skipped:
        return batch
    record.write(
        "skipped",
        [
            manifest_row(
                batch["key"][index],
                batch["output_key"][index],
                SKIPPED,
                output_bytes=int(batch["recorded_bytes"][index]),
                run_id=record.run_id,
            )
            for index in skipped
        ],
    )
    keep = status != SKIPPED
    return {name: column[keep] for name, column in batch.items()}
