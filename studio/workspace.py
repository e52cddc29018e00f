"""A workspace: one directory per study holding the database, the media and derived files."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .store import Store

DB_NAME = "studio.db"


@dataclass
class Workspace:
    root: Path
    store: Store = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.media_dir.mkdir(exist_ok=True)
        self.store = Store(self.root / DB_NAME)

    @classmethod
    def open(cls, root: str | Path) -> "Workspace":
        return cls(Path(root))

    @staticmethod
    def exists(root: str | Path) -> bool:
        return (Path(root) / DB_NAME).is_file()

    @property
    def media_dir(self) -> Path:
        return self.root / "media"

    def media_path(self, relative: str) -> Path:
        return self.root / relative

    @staticmethod
    def media_rel(sha256: str, suffix: str) -> str:
        """Where the original with this hash is stored, relative to the workspace."""
        return (Path("media") / sha256[:2] / f"{sha256}{suffix.lower()}").as_posix()

    def put_media(self, sha256: str, suffix: str, data: bytes) -> str:
        """Store original bytes under their hash (atomic rename); returns the workspace-relative path."""
        rel = Path(self.media_rel(sha256, suffix))
        dest = self.root / rel
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dest, data)
        return rel.as_posix()


def writable_dir(path: str | Path) -> Path:
    """Create ``path`` and prove a file can be written there, before hours of work aim at it (OSError if not)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test.")
    os.close(fd)
    os.unlink(probe)
    return path


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename: readers never see half a file."""
    with atomic_writer(dest) as fh:
        fh.write(data)


def atomic_copy(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` through a temp file of its own: concurrent copies never see half a file."""
    with atomic_writer(dest) as fh, open(src, "rb") as raw:
        shutil.copyfileobj(raw, fh)


@contextlib.contextmanager
def atomic_writer(dest: Path) -> Iterator[BinaryIO]:
    """A file to write piece by piece that appears at ``dest`` whole, or not at all."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
