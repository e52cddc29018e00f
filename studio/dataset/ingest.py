"""Ingest photos into a workspace from the three layouts face datasets come in.

* a folder per person: ``SOURCE/<person>/**/*.jpg|png|webp``
* the CrossFaceID / InstantID training JSONL (``image_file``, ``additional_feature``, ``bbox``,
  ``landmarks``, ``insightface_feature_file``)
* a metadata table (CSV or parquet: file name, person, optional caption), the shape Hugging Face
  datasets export, including parquet files whose image column holds the bytes;
* webdataset ``.tar`` shards (a file or a folder of them), read in place with the ``webdataset``
  package, including img2dataset output (``NNNNN.tar`` + ``NNNNN.parquet`` with ``key``,
  ``caption``, ``url`` and ``status``: a failed download is recorded with its error).

Every input is validated through :mod:`studio.images`, hashed, and stored once. Bad inputs are
recorded with a reason and the batch goes on; re-ingesting a source adds nothing.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .attributes import compile_vocabulary, tag_image, vocabulary
from ..captions.captioner import check_caption
from ..runs.parallel import bounded_map
from ..images import IMAGE_SUFFIXES, ImageError, decode, read_bytes, sha256_bytes
from ..workspace import Workspace

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
    person_from_folder: Counter = field(default_factory=Counter)  # folder name -> images given it as their person

    def as_dict(self) -> dict:
        out = {
            "added": self.added, "duplicates": self.duplicates, "already_ingested": self.already,
            "rejected": self.rejected, "rejected_by_reason": dict(self.reasons), "problems": self.problems,
        }
        if self.person_from_folder:
            n = sum(self.person_from_folder.values())
            folders = ", ".join(f"{k} ({v})" for k, v in self.person_from_folder.most_common(5))
            out["warning"] = (f"{n} JSONL line(s) name no person: each got its image's folder name as the person "
                              f"({folders}); if a folder is not one person, give --person-column or --person-pattern")
        return out


# -- listing sources -----------------------------------------------------------------------------

def _scan(directory: Path, on_error: Callable[[Path, OSError], None], seen: set | None = None) -> Iterator[Path]:
    """Files under a directory (sorted, hidden ones skipped); unreadable sub-folders are reported.

    Each real directory is visited once: a symlink back up the tree (a loop) or a second link to
    a folder already scanned adds nothing.
    """
    seen = set() if seen is None else seen
    try:
        st = os.stat(directory)
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
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
            yield from _scan(Path(e.path), on_error, seen)
        else:
            yield Path(e.path)


def _dir_error(path: Path, exc: OSError) -> Item:
    return Item(source=str(path), person=None, error=ImageError(path, "unreadable_directory", exc.strerror or str(exc)))


def iter_folders(root: Path) -> Iterator[Item]:
    """``root/<person>/...``: the person is the top-level folder name."""
    errors: list[Item] = []
    seen: set = set()
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
        for f in _scan(path, lambda p, exc: errors.append(_dir_error(p, exc)), seen):
            yield Item(source=str(f.resolve()), person=entry.name, path=f, suffix=f.suffix)
        yield from errors
        errors.clear()


#: the JSONL's image field: the official trainer's dataset class reads ``image_file``; its shell script
#: documents the same line with ``file_name``
JSONL_FILE_FIELDS = ("image_file", "file_name")


def iter_jsonl(jsonl: Path, data_root: Path | None = None, person_column: str | None = None,
               person_pattern=None) -> Iterator[Item]:
    """The CrossFaceID training layout; relative paths are relative to ``data_root`` (the official
    trainer's ``--data_root_path``), by default the JSONL's folder."""
    base = Path(data_root) if data_root else jsonl.parent
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
            try:
                yield _jsonl_item(rec, base, where, person_column, person_pattern)
            except FieldError as exc:
                yield Item(source=where, person=None, error=ImageError(where, exc.code, str(exc)))


class FieldError(ValueError):
    """One field of one input record is unusable; ``code`` is ``missing_field`` or ``bad_field``."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def _type(value) -> str:
    return "null" if value is None else {dict: "object", list: "array", bool: "boolean"}.get(type(value), type(value).__name__)


def _text_field(rec: dict, name: str, required: bool = False, path: bool = False) -> str | None:
    """A string field, or None when absent; anything else names the field and what it held."""
    value = rec.get(name)
    if value is None or value == "":
        if required:
            raise FieldError("missing_field", f"no {name!r} field")
        return None
    if not isinstance(value, str):
        raise FieldError("bad_field", f"field {name!r} must be a string, got {_type(value)}")
    if path and "\x00" in value:
        raise FieldError("bad_field", f"field {name!r} contains a NUL byte")
    return value


def _points_field(rec: dict, name: str, length: int | None = None) -> list | None:
    """A list of numbers or of [x, y] pairs (bbox, landmarks)."""
    value = rec.get(name)
    if value is None:
        return None
    ok = isinstance(value, list) and (length is None or len(value) == length) and all(
        (isinstance(v, (int, float)) and not isinstance(v, bool)) or
        (isinstance(v, list) and len(v) == 2 and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in v))
        for v in value)
    if not ok:
        raise FieldError("bad_field", f"field {name!r} must be a list of numbers or [x, y] pairs, got {_type(value)}"
                         + (f" of {len(value)}" if isinstance(value, list) else ""))
    return value


