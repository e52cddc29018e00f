"""The browse index as numpy columns, for filters and pages over millions of images.

At millions of rows SQLite answers a broad filter (a tag, caption words, a range) by looking
rows up one at a time, about a microsecond each: a second or more per page at FaceID-6M size.
The same filter over column arrays is a few vectorised passes. A snapshot holds the browse
columns, one sort order per sort key, and each tag's rows. It is read in one read transaction
together with the version of the browse index (the last ``seq`` of ``browse_changes``, the log
that the schema's triggers append to on every change of a browse row or tag), and it is used
only while that version is unchanged, so it answers exactly what SQLite would. Stale, the
caller asks SQLite while the snapshot is brought up to date in the background: from the log,
only the changed rows are read again (a tag or caption edit at 6M images is well under a
second); a full read happens first, and when the log no longer reaches back or the change is
too large. One holder per database file serves every thread of the process.
"""
from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: browse rows from which a snapshot is kept (below it SQLite's indexes already answer in milliseconds);
#: STUDIO_BROWSE_COLUMNS_MIN_ROWS overrides it, "off" never keeps one
DEFAULT_MIN_ROWS = 200_000
_READ_CHUNK = 100_000
#: bytes of caption-word matches a snapshot keeps (the most recently used words)
CAPTION_CACHE_BYTES = 256 * 2**20
_TERM = re.compile(r'"\w+"\*')

#: changed rows from which an update reads everything instead
MAX_PATCH_ROWS = 500_000

#: (array, SQL expression, dtype or "text": stored as codes) of the browse columns Browse uses
COLUMNS = (
    ("image_id", "image_id", np.int64), ("person_id", "person_id", np.int64), ("status", "status", np.int8),
    ("reasons_mask", "reasons_mask", np.int32), ("pose", "COALESCE(pose, '')", "text"),
    ("min_side", "min_side", np.int32), ("face_ratio", "face_ratio", np.float64),
    ("outlier", "COALESCE(outlier, -1)", np.int8), ("identity_sim", "identity_sim", np.float64),
    ("face_count", "face_count", np.float64), ("caption_status", "caption_status", "text"),
    ("caption_version", "COALESCE(caption_version, -1)", np.int32), ("person_name", "person_name", "text"),
)
_FIELDS = ", ".join(expr for _, expr, _ in COLUMNS)
_SELECT_RANGE = f"SELECT {_FIELDS} FROM browse WHERE image_id > ? ORDER BY image_id LIMIT ?"
_CHANGED = "SELECT image_id FROM browse_changes WHERE seq > ?"

#: sort key -> the array holding it (nullable ones float64 with NaN for NULL); "id" is the rows' own order
SORT_COLUMNS = {"person": "name_rank", "face_ratio": "face_ratio", "resolution": "min_side",
                "identity_sim": "identity_sim", "face_count": "face_count"}


def min_rows_setting() -> int | None:
    raw = os.environ.get("STUDIO_BROWSE_COLUMNS_MIN_ROWS", "").strip().lower()
    if raw in ("off", "none", "never"):
        return None
    if raw and not raw.isdigit():
        raise ValueError(f"STUDIO_BROWSE_COLUMNS_MIN_ROWS must be a number of images or 'off', got {raw!r}")
    return int(raw) if raw else DEFAULT_MIN_ROWS


def browse_version(conn: sqlite3.Connection) -> int:
    """The browse index's version: the last seq the change log handed out (0 before any)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'browse_changes'").fetchone()
    return int(row[0]) if row else 0


def _codes(values: Sequence[str], table: dict[str, int]) -> np.ndarray:
    """Texts as codes of ``table`` (new texts get the next codes); hashed in C by pandas."""
    local, uniques = pd.factorize(np.asarray(values, dtype=object))
    if len(local) and local.min() < 0:
        raise ValueError("a text column of browse holds NULL")
    lut = np.fromiter((table.setdefault(v, len(table)) for v in uniques), dtype=np.int32, count=len(uniques))
    return lut[local] if len(local) else np.zeros(0, dtype=np.int32)


def _arrays(rows: list[tuple], codes: dict[str, dict[str, int]]) -> dict[str, np.ndarray]:
    """Browse rows (``COLUMNS`` order) as one array per column; text becomes codes of ``codes``."""
    values = list(zip(*rows)) if rows else [()] * len(COLUMNS)
    return {name: _codes(v, codes[name]) if kind == "text" else np.array(v, dtype=kind)
            for (name, _, kind), v in zip(COLUMNS, values)}


def _name_rank(names: dict[str, int]) -> np.ndarray:
    """Name code -> rank in SQLite's BINARY collation (code-point order of the text)."""
    rank = np.zeros(len(names), dtype=np.int32)
    for r, (_, code) in enumerate(sorted(names.items())):
        rank[code] = r
    return rank


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


def _order(key: np.ndarray) -> np.ndarray:
    """Positions in SQLite's ``ORDER BY key, image_id`` (NULLs first; rows are in image_id order)."""
    order = np.argsort(key, kind="stable").astype(np.int32)
    if key.dtype.kind == "f":
        nulls = int(np.isnan(key).sum())  # NaN sorts last, in row order: SQLite puts NULLs first
        if nulls:
            order = np.concatenate([order[len(order) - nulls:], order[:len(order) - nulls]])
    return order


@dataclass
class BrowseColumns:
    """One consistent snapshot of the browse index (rows in image_id order)."""

    version: int
    cols: dict[str, np.ndarray]
    codes: dict[str, dict[str, int]]  # text column -> value -> code
    tags: dict[str, np.ndarray]  # tag -> sorted row positions
    orders: dict[str, np.ndarray] = field(default_factory=dict)
    build_s: float = 0.0
    patched_rows: int | None = None  # rows read again by the update that made it (None: a full read)
    caption_cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["cols"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def rows(self) -> int:
        return len(self.cols["image_id"])

    @property
    def nbytes(self) -> int:
        arrays = [*self.cols.values(), *self.tags.values(), *self.orders.values()]
        return sum(a.nbytes for a in arrays) + sum(a.nbytes for a in list(self.caption_cache.values()))

    @classmethod
    def read(cls, conn: sqlite3.Connection) -> "BrowseColumns":
        """Read every browse row and tag in one read transaction (the caller holds none)."""
        start = time.perf_counter()
        codes: dict[str, dict[str, int]] = {name: {} for name, _, kind in COLUMNS if kind == "text"}
        conn.execute("BEGIN DEFERRED")
        try:
            version = browse_version(conn)
            parts, last = [], -1
            while True:
                rows = conn.execute(_SELECT_RANGE, (last, _READ_CHUNK)).fetchall()
                if not rows:
                    break
                last = rows[-1][0]
                parts.append(_arrays(rows, codes))
            cols = {name: np.concatenate([p[name] for p in parts]) for name, _, _ in COLUMNS} if parts \
                else _arrays([], codes)
            tags: dict[str, np.ndarray] = {}
            for tag, ids in conn.execute("SELECT tag, group_concat(image_id) FROM image_tags GROUP BY tag"):
                tags[tag] = np.sort(_positions(cols["image_id"], int_list(ids)))
        finally:
            conn.execute("COMMIT")
        snap = cls(version=version, cols=cols, codes=codes, tags=tags)
        snap._sort(set(SORT_COLUMNS))
        snap.build_s = time.perf_counter() - start
        return snap

    def _sort(self, keys: set[str]) -> None:
        if "person" in keys:
            self.cols["name_rank"] = _name_rank(self.codes["person_name"])[self.cols["person_name"]]
        for sort in keys:
            self.orders[sort] = _order(self.cols[SORT_COLUMNS[sort]])

    def updated(self, conn: sqlite3.Connection, max_rows: int = MAX_PATCH_ROWS) -> "BrowseColumns | None":
        """This snapshot brought up to date from the change log, reading only the changed rows.

        None when a full read is needed: the log no longer reaches back to this version, more
        than ``max_rows`` rows changed, or rows were deleted or inserted before the last one.
        """
        start = time.perf_counter()
        conn.execute("BEGIN DEFERRED")
        try:
            version = browse_version(conn)
            if version == self.version:
                return self
            oldest = conn.execute("SELECT MIN(seq) FROM browse_changes").fetchone()[0]
            if version < self.version or oldest is None or oldest > self.version + 1:
                return None
            changed = conn.execute(f"SELECT COUNT(DISTINCT image_id) FROM ({_CHANGED})", (self.version,)).fetchone()[0]
            if changed > max_rows:
                return None
            rows = conn.execute(f"SELECT {_FIELDS} FROM browse WHERE image_id IN ({_CHANGED}) ORDER BY image_id",
                                (self.version,)).fetchall()
            tag_rows = conn.execute(f"SELECT tag, image_id FROM image_tags WHERE image_id IN ({_CHANGED})",
                                    (self.version,)).fetchall()
        finally:
            conn.execute("COMMIT")
        if len(rows) < changed:  # a browse row was deleted: read everything
            return None
        codes = {name: dict(table) for name, table in self.codes.items()}
        new = _arrays(rows, codes)
        ids, n = new["image_id"], self.rows
        pos = np.minimum(np.searchsorted(self.image_id, ids), max(n - 1, 0))
        known = (self.image_id[pos] == ids) if n else np.zeros(len(ids), dtype=bool)
        added = ~known
        if added.any() and n and ids[added].min() < self.image_id[-1]:
            return None  # a row inserted before the last one: positions would move
        cols = {}
        for name, _, _ in COLUMNS:
            column = self.cols[name]
            if added.any() or not _same(column[pos], new[name]):  # an unchanged column is shared, not copied
                column = column.copy()
                column[pos[known]] = new[name][known]
                column = np.concatenate([column, new[name][added]]) if added.any() else column
            cols[name] = column
        touched = np.concatenate([pos[known], np.arange(n, n + int(added.sum()))]).astype(np.int32)
        # tags: the changed rows' memberships are read again; the others are kept
        by_tag: dict[str, list[int]] = {}
        for tag, image_id in tag_rows:
            by_tag.setdefault(tag, []).append(image_id)
        tags = {}
        for tag in set(self.tags) | set(by_tag):
            kept = self.tags.get(tag, np.zeros(0, dtype=np.int32))
            dropped = np.isin(kept, touched)
            if dropped.any():
                kept = kept[~dropped]
            again = _positions(cols["image_id"], np.sort(np.asarray(by_tag.get(tag, []), dtype=np.int64)))
            if len(again):  # a few sorted positions into a long sorted list (np.union1d hashes all: ~1 s at 6M)
                kept = np.insert(kept, np.searchsorted(kept, again), again)
            if len(kept):
                tags[tag] = kept
        snap = BrowseColumns(version=version, cols=cols, codes=codes, tags=tags, patched_rows=len(rows))
        # a sort order is made again only if one of its keys changed (a tag or caption edit changes none)
        if added.any():
            resort = set(SORT_COLUMNS)
        else:
            resort = {sort for sort, column in SORT_COLUMNS.items()
                      if column != "name_rank" and not _same(self.cols[column][pos], new[column])}
            if len(codes["person_name"]) != len(self.codes["person_name"]) \
                    or not _same(self.cols["person_name"][pos], new["person_name"]):
                resort.add("person")
        snap.orders = {sort: order for sort, order in self.orders.items() if sort not in resort}
        if "person" not in resort:
            snap.cols["name_rank"] = self.cols["name_rank"]
        snap._sort(resort)
        # caption words' rows stay right unless a caption changed or rows were added
        if not added.any() and _same(self.cols["caption_version"][pos], new["caption_version"]):
            with self._cache_lock:
                snap.caption_cache.update(self.caption_cache)
        snap.build_s = time.perf_counter() - start
        return snap

    def positions(self, image_ids: np.ndarray) -> np.ndarray:
        return _positions(self.image_id, image_ids)

    def caption_rows(self, match: str, fetch: Callable[[str], np.ndarray]) -> list[np.ndarray]:
        """Row positions matching each word of an FTS5 query (every word must match).

        ``fetch`` runs one word's FTS5 query and gives image ids. A word's rows are kept with the
        snapshot (same version, so never stale) while the budget allows: refining a filter or
        paging through it asks FTS5 again only for new words.
        """
        terms = match.split()
        if not terms or not all(_TERM.fullmatch(t) for t in terms):  # not our own word list: one query
            terms = [match]
        out = []
        for term in terms:
            with self._cache_lock:
                hit = self.caption_cache.get(term)
                if hit is not None:
                    self.caption_cache.move_to_end(term)
            if hit is None:
                hit = self.positions(fetch(term))
                with self._cache_lock:
                    self.caption_cache[term] = hit
                    while sum(a.nbytes for a in self.caption_cache.values()) > CAPTION_CACHE_BYTES \
                            and len(self.caption_cache) > 1:
                        self.caption_cache.popitem(last=False)
            out.append(hit)
        return out

    def page(
        self,
        *,
        person_ids: Sequence[int] | None,
        status: int | None,
        reasons_mask: int,
        pose: str | None,
        tags: Sequence[str],
        min_side: tuple[int | None, int | None],
        face_ratio: tuple[float | None, float | None],
        outlier: bool | None,
        caption_rows: Sequence[np.ndarray] | None,
        caption_status: str | None,
        split_persons: np.ndarray | None,
        split_negate: bool,
        sort: str,
        descending: bool,
        limit: int,
        offset: int,
    ) -> tuple[list[int], int]:
        """The image ids of one page and the number of matches: what ``BrowseMixin.browse_page`` asks SQLite."""
        n = self.rows
        mask: np.ndarray | None = None

        def both(m: np.ndarray) -> None:
            nonlocal mask
            mask = m if mask is None else (mask & m)

        def rows_mask(pos: np.ndarray) -> np.ndarray:
            m = np.zeros(n, dtype=bool)
            m[pos] = True
            return m

        if status is not None:
            both(self.status == status)
        if reasons_mask:
            both((self.reasons_mask & reasons_mask) != 0)
        if pose:
            code = self.codes["pose"].get(pose)
            both(self.pose == code if code is not None else np.zeros(n, dtype=bool))
        if person_ids is not None:
            both(np.isin(self.person_id, np.asarray(list(person_ids), dtype=np.int64)))
        if caption_status:
            code = self.codes["caption_status"].get(caption_status)
            both(self.caption_status == code if code is not None else np.zeros(n, dtype=bool))
        for tag in tags:
            both(rows_mask(self.tags.get(tag, np.zeros(0, dtype=np.int32))))
        for col, (lo, hi) in ((self.min_side, min_side), (self.face_ratio, face_ratio)):
            if lo is not None:
                both(col >= lo)  # NaN (NULL) is never in range, as in SQL
            if hi is not None:
                both(col <= hi)
        if outlier is not None:
            both(self.outlier == 1 if outlier else self.outlier <= 0)
        for rows in caption_rows or ():
            both(rows_mask(rows))
        if split_persons is not None:
            in_split = np.isin(self.person_id, split_persons)
            both(~in_split if split_negate else in_split)
        order = self.orders.get(sort)  # None: image_id order, the rows' own
        if mask is None:
            total = n
            hits = None
        else:
            hits = np.flatnonzero(mask if order is None else mask[order])
            total = len(hits)
        if offset >= total:
            return [], total
        lo, hi = offset, min(total, offset + limit)
        if descending:  # SQLite's DESC on (key, image_id) is the ascending order reversed
            lo, hi = total - hi, total - lo
        picked = np.arange(lo, hi) if hits is None else hits[lo:hi]
        if order is not None:
            picked = order[picked]
        ids = self.image_id[picked]
        return [int(i) for i in (ids[::-1] if descending else ids)], total


def int_list(text: str | None) -> np.ndarray:
    """``1,2,3`` (SQLite's group_concat of integers) as an array."""
    return np.fromstring(text, dtype=np.int64, sep=",") if text else np.zeros(0, dtype=np.int64)


def _positions(image_id: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row positions (int32: half the memory of a tag's or a word's rows) of the ``wanted`` image ids
    that have a browse row."""
    if not len(wanted) or not len(image_id):
        return np.zeros(0, dtype=np.int32)
    pos = np.minimum(np.searchsorted(image_id, wanted), len(image_id) - 1)
    return pos[image_id[pos] == wanted].astype(np.int32)


class ColumnsHolder:
    """The snapshot of one database file, shared by every connection of the process."""

    def __init__(self) -> None:
        self._build_lock = threading.Lock()  # one read or update at a time
        self._state_lock = threading.Lock()
        self.columns: BrowseColumns | None = None
        self.building = False
        self.next_full_read_at = 0.0

    def fresh(self, version: int) -> BrowseColumns | None:
        cols = self.columns
        return cols if cols is not None and cols.version == version else None

    def refresh(self, connect: Callable[[], sqlite3.Connection], full_read_now: bool = True) -> BrowseColumns | None:
        """Bring the snapshot up to date in this thread: from the change log if it can, else by a
        full read (unless ``full_read_now`` is false and the last full read was too recent)."""
        with self._build_lock:
            conn = connect()
            conn.row_factory = None  # plain tuples: reading is mostly making rows
            try:
                cols = self.columns.updated(conn) if self.columns is not None else None
                if cols is None:
                    if not full_read_now and time.monotonic() < self.next_full_read_at:
                        return None
                    cols = BrowseColumns.read(conn)
                    # during a long write stage every snapshot is stale at once: at most one full read
                    # per twice the last one's duration, and never more often than every 5 s
                    self.next_full_read_at = time.monotonic() + max(5.0, 2 * cols.build_s)
            except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
                # a browse value numpy cannot hold: SQLite keeps answering, just slower
                log.warning("browse columns not built (SQLite answers browse instead): %s: %s",
                            type(exc).__name__, exc)
                return None
            finally:
                conn.close()  # read() and updated() end their own read transactions
            self.columns = cols
            return cols

    def refresh_in_background(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """Start a refresh unless one is running; never waits."""
        with self._state_lock:
            if self.building:
                return
            self.building = True

        def run() -> None:
            try:
                self.refresh(connect, full_read_now=False)
            finally:
                self.building = False

        threading.Thread(target=run, name="browse-columns", daemon=True).start()


_HOLDERS: dict[str, ColumnsHolder] = {}
_HOLDERS_LOCK = threading.Lock()


def holder_for(path: str) -> ColumnsHolder:
    with _HOLDERS_LOCK:
        return _HOLDERS.setdefault(path, ColumnsHolder())
