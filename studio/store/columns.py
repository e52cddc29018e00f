"""The browse index as numpy columns, for filters and pages over millions of images.

At millions of rows SQLite answers a broad filter (a tag, caption words, a range) by looking
rows up one at a time, about a microsecond each: a second or more per page at FaceID-6M size.
The same filter over column arrays is a few vectorised passes. A snapshot holds the browse
columns, one sort order per sort key, and each tag's rows; it is taken inside one read
transaction together with ``browse_version`` (a counter the schema's triggers bump on every
change of a browse row or tag), so a snapshot is used only while that counter is unchanged and
answers exactly what SQLite would. Stale or absent, the caller uses SQLite; a new snapshot is
built in the background. One holder per database file serves every thread of the process.
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

log = logging.getLogger(__name__)

#: browse rows from which a snapshot is kept (below it SQLite's indexes already answer in milliseconds);
#: STUDIO_BROWSE_COLUMNS_MIN_ROWS overrides it, "off" never keeps one
DEFAULT_MIN_ROWS = 200_000
_READ_CHUNK = 100_000
#: bytes of caption-word matches a snapshot keeps (the most recently used words)
CAPTION_CACHE_BYTES = 256 * 2**20
_TERM = re.compile(r'"\w+"\*')

_SELECT = """SELECT image_id, person_id, status, reasons_mask, COALESCE(pose, ''), min_side, face_ratio, outlier,
                    identity_sim, face_count, caption_status, person_name
             FROM browse WHERE image_id > ? ORDER BY image_id LIMIT ?"""

#: sort key -> column array holding it (nullable ones as float64 with NaN for NULL)
SORT_COLUMNS = {"person": "name_rank", "face_ratio": "face_ratio", "resolution": "min_side",
                "identity_sim": "identity_sim", "face_count": "face_count"}


def min_rows_setting() -> int | None:
    raw = os.environ.get("STUDIO_BROWSE_COLUMNS_MIN_ROWS", "").strip().lower()
    if raw in ("off", "none", "never"):
        return None
    return int(raw) if raw else DEFAULT_MIN_ROWS


def browse_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT n FROM browse_version").fetchone()[0])


def _codes(values: Sequence[str], table: dict[str, int]) -> np.ndarray:
    return np.fromiter((table.setdefault(v, len(table)) for v in values), dtype=np.int32, count=len(values))


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
    image_id: np.ndarray
    person_id: np.ndarray
    status: np.ndarray
    reasons_mask: np.ndarray
    pose: np.ndarray
    min_side: np.ndarray
    face_ratio: np.ndarray
    outlier: np.ndarray  # -1 for NULL
    identity_sim: np.ndarray
    face_count: np.ndarray  # float64, NaN for NULL
    caption_status: np.ndarray
    name_rank: np.ndarray
    poses: dict[str, int]
    caption_statuses: dict[str, int]
    tags: dict[str, np.ndarray]  # tag -> row positions
    orders: dict[str, np.ndarray] = field(default_factory=dict)
    build_s: float = 0.0
    caption_cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def rows(self) -> int:
        return len(self.image_id)

    @property
    def nbytes(self) -> int:
        arrays = [v for v in vars(self).values() if isinstance(v, np.ndarray)]
        arrays += list(self.tags.values()) + list(self.orders.values())
        return sum(a.nbytes for a in arrays)

    @classmethod
    def read(cls, conn: sqlite3.Connection) -> "BrowseColumns":
        """Read every browse row and tag in one read transaction (the caller holds none)."""
        start = time.perf_counter()
        conn.execute("BEGIN DEFERRED")
        try:
            version = browse_version(conn)
            dtypes = (np.int64, np.int64, np.int8, np.int64, None, np.int64, np.float64, np.float64, np.float64,
                      np.float64, None, None)  # None: text, stored as codes
            parts: list[list[np.ndarray]] = []
            poses: dict[str, int] = {}
            statuses: dict[str, int] = {}
            names: dict[str, int] = {}
            last = -1
            while True:
                rows = conn.execute(_SELECT, (last, _READ_CHUNK)).fetchall()
                if not rows:
                    break
                last = rows[-1][0]
                texts = {4: poses, 10: statuses, 11: names}
                parts.append([_codes(col, texts[k]) if k in texts else np.array(col, dtype=dtypes[k])
                              for k, col in enumerate(zip(*rows))])
            merged = [np.concatenate(c) for c in zip(*parts)] if parts else \
                [np.zeros(0, dtype=t or np.int32) for t in dtypes]
            image_id, person_id, status, reasons, pose, min_side, face_ratio, outlier, sim, faces, cap, name = merged
            # person sort is by name (SQLite's BINARY collation = code-point order of the text)
            rank = np.zeros(len(names), dtype=np.int32)
            for r, (_, code) in enumerate(sorted(names.items())):
                rank[code] = r
            tags: dict[str, np.ndarray] = {}
            for tag, ids in conn.execute("SELECT tag, group_concat(image_id) FROM image_tags GROUP BY tag"):
                found = np.fromstring(ids, dtype=np.int64, sep=",") if ids else np.zeros(0, dtype=np.int64)
                tags[tag] = _positions(image_id, found)
        finally:
            conn.execute("COMMIT")
        cols = cls(
            version=version, image_id=image_id, person_id=person_id, status=status, reasons_mask=reasons, pose=pose,
            min_side=min_side, face_ratio=face_ratio, outlier=np.nan_to_num(outlier, nan=-1).astype(np.int8),
            identity_sim=sim, face_count=faces, caption_status=cap, name_rank=rank[name] if len(name) else name,
            poses=poses, caption_statuses=statuses, tags=tags)
        cols.orders = {sort: _order(getattr(cols, column)) for sort, column in SORT_COLUMNS.items()}
        cols.build_s = time.perf_counter() - start
        return cols

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
            code = self.poses.get(pose)
            both(self.pose == code if code is not None else np.zeros(n, dtype=bool))
        if person_ids is not None:
            both(np.isin(self.person_id, np.asarray(list(person_ids), dtype=np.int64)))
        if caption_status:
            code = self.caption_statuses.get(caption_status)
            both(self.caption_status == code if code is not None else np.zeros(n, dtype=bool))
        for tag in tags:
            both(rows_mask(self.tags.get(tag, np.zeros(0, dtype=np.int64))))
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


def _positions(image_id: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row positions of the ``wanted`` image ids that have a browse row."""
    if not len(wanted) or not len(image_id):
        return np.zeros(0, dtype=np.int64)
    pos = np.searchsorted(image_id, wanted)
    pos = np.minimum(pos, len(image_id) - 1)
    return pos[image_id[pos] == wanted]