def _jsonl_item(rec: dict, base: Path, where: str, person_column: str | None = None, pattern=None) -> Item:
    """Validate every field of one JSONL record before anything is read or stored.

    The person: ``person_column``'s value, else a person field, else ``pattern``'s group on the image
    path, else the image's folder name (``meta["person_from"]`` says which, so the run can warn)."""
    name = next((n for n in JSONL_FILE_FIELDS if rec.get(n) not in (None, "")), None)
    if name is None:
        raise FieldError("missing_field", f"no {' or '.join(repr(n) for n in JSONL_FILE_FIELDS)} field")
    image_file = _text_field(rec, name, required=True, path=True)
    feature = _text_field(rec, "insightface_feature_file", path=True)
    caption = _text_field(rec, "additional_feature")
    if caption is None:
        for name in CAPTION_FIELDS:
            caption = _text_field(rec, name) if name in rec else None
            if caption is not None:
                break
    if person_column is not None:
        if rec.get(person_column) in (None, ""):
            raise FieldError("missing_field", f"no {person_column!r} field (the person column)")
        person = rec[person_column]
    else:
        person = next((rec[n] for n in PERSON_FIELDS if rec.get(n) not in (None, "")), None)
    if person is not None and (isinstance(person, bool) or not isinstance(person, (str, int))):
        raise FieldError("bad_field", f"person field must be a string or a number, got {_type(person)}")
    if isinstance(person, str) and "\x00" in person:
        raise FieldError("bad_field", "person field contains a NUL byte")
    meta = {}
    for name, length in (("bbox", 4), ("landmarks", None)):
        value = _points_field(rec, name, length)
        if value is not None:
            meta[name] = value
    path = Path(image_file)
    path = path if path.is_absolute() else base / path
    if feature:
        feat = Path(feature)
        meta["insightface_feature_file"] = str(feat if feat.is_absolute() else base / feat)
    meta["jsonl"] = where
    if person is None and pattern is not None:
        person = _key_person(image_file, pattern)
        if person is None:
            raise FieldError("no_person", f"--person-pattern {pattern.pattern!r} does not match {image_file!r}")
        meta["person_from"] = "pattern"
    elif person is None:
        person = path.parent.name
        meta["person_from"] = "folder"
    return Item(source=str(path.resolve()), person=str(person), path=path, caption=caption, meta=meta,
                suffix=path.suffix)


def _table_rows(table: Path, df, fcol, pcol, ccol) -> Iterator[Item]:
    for i, row in enumerate(df.to_dict("records")):
        where = f"{table}#row={i}"
        try:
            yield _table_item(table, row, where, fcol, pcol, ccol)
        except FieldError as exc:
            yield Item(source=where, person=None, error=ImageError(where, exc.code, str(exc)))


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
    yield from _table_rows(table, df, fcol, pcol, ccol)


