"""Ingest photos into a workspace from the three layouts face datasets come in.

* a folder per person: ``SOURCE/<person>/**/*.jpg|png|webp``
* the CrossFaceID / InstantID training JSONL (``image_file``, ``additional_feature``, ``bbox``,
  ``landmarks``, ``insightface_feature_file``)
* a metadata table (CSV or parquet: file name, person, optional caption), the shape Hugging Face
  datasets export, including parquet files whose image column holds the bytes.

Every input is validated through :mod:`studio.images`, hashed, and stored once. Bad inputs are
recorded with a reason and the batch goes on; re-ingesting a source adds nothing.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .attributes import compile_vocabulary, tag_image, vocabulary
from .captions import check_caption
from .parallel import bounded_map
from .images import IMAGE_SUFFIXES, ImageError, decode, read_bytes, sha256_bytes
from .workspace import Workspace

log = logging.getLogger(__name__)

PERSON_FIELDS = ("person", "person_id", "person_name", "identity", "id_name", "label", "name")
FILE_FIELDS = ("file_name", "image_file", "image", "file", "path", "filename", "image_path")
CAPTION_FIELDS = ("caption", "additional_feature", "text", "prompt")

Progress = Callable[..., Iterable]


@dataclass
class Item:
    """One input: where it came from, its bytes (or a path to read), the person and metadata."""

    source: str
    person: str | None
    path: Path | None = None
    data: bytes | None = None
    caption: str | None = None
    meta: dict | None = None
    suffix: str = ""
    error: ImageError | None = None  # problems found while listing the source


@dataclass
class IngestReport:
    added: int = 0
    duplicates: int = 0
    already: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "added": self.added, "duplicates": self.duplicates, "already_ingested": self.already,
            "rejected": self.rejected, "rejected_by_reason": dict(self.reasons), "problems": self.problems,
        }


# -- listing sources -----------------------------------------------------------------------------

def _scan(directory: Path, on_error: Callable[[Path, OSError], None]) -> Iterator[Path]:
    """Files under a directory (sorted, hidden ones skipped); unreadable sub-folders are reported."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        on_error(directory, exc)
        return
    for e in entries:
        if e.name.startswith("."):
            continue
        try:
            is_dir = e.is_dir()
        except OSError as exc:
            on_error(Path(e.path), exc)
            continue
        if is_dir:
            yield from _scan(Path(e.path), on_error)
        else:
            yield Path(e.path)


def _dir_error(path: Path, exc: OSError) -> Item:
    return Item(source=str(path), person=None, error=ImageError(path, "unreadable_directory", exc.strerror or str(exc)))


def iter_folders(root: Path) -> Iterator[Item]:
    """``root/<person>/...``: the person is the top-level folder name."""
    errors: list[Item] = []
    try:
        top = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        yield _dir_error(root, exc)
        return
    for entry in top:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()
        except OSError as exc:
            yield _dir_error(path, exc)
            continue
        if not is_dir:
            yield Item(source=str(path.resolve()), person=None, error=ImageError(
                path, "no_person", "file sits directly in the source folder; put photos in a folder per person"))
            continue
        for f in _scan(path, lambda p, exc: errors.append(_dir_error(p, exc))):
            yield Item(source=str(f.resolve()), person=entry.name, path=f, suffix=f.suffix)
        yield from errors
        errors.clear()


def _first(record: dict, names: Iterable[str]):
    for n in names:
        if n in record and record[n] not in (None, ""):
            return record[n]
    return None


def iter_jsonl(jsonl: Path) -> Iterator[Item]:
    """The CrossFaceID training layout; relative paths are relative to the JSONL's folder."""
    base = jsonl.parent
    try:
        fh = jsonl.open("r", encoding="utf-8")
    except OSError as exc:
        yield Item(source=str(jsonl), person=None, error=ImageError(jsonl, "unreadable", exc.strerror or str(exc)))
        return
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{jsonl}:{lineno}"
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
            except ValueError as exc:
                yield Item(source=where, person=None, error=ImageError(where, "malformed_jsonl", str(exc)))
                continue
            image_file = rec.get("image_file")
            if not image_file:
                yield Item(source=where, person=None, error=ImageError(where, "missing_field", "no 'image_file' field"))
                continue
            path = Path(image_file)
            path = path if path.is_absolute() else base / path
            person = _first(rec, PERSON_FIELDS) or path.parent.name
            meta = {k: rec[k] for k in ("bbox", "landmarks") if k in rec}
            if rec.get("insightface_feature_file"):
                feat = Path(rec["insightface_feature_file"])
                meta["insightface_feature_file"] = str(feat if feat.is_absolute() else base / feat)
            meta["jsonl"] = where
            caption = rec.get("additional_feature") or _first(rec, CAPTION_FIELDS)
            yield Item(source=str(path.resolve()), person=str(person), path=path, caption=caption,
                       meta=meta, suffix=path.suffix)


