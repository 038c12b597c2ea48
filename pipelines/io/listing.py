"""Listing a prefix as a stream of sorted pages, never the whole listing at once.

- S3: ``ListObjectsV2`` pages of up to 1,000 keys through botocore's paginator. AWS returns
  keys in UTF-8 binary order; stores built on a directory tree (SeaweedFS) walk it folder by
  folder, each folder's names sorted.
- Local folders: a depth-first walk that sorts one directory's entries at a time, comparing a
  folder as ``name/``, which yields the keys in binary order.

Memory is one page (S3), or on a local disk the sorted entries of the folders on the path
being walked, whatever the size of the archive. Either order keeps the keys of one folder that share a stem together, which is what
lets the later checks stream too (see ``pipelines.enhance.plan``). Hidden files and folders (a
part starting with ``.``) are left out, as ``storage.list_files`` does.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from pipelines.errors import UserError
from pipelines.io import s3_clients
from pipelines.io.storage import Location

logger = logging.getLogger(__name__)
PAGE_SIZE = 1000
# The size given for a folder that could not be listed (its key ends with "/").
UNREADABLE = -1


@dataclass(frozen=True)
class ListingSource:
    """Everything a listing task needs, picklable: a local folder, or ``bucket/prefix`` with the
    client settings (whose secrets travel like those of the ``pyarrow`` filesystem the read
    tasks get, and are never printed)."""

    root: str
    s3: s3_clients.S3Access | None = None
    attempts: int = s3_clients.LISTING_RETRY_ATTEMPTS

    @classmethod
    def of(cls, location: Location) -> ListingSource:
        if location.is_local:
            return cls(location.path)
        if not location.is_s3:
            raise UserError(
                f"cannot list {location.uri}: enhance reads local folders and s3:// prefixes"
            )
        return cls(location.path.strip("/"), s3_clients.access_of(location.filesystem))

    def pages(self, page_size: int = PAGE_SIZE) -> Iterator[list[tuple[str, int]]]:
        """``[(relative key, size), ...]`` pages in listing order; a local subfolder that cannot
        be read comes as ``("folder/", UNREADABLE)``."""
        items = self._s3_items() if self.s3 is not None else self._local_items(self.root, "")
        page: list[tuple[str, int]] = []
        for item in items:
            page.append(item)
            if len(page) >= page_size:
                yield page
                page = []
        if page:
            yield page

    def _local_items(
        self, folder: str, prefix: str, ancestors: frozenset = frozenset()
    ) -> Iterator[tuple[str, int]]:
        try:
            here = os.stat(folder)
            with os.scandir(folder) as found:
                names = [entry.name for entry in found if not entry.name.startswith(".")]
        except OSError as error:
            if not prefix:
                raise
            # An unreadable subfolder must not stop the job; it becomes one row with a reason.
            logger.warning("listing skips %s: %s", prefix, error.strerror or error)
            yield prefix, UNREADABLE
            return
        # Symlinked folders are followed, except back into a folder being walked (a loop).
        ancestors = ancestors | {(here.st_dev, here.st_ino)}
        entries = []
        for name in names:
            path = os.path.join(folder, name)
            try:
                info = os.stat(path)
            except OSError:
                continue  # removed since it was listed, or a broken link
            if stat.S_ISDIR(info.st_mode):
                if (info.st_dev, info.st_ino) not in ancestors:
                    entries.append((name + "/", path, 0))
            elif stat.S_ISREG(info.st_mode):
                entries.append((name, None, info.st_size))
        for name, subfolder, size in sorted(entries):
            if subfolder is None:
                yield prefix + name, size
            else:
                yield from self._local_items(subfolder, prefix + name, ancestors)

    def _s3_items(self) -> Iterator[tuple[str, int]]:
        bucket, _, key_prefix = self.root.partition("/")
        key_prefix = f"{key_prefix}/" if key_prefix else ""
        pages = (
            s3_clients.botocore_client(self.s3, self.attempts)
            .get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix=key_prefix)
        )
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    key = item["Key"][len(key_prefix) :]
                    hidden = any(part.startswith(".") for part in key.split("/"))
                    if key and not key.endswith("/") and not hidden:
                        yield key, int(item["Size"])
        except Exception as error:
            raise s3_clients.as_storage_error(error, "listing") from None