def _table_item(table: Path, row: dict, where: str, fcol, pcol, ccol) -> Item:
    cell = row[fcol]
    caption = row.get(ccol) if ccol else None
    caption = caption if isinstance(caption, str) and caption else None
    person = row.get(pcol) if pcol else None
    person = None if person is None or (isinstance(person, float) and person != person) else str(person)
    if person is not None and "\x00" in person:
        raise FieldError("bad_field", f"column {pcol!r} contains a NUL byte")
    if isinstance(cell, dict) and cell.get("bytes") is not None:
        name = cell.get("path") or ""
        if not isinstance(name, str) or "\x00" in name:
            raise FieldError("bad_field", f"column {fcol!r}: the image's path must be a string without NUL bytes")
        return Item(source=where, person=person, data=bytes(cell["bytes"]), caption=caption,
                    meta={"table": where, "path": name}, suffix=Path(name).suffix or "")
    if isinstance(cell, dict):
        cell = cell.get("path")
    if cell is None or cell == "" or (isinstance(cell, float) and cell != cell):
        raise FieldError("missing_field", f"empty {fcol!r}")
    if not isinstance(cell, str):
        raise FieldError("bad_field", f"column {fcol!r} must hold a file name, got {_type(cell)}")
    if "\x00" in cell:
        raise FieldError("bad_field", f"column {fcol!r} contains a NUL byte")
    path = Path(cell)
    path = path if path.is_absolute() else table.parent / path
    if person is None and path.parent != table.parent:
        person = path.parent.name
    if person is None:
        raise FieldError("no_person", f"no person for {cell!r}: add a person column")
    return Item(source=str(path.resolve()), person=person, path=path, caption=caption,
                meta={"table": where}, suffix=path.suffix)


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def _key_person(key: str, pattern) -> str | None:
    """The person from a sample key: the named group ``person`` (or group 1) of ``pattern``; by default
    the key's folder part (``obama/0001`` -> ``obama``)."""
    if pattern is not None:
        m = pattern.search(key)
        if not m:
            return None
        return m.groupdict().get("person") or (m.group(1) if m.groups() else m.group(0))
    return key.rsplit("/", 1)[0] if "/" in key else None


def _shard_sidecar(shard: Path) -> dict[str, dict]:
    """img2dataset's per-shard parquet (key -> row), if there is one."""
    side = shard.with_suffix(".parquet")
    if not side.is_file():
        return {}
    import pandas as pd

    df = pd.read_parquet(side)
    if "key" not in df.columns:
        return {}
    return {str(r["key"]): r for r in df.to_dict("records")}


def _sample_item(shard: Path, sample: dict, side: dict, person_field: str | None, pattern) -> Item:
    key = sample["__key__"]
    where = f"{shard.resolve()}#{key}"
    meta: dict = {"shard": str(shard), "key": key}
    if "json" in sample:
        try:
            meta_json = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError) as exc:
            raise FieldError("bad_field", f"{key}.json is not JSON ({exc})") from None
        if isinstance(meta_json, dict):
            meta.update({k: v for k, v in meta_json.items() if isinstance(v, (str, int, float, bool)) or v is None})
    meta.update({k: v for k, v in side.get(key, {}).items() if isinstance(v, (str, int, float, bool))})
    if person_field:
        person = meta.get(person_field)
    elif pattern is not None:
        person = _key_person(key, pattern)
    else:
        person = next((meta[f] for f in PERSON_FIELDS if meta.get(f) not in (None, "")), None)
        person = person if person is not None else _key_person(key, None)
    if person is None or person == "":
        raise FieldError("no_person", f"no person for sample {key!r}: give --person-column (a metadata field) "
                                      "or --person-pattern (a regex on the key)")
    person = str(person)
    if "\x00" in person:
        raise FieldError("bad_field", f"the person of sample {key!r} contains a NUL byte")
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise FieldError("missing_image", f"sample {key!r} has no image member ({', '.join(IMAGE_EXTS)})")
    caption = sample["txt"].decode("utf-8", "replace") if "txt" in sample else meta.get("caption")
    caption = caption if isinstance(caption, str) and caption.strip() else None
    return Item(source=where, person=person, data=bytes(sample[ext]), caption=caption,
                meta={k: v for k, v in meta.items() if k in ("shard", "key", "url")}, suffix="." + ext)