def iter_table(table: Path, file_column: str | None = None, person_column: str | None = None,
               caption_column: str | None = None) -> Iterator[Item]:
    """A CSV or parquet metadata table; an image column may hold ``{"bytes", "path"}`` (HF export)."""
    import pandas as pd

    try:
        df = pd.read_parquet(table) if table.suffix.lower() == ".parquet" else pd.read_csv(table)
    except Exception as exc:  # pandas raises many types for a bad table
        yield Item(source=str(table), person=None, error=ImageError(table, "unreadable_table", str(exc).splitlines()[0]))
        return
    cols = list(df.columns)
    fcol = file_column or next((c for c in FILE_FIELDS if c in cols), None)
    pcol = person_column or next((c for c in PERSON_FIELDS if c in cols), None)
    ccol = caption_column or next((c for c in CAPTION_FIELDS if c in cols), None)
    for name, col in (("file", fcol), ("person", pcol), ("caption", ccol)):
        if col is not None and col not in cols:
            yield Item(source=str(table), person=None, error=ImageError(table, "missing_column", f"no column {col!r} (columns: {cols})"))
            return
    if fcol is None:
        yield Item(source=str(table), person=None, error=ImageError(
            table, "missing_column", f"no file column: expected one of {FILE_FIELDS} or --file-column (columns: {cols})"))
        return
    for i, row in enumerate(df.to_dict("records")):
        cell = row[fcol]
        where = f"{table}#row={i}"
        caption = row.get(ccol) if ccol else None
        caption = caption if isinstance(caption, str) and caption else None
        person = row.get(pcol) if pcol else None
        person = None if person is None or (isinstance(person, float) and person != person) else str(person)
        if isinstance(cell, dict) and cell.get("bytes") is not None:
            name = cell.get("path") or ""
            yield Item(source=where, person=person, data=bytes(cell["bytes"]), caption=caption,
                       meta={"table": where, "path": name}, suffix=Path(name).suffix or ".jpg")
            continue
        if isinstance(cell, dict):
            cell = cell.get("path")
        if not isinstance(cell, str) or not cell:
            yield Item(source=where, person=None, error=ImageError(where, "missing_field", f"empty {fcol!r}"))
            continue
        path = Path(cell)
        path = path if path.is_absolute() else table.parent / path
        if person is None and path.parent != table.parent:
            person = path.parent.name
        if person is None:
            yield Item(source=where, person=None, error=ImageError(where, "no_person", f"no person for {cell!r}: add a person column"))
            continue
        yield Item(source=str(path.resolve()), person=person, path=path, caption=caption,
                   meta={"table": where}, suffix=path.suffix)


def iter_source(source: Path, **table_columns) -> Iterator[Item]:
    """Pick the reader from what ``source`` is: a JSONL, a table, a folder of JSONLs, or person folders."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"ingest source {source} does not exist")
    suffix = source.suffix.lower()
    if source.is_file():
        if suffix == ".jsonl":
            return iter_jsonl(source)
        if suffix in (".csv", ".parquet"):
            return iter_table(source, **table_columns)
        raise ValueError(f"{source}: unknown source file type {suffix!r}; expected .jsonl, .csv, .parquet or a folder")
    jsonls = sorted(source.glob("*.jsonl"))
    if jsonls:
        return (item for j in jsonls for item in iter_jsonl(j))
    return iter_folders(source)


# -- ingesting --------------------------------------------------------------------------------------

@dataclass
class _Prepared:
    item: Item
    sha: str | None = None
    data: bytes | None = None
    width: int = 0
    height: int = 0
    mode: str = ""
    rotated: bool = False
    error: ImageError | None = None


def _prepare(item: Item) -> _Prepared:
    """Read, validate and hash one input; runs in worker threads (PIL decoding releases the GIL)."""
    if item.error is not None:
        return _Prepared(item, error=item.error)
    try:
        data = item.data if item.data is not None else read_bytes(item.path)
        img = decode(data, item.path or item.source)
    except ImageError as exc:
        return _Prepared(item, error=exc)
    return _Prepared(item, sha=sha256_bytes(data), data=data, width=img.width, height=img.height,
                     mode=img.original_mode, rotated=img.exif_rotated)


def ingest(ws: Workspace, source: str | Path, *, workers: int | None = None, progress: Progress | None = None,
           **table_columns) -> IngestReport:
    """Ingest ``source`` into ``ws``. Each input is committed on its own, so a killed run resumes."""
    store = ws.store
    report = IngestReport()
    tags = compile_vocabulary(vocabulary(ws))  # for imported captions; compiled once per run
    items = (it for it in iter_source(Path(source), **table_columns) if not _already(store, it, report))
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results: Iterable[_Prepared] = bounded_map(pool, _prepare, items, ahead=2 * workers)
        if progress is not None:
            results = progress(results, desc="ingest", unit="img")
        for p in results:
            _commit(ws, p, report, tags)
    return report


def _already(store, item: Item, report: IngestReport) -> bool:
    row = store.source_outcome(item.source)
    if row is not None and row["outcome"] in ("ingested", "duplicate"):
        report.already += 1
        return True
    return False


def _commit(ws: Workspace, p: _Prepared, report: IngestReport, tags) -> None:
    store, item = ws.store, p.item
    if p.error is None and not item.person:
        p.error = ImageError(item.source, "no_person", "no person for this image")
    if p.error is not None:
        store.mark_source(item.source, "rejected", None, p.error.code, p.error.detail)
        report.rejected += 1
        report.reasons[p.error.code] += 1
        report.problems.append(str(p.error))
        log.warning("skipped %s", p.error)
        return
    existing = store.image_id_by_sha(p.sha)
    if existing is not None:
        store.mark_source(item.source, "duplicate", existing, "duplicate", "same content as an image already ingested")
        report.duplicates += 1
        report.reasons["duplicate"] += 1
        return
    suffix = item.suffix.lower() if item.suffix.lower() in IMAGE_SUFFIXES else _suffix_for(p.data)
    rel = ws.put_media(p.sha, suffix, p.data)
    with store.transaction():
        image_id = store.add_image(
            source=item.source, sha256=p.sha, person=item.person, media_path=rel, width=p.width, height=p.height,
            original_mode=p.mode, exif_rotated=p.rotated, import_caption=item.caption, import_meta=item.meta,
        )
        if item.caption:  # an imported caption is version 1, reviewable like a model's
            store.add_caption(image_id, item.caption, status="imported", origin="import", author="import",
                              flags=check_caption(item.caption))
            tag_image(ws, image_id, item.caption, tags)
    report.added += 1


def _suffix_for(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".img"