class ColumnsHolder:
    """The snapshot of one database file, shared by every connection of the process."""

    def __init__(self) -> None:
        self._build_lock = threading.Lock()  # one build at a time
        self._state_lock = threading.Lock()
        self.columns: BrowseColumns | None = None
        self.building = False
        self.failed: str | None = None
        self.next_build_at = 0.0

    def fresh(self, version: int) -> BrowseColumns | None:
        cols = self.columns
        return cols if cols is not None and cols.version == version else None

    def build(self, connect: Callable[[], sqlite3.Connection]) -> BrowseColumns | None:
        """Build a snapshot now, in this thread (a concurrent call waits for the running build)."""
        with self._build_lock:
            conn = connect()
            conn.row_factory = None  # plain tuples: the read is mostly building rows
            try:
                cols = BrowseColumns.read(conn)
            except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
                # a browse value numpy cannot hold: SQLite keeps answering, just slower
                self.failed = f"{type(exc).__name__}: {exc}"
                log.warning("browse columns not built (SQLite answers browse instead): %s", self.failed)
                return None
            finally:
                conn.close()
            self.columns, self.failed = cols, None
            # during a long write stage every snapshot is stale at once: at most one build per
            # twice the last one's duration, and never more often than every 5 s
            self.next_build_at = time.monotonic() + max(5.0, 2 * cols.build_s)
            return cols

    def build_in_background(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """Start a build unless one runs or the last one was too recent; never waits."""
        with self._state_lock:
            if self.building or time.monotonic() < self.next_build_at:
                return
            self.building = True

        def run() -> None:
            try:
                self.build(connect)
            finally:
                self.building = False

        threading.Thread(target=run, name="browse-columns", daemon=True).start()


_HOLDERS: dict[str, ColumnsHolder] = {}
_HOLDERS_LOCK = threading.Lock()


def holder_for(path: str) -> ColumnsHolder:
    with _HOLDERS_LOCK:
        return _HOLDERS.setdefault(path, ColumnsHolder())