def iter_shards(source: Path, person_column: str | None = None, person_pattern: re.Pattern | None = None,
                **_) -> Iterator[Item]:
    """Samples of webdataset shards (and img2dataset's failed downloads), without unpacking them."""
    import tarfile

    from webdataset.tariterators import base_plus_ext

    source = Path(source)
    shards = [source] if source.is_file() else sorted(source.glob("*.tar"))
    for shard in shards:
        try:
            side = _shard_sidecar(shard)
        except Exception as exc:  # a broken sidecar: name it, read the shard without it
            yield Item(source=str(shard.with_suffix(".parquet")), person=None, error=ImageError(
                shard.with_suffix(".parquet"), "unreadable_table", str(exc).splitlines()[0]))
            side = {}
        for key, row in side.items():
            if str(row.get("status", "success")) != "success":
                where = f"{shard.resolve()}#{key}"
                detail = str(row.get("error_message") or row.get("status"))
                yield Item(source=where, person=None, error=ImageError(where, "download_failed",
                                                                        f"{detail} (url {row.get('url')})"))
        read = 0
        pending: dict | None = None
        seen: set[str] = set()  # sample keys of this shard so far: a key met again is another photo under one name
        try:
            with tarfile.open(shard, mode="r|*") as tar:
                # members grouped into samples by key (webdataset's own key split); a sample is handed on as
                # soon as the next key starts, so a shard cut short keeps every sample completed before the cut.
                # Every member that cannot be part of a sample is reported, never skipped in silence.
                for member in tar:
                    key, ext = base_plus_ext(member.name)
                    if not member.isreg() or key is None:
                        yield _member_problem(shard, member, key)
                        continue
                    ext = ext.lower()
                    same = pending is not None and pending["__key__"] == key
                    if (same and ext in pending) or (not same and key in seen):
                        yield _member_problem(shard, member, key)
                        continue
                    data = tar.extractfile(member).read()  # a member cut short raises here, before it counts
                    if pending is not None and not same:
                        read += 1
                        yield _shard_item(shard, pending, side, person_column, person_pattern)
                        pending = None
                    seen.add(key)
                    pending = pending or {"__key__": key}
                    pending[ext] = data
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            if pending is not None:  # members before the cut were whole; the sample may still lack its image
                read += 1
                yield _shard_item(shard, pending, side, person_column, person_pattern)
                pending = None
            yield Item(source=f"{shard.resolve()}#after-{read}", person=None, error=ImageError(
                shard, "unreadable_shard", f"{exc.__class__.__name__}: {exc} (after {read} samples)"))
        if pending is not None:
            yield _shard_item(shard, pending, side, person_column, person_pattern)


def _member_problem(shard: Path, member, key: str | None) -> Item:
    """A tar member that is not ingested, with its reason; named by member and offset (a key may repeat)."""
    where = f"{shard.resolve()}#{member.name}@{member.offset}"
    if not member.isreg():
        kind = ("a directory" if member.isdir() else "a hard link" if member.islnk() else "a symbolic link"
                if member.issym() else "not a regular file")
        code, detail = "not_a_file", f"member {member.name!r} is {kind}"
    elif key is None:
        code, detail = "no_extension", f"member {member.name!r} has no extension, so it belongs to no sample"
    else:
        code, detail = "duplicate_key", (f"member {member.name!r} repeats sample key {key!r} of this shard "
                                         "(another file under a name already used; the first one is kept)")
    return Item(source=where, person=None, error=ImageError(where, code, detail))


def _shard_item(shard: Path, sample: dict, side: dict, person_column, pattern) -> Item:
    try:
        return _sample_item(shard, sample, side, person_column, pattern)
    except FieldError as exc:
        where = f"{shard.resolve()}#{sample['__key__']}"
        return Item(source=where, person=None, error=ImageError(where, exc.code, str(exc)))


def iter_source(source: Path, **table_columns) -> Iterator[Item]:
    """Pick the reader from what ``source`` is: a JSONL, a table, a folder of JSONLs, or person folders."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"ingest source {source} does not exist")
    suffix = source.suffix.lower()
    raw_pattern = table_columns.pop("person_pattern", None)
    try:
        pattern = re.compile(raw_pattern) if raw_pattern else None
    except re.error as exc:
        raise ValueError(f"--person-pattern {raw_pattern!r} is not a regular expression: {exc}") from None
    data_root = table_columns.pop("data_root", None)
    if data_root is not None and not Path(data_root).is_dir():
        raise ValueError(f"--data-root {data_root} is not a folder")
    if suffix == ".tar" or (source.is_dir() and any(source.glob("*.tar"))):
        return iter_shards(source, person_column=table_columns.get("person_column"), person_pattern=pattern)
    jsonls = [source] if source.is_file() and suffix == ".jsonl" else (
        sorted(source.glob("*.jsonl")) if source.is_dir() else [])
    if jsonls:
        opts = {"data_root": data_root, "person_column": table_columns.get("person_column"), "person_pattern": pattern}
        return (item for j in jsonls for item in iter_jsonl(j, **opts))
    if pattern is not None:
        raise ValueError("--person-pattern applies to webdataset .tar shards and JSONL files only")
    if data_root is not None:
        raise ValueError("--data-root applies to JSONL files only")
    if source.is_file():
        if suffix in (".csv", ".parquet"):
            return iter_table(source, **table_columns)
        raise ValueError(f"{source}: unknown source file type {suffix!r}; expected .jsonl, .csv, .parquet or a folder")
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
    format: str | None = None
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
                     mode=img.original_mode, rotated=img.exif_rotated, format=img.format)


def ingest(ws: Workspace, source: str | Path, *, workers: int | None = None, progress: Progress | None = None,
           run_id: int | None = None, **table_columns) -> IngestReport:
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
            _commit(ws, p, report, tags, run_id)
    return report


def _already(store, item: Item, report: IngestReport) -> bool:
    row = store.source_outcome(item.source)
    if row is not None and row["outcome"] in ("ingested", "duplicate"):
        report.already += 1
        return True
    return False


def _reject(store, report: IngestReport, source: str, error: ImageError) -> None:
    store.mark_source(source, "rejected", None, error.code, error.detail)
    report.rejected += 1
    report.reasons[error.code] += 1
    report.problems.append(str(error))
    log.warning("skipped %s", error)


def _commit(ws: Workspace, p: _Prepared, report: IngestReport, tags, run_id: int | None = None) -> None:
    """Store one prepared input. A failure here is this input's problem, never the batch's."""
    item = p.item
    try:
        _store(ws, p, report, tags, run_id)
    except Exception as exc:  # a value SQLite or the file system refuses: record it and go on
        detail = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
        _reject(ws.store, report, item.source if "\x00" not in item.source else repr(item.source),
                ImageError(item.source, "ingest_failed", detail))


def person_problem(name: str) -> str | None:
    """Why ``name`` cannot be a person (it becomes a folder name in exports and pairs), or None."""
    if not isinstance(name, str) or not name.strip():
        return "empty"
    if len(name) > 200:
        return "longer than 200 characters"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if name.strip() in (".", ".."):
        return "is '.' or '..'"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "contains a control character"
    return None


def _store(ws: Workspace, p: _Prepared, report: IngestReport, tags, run_id: int | None = None) -> None:
    store, item = ws.store, p.item
    if p.error is None and not item.person:
        p.error = ImageError(item.source, "no_person", "no person for this image")
    problem = person_problem(item.person) if p.error is None else None
    if problem:
        p.error = ImageError(item.source, "bad_person", f"person {item.person[:80]!r}: {problem}")
    if p.error is not None:
        _reject(store, report, item.source, p.error)
        return
    suffix = _suffix(item.suffix, p.format)
    # the row and its media file succeed or fail together: a file written for a row that is then
    # refused is removed, unless another row (another process) uses it
    with store.transaction():
        previous = store.source_outcome(item.source)
        if previous is not None and previous["outcome"] in ("ingested", "duplicate"):
            report.already += 1  # another ingest of the same source got here first
            return
        existing = store.image_id_by_sha(p.sha)
        if existing is not None:
            if store.image_source(existing) == item.source:  # the same file reached twice (e.g. two links)
                report.already += 1
                return
            store.mark_source(item.source, "duplicate", existing, "duplicate", "same content as an image already ingested")
            report.duplicates += 1
            return
        rel = ws.media_rel(p.sha, suffix)
        created = not ws.media_path(rel).exists()
        try:
            ws.put_media(p.sha, suffix, p.data)
            image_id = store.add_image(
                source=item.source, sha256=p.sha, person=item.person, media_path=rel, width=p.width, height=p.height,
                original_mode=p.mode, exif_rotated=p.rotated, import_caption=item.caption, import_meta=item.meta,
                run_id=run_id,
            )
            if item.caption:  # an imported caption is version 1, reviewable like a model's
                store.add_caption(image_id, item.caption, status="imported", origin="import", author="import",
                                  flags=check_caption(item.caption), run_id=run_id)
                tag_image(ws, image_id, item.caption, tags)
        except BaseException:
            if created:
                ws.media_path(rel).unlink(missing_ok=True)
            raise
    report.added += 1
    if (item.meta or {}).get("person_from") == "folder":
        report.person_from_folder[item.person] += 1


#: PIL format -> the extension a stored original keeps
FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif",
                 "MPO": ".jpg", "DIB": ".bmp"}


def _suffix(given: str, fmt: str | None) -> str:
    """The input's own extension when it is an image one, else the decoded format's."""
    given = (given or "").lower()
    if given in IMAGE_SUFFIXES:
        return given
    return FORMAT_SUFFIX.get(fmt or "", f".{fmt.lower()}" if fmt else ".img")
