"""The browse index: one denormalised row per image, filters, sorts, pages and aggregates."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

import numpy as np

from ..codes import CurationStatus
from .base import marks
from .columns import BrowseColumns, browse_version, holder_for, int_list, min_rows_setting


PENDING, PASS, FAIL = (int(s) for s in CurationStatus)


class BrowseMixin:
    # -- browsing ------------------------------------------------------------------------
    @staticmethod
    def _refresh_browse(conn: sqlite3.Connection, image_ids: Sequence[int] | None = None) -> None:
        """Rebuild browse rows from the normalised tables (all, or just ``image_ids``).

        Caption columns are set when a row is first made and then belong to the caption stage.
        """
        where, args = "WHERE 1", ()
        if image_ids is not None:
            where = f"WHERE i.id IN ({marks(image_ids)})"
            args = tuple(image_ids)
        conn.execute(
            f"""INSERT INTO browse(image_id, person_id, person_name, status, reasons_mask, pose, width, height, min_side,
                                   face_count, face_ratio, outlier, identity_sim, caption, caption_status, stale)
                SELECT i.id, i.person_id, p.name,
                       CASE WHEN c.passed IS NULL THEN {PENDING} WHEN c.passed THEN {PASS} ELSE {FAIL} END,
                       COALESCE(c.reasons_mask, 0), f.pose, i.width, i.height, MIN(i.width, i.height),
                       a.face_count, COALESCE(f.area_ratio, a.largest_face_ratio),
                       CASE WHEN c.identity_sim IS NULL THEN NULL ELSE c.outlier END, c.identity_sim,
                       i.import_caption, CASE WHEN i.import_caption IS NULL THEN 'none' ELSE 'imported' END,
                       c.image_id IS NOT NULL AND c.analysis_rev IS NOT a.rev
                FROM images i
                JOIN persons p ON p.id = i.person_id
                LEFT JOIN analyses a ON a.image_id = i.id
                LEFT JOIN curation c ON c.image_id = i.id
                LEFT JOIN faces f ON f.image_id = i.id AND f.face_index = COALESCE(c.subject_face, 0)
                {where}
                ON CONFLICT(image_id) DO UPDATE SET
                    person_id = excluded.person_id, person_name = excluded.person_name, status = excluded.status, reasons_mask = excluded.reasons_mask,
                    pose = excluded.pose, width = excluded.width, height = excluded.height,
                    min_side = excluded.min_side, face_count = excluded.face_count, face_ratio = excluded.face_ratio,
                    outlier = excluded.outlier, identity_sim = excluded.identity_sim, stale = excluded.stale
                -- an unchanged row is left alone: rewriting it would rewrite its entry in every covering
                -- index and fire the tallies' triggers (a re-curation at millions of images was mostly that)
                WHERE (person_id, person_name, status, reasons_mask, pose, width, height, min_side, face_count,
                       face_ratio, outlier, identity_sim, stale)
                   IS NOT (excluded.person_id, excluded.person_name, excluded.status, excluded.reasons_mask,
                           excluded.pose, excluded.width, excluded.height, excluded.min_side, excluded.face_count,
                           excluded.face_ratio, excluded.outlier, excluded.identity_sim, excluded.stale)""",
            args,
        )

    def persons(self) -> list[tuple[str, int]]:
        """Every person with their number of images, by name."""
        rows = self.conn.execute(
            """SELECT p.name, SUM(t.n) FROM person_tally t JOIN persons p ON p.id = t.person_id
               GROUP BY t.person_id HAVING SUM(t.n) > 0 ORDER BY p.name""").fetchall()
        return [(r[0], int(r[1])) for r in rows]

    def person_ids(self, names: Sequence[str]) -> dict[str, int]:
        if not names:
            return {}
        rows = self.conn.execute(
            f"SELECT name, id FROM persons WHERE name IN ({marks(names)})", tuple(names)
        ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def tag_counts(self, passed_only: bool = False) -> list[tuple[str, int]]:
        where = f"WHERE status = {PASS}" if passed_only else ""
        rows = self.conn.execute(f"SELECT tag, SUM(n) FROM tag_tally {where} GROUP BY tag HAVING SUM(n) > 0 "
                                 "ORDER BY SUM(n) DESC, tag").fetchall()
        return [(r[0], int(r[1])) for r in rows]

    def set_tags(self, image_id: int, tags: Iterable[str]) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM image_tags WHERE image_id = ?", (image_id,))
            conn.executemany("INSERT INTO image_tags(image_id, tag) VALUES (?, ?)", [(image_id, t) for t in sorted(set(tags))])

    def tags_of(self, image_id: int) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT tag FROM image_tags WHERE image_id = ? ORDER BY tag", (image_id,))]

    def images_per_person(self, passed_only: bool = False, split: str | None = None) -> list[int]:
        """Image count of every person (with at least one image, or one kept image), optionally of one split."""
        where, args = [f"status = {PASS}"] if passed_only else [], []
        if split:
            where.append("person_id IN (SELECT person_id FROM splits WHERE split = ?)")
            args.append(split)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        return [int(r[0]) for r in self.conn.execute(
            f"SELECT SUM(n) FROM person_tally {clause} GROUP BY person_id HAVING SUM(n) > 0", args)]

    def status_counts(self) -> dict[int, int]:
        return {int(r[0]): int(r[1]) for r in self.conn.execute(
            "SELECT status, SUM(n) FROM facet_tally GROUP BY status HAVING SUM(n) > 0")}

    def reason_bit_counts(self, bits: int) -> list[int]:
        """How many images have each of the first ``bits`` reason bits set."""
        counts = [0] * bits
        for mask, n in self.conn.execute("SELECT reasons_mask, SUM(n) FROM facet_tally GROUP BY reasons_mask"):
            for i in range(bits):
                counts[i] += int(n) if mask >> i & 1 else 0
        return counts

    def pose_counts(self, passed_only: bool = True) -> dict[str, int]:
        where = f"WHERE status = {PASS}" if passed_only else ""
        return {(r[0] or "unknown"): int(r[1]) for r in self.conn.execute(
            f"SELECT pose, SUM(n) FROM facet_tally {where} GROUP BY pose HAVING SUM(n) > 0")}

    def stale_verdicts(self) -> int:
        """Verdicts computed from another analysis than the image has now (curate ran while analyze wrote)."""
        return int(self.conn.execute("SELECT COALESCE(SUM(n), 0) FROM facet_tally WHERE stale = 1").fetchone()[0])

    def problem_counts(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self.conn.execute(
            "SELECT code, COUNT(*) FROM sources WHERE outcome != 'ingested' GROUP BY code")}

    def poses(self) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT pose FROM facet_tally WHERE pose != '' GROUP BY pose HAVING SUM(n) > 0 ORDER BY pose")]

    def _count(self, clause: str, args: list) -> int:
        """How many browse rows match; reused while the database is unchanged.

        Paging through a filter at millions of images would otherwise count every match again on
        each page. Unchanged means: no commit by another connection (``PRAGMA data_version``) and
        no write by this one (``total_changes``); the cache is per connection, like the connection.
        """
        conn = self.conn
        version = (conn.execute("PRAGMA data_version").fetchone()[0], conn.total_changes)
        cache = self._local.__dict__.setdefault("counts", {})
        key = (clause, tuple(args))
        hit = cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        total = int(conn.execute(f"SELECT COUNT(*) FROM browse b {clause}", args).fetchone()[0])
        if len(cache) >= 64:
            cache.pop(next(iter(cache)))
        cache[key] = (version, total)
        return total

    @staticmethod
    def _facet_conditions(status: int | None, reasons_mask: int, pose: str | None,
                          prefix: str = "") -> tuple[list[str], list]:
        """The status, reason and pose conditions, for browse rows (``prefix`` "b.") and for the facet tally."""
        where, args = [], []
        if status is not None:
            where.append(f"{prefix}status = ?")
            args.append(status)
        if reasons_mask:
            where.append(f"({prefix}reasons_mask & ?) != 0")
            args.append(reasons_mask)
        if pose:
            where.append(f"{prefix}pose = ?")
            args.append(pose)
        return where, args

    def _tally_sum(self, table: str, where: list[str], args: list) -> int:
        return int(self.conn.execute(f"SELECT COALESCE(SUM(n), 0) FROM {table} WHERE {' AND '.join(where) or '1'}",
                                     args).fetchone()[0])

    def _facet_count(self, status: int | None, reasons_mask: int, pose: str | None) -> int:
        """Matches of a filter on status, reason and pose only: read from the tally, not counted."""
        return self._tally_sum("facet_tally", *self._facet_conditions(status, reasons_mask, pose))

    def _tag_count(self, tag: str, status: int | None) -> int:
        """Matches of one tag (and maybe a status): read from the tag tally, not counted."""
        where, args = self._facet_conditions(status, 0, None)
        return self._tally_sum("tag_tally", ["tag = ?", *where], [tag, *args])

    def _browse_rows(self) -> int:
        return self._facet_count(None, 0, None)

    #: the covering index that walks each sort's order (``id``: the table itself, in rowid order)
    _SORT_INDEXES = {
        "id": "NOT INDEXED", "person": "INDEXED BY browse_by_name", "face_ratio": "INDEXED BY browse_by_ratio",
        "resolution": "INDEXED BY browse_by_side", "identity_sim": "INDEXED BY browse_by_sim",
        "face_count": "INDEXED BY browse_by_faces",
    }

    _SORTS = {
        "id": "b.image_id", "person": "b.person_name", "face_ratio": "b.face_ratio", "resolution": "b.min_side",
        "identity_sim": "b.identity_sim", "face_count": "b.face_count",
    }

    def browse_page(
        self,
        *,
        person_ids: Sequence[int] | None = None,
        status: int | None = None,
        reasons_mask: int = 0,
        pose: str | None = None,
        tags: Sequence[str] = (),
        min_side: tuple[int | None, int | None] = (None, None),
        face_ratio: tuple[float | None, float | None] = (None, None),
        outlier: bool | None = None,
        caption_match: str | None = None,
        caption_status: str | None = None,
        split: str | None = None,
        sort: str = "id",
        descending: bool = False,
        limit: int = 48,
        offset: int = 0,
    ) -> tuple[list[dict], int]:
        """One page of images matching every given filter, and how many match in all.

        Answered from the in-memory browse columns when they are current (millions of images),
        else from SQLite's indexes; both give the same ids in the same order (tested).
        """
        filters = dict(person_ids=person_ids, status=status, reasons_mask=reasons_mask, pose=pose, tags=tags,
                       min_side=min_side, face_ratio=face_ratio, outlier=outlier, caption_status=caption_status,
                       sort=sort, descending=descending, limit=limit, offset=offset)
        with self.snapshot():  # the count, the page and its rows from one state of the database
            cols = self.browse_columns()
            if cols is not None:
                ids, total = cols.page(
                    **filters, caption_rows=cols.caption_rows(caption_match, self._fts_ids) if caption_match else None,
                    split_persons=self._split_persons(split) if split else None, split_negate=split == "unassigned")
            else:
                ids, total = self._browse_ids(**filters, caption_match=caption_match, split=split)
            if not ids:
                return [], int(total)
            rows = self.conn.execute(
                f"""SELECT b.*, b.person_name AS person, i.media_path FROM browse b JOIN images i ON i.id = b.image_id
                    WHERE b.image_id IN ({marks(ids)})""",
                ids,
            ).fetchall()
        by_id = {r["image_id"]: dict(r) for r in rows}
        return [by_id[i] for i in ids], int(total)

    def _browse_ids(self, *, person_ids, status, reasons_mask, pose, tags, min_side, face_ratio, outlier,
                    caption_match, caption_status, split, sort, descending, limit, offset) -> tuple[list[int], int]:
        """One page's image ids and the number of matches, from SQLite's indexes."""
        where, args = self._facet_conditions(status, reasons_mask, pose, "b.")
        if person_ids is not None:
            where.append(f"b.person_id IN ({marks(person_ids)})" if person_ids else "0")
            args += list(person_ids)
        if caption_status:
            where.append("b.caption_status = ?")
            args.append(caption_status)
        for tag in tags:  # driven from the tag index: one id list per tag
            where.append("b.image_id IN (SELECT image_id FROM image_tags WHERE tag = ?)")
            args.append(tag)
        for col, (lo, hi) in (("b.min_side", min_side), ("b.face_ratio", face_ratio)):
            if lo is not None:
                where.append(f"{col} >= ?")
                args.append(lo)
            if hi is not None:
                where.append(f"{col} <= ?")
                args.append(hi)
        if outlier is not None:
            where.append("b.outlier = ?" if outlier else "COALESCE(b.outlier, 0) = 0")
            if outlier:
                args.append(1)
        if caption_match:
            where.append("b.image_id IN (SELECT rowid FROM caption_fts WHERE caption_fts MATCH ?)")
            args.append(caption_match)
        if split == "unassigned":
            where.append("b.person_id NOT IN (SELECT person_id FROM splits)")
        elif split:
            where.append("b.person_id IN (SELECT person_id FROM splits WHERE split = ?)")
            args.append(split)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        facets_only = (person_ids is None and min_side == (None, None) and face_ratio == (None, None)
                       and outlier is None and not caption_match and not caption_status and not split)
        if facets_only and not tags:
            total = self._facet_count(status, reasons_mask, pose)
        elif facets_only and len(tags) == 1 and not reasons_mask and not pose:  # one tag, maybe a status
            total = self._tag_count(tags[0], status)
        else:
            total = self._count(clause, args)
        if not total or offset >= total:
            return [], int(total)
        # Which end of the sort order is nearer this page: past the middle, walk from the other end
        # with the order reversed (at millions of images a deep page costs half the walk).
        reverse = offset > (total - limit) / 2
        if reverse:
            limit, offset = min(limit, total - offset), max(0, total - offset - limit)
        desc = descending != reverse
        direction = " DESC" if desc else ""
        order = f"{self._SORTS[sort]}{direction}, b.image_id{direction}"
        # Walk the sort's own covering index when the matches are dense enough that finding the page
        # that way beats collecting and sorting every match (SQLite's choice for any equality filter).
        # Persons, tags and caption words give short id lists: those stay with the planner.
        hint = ""
        if person_ids is None and not tags and not caption_match:
            density = total / max(1, self._browse_rows())
            if (offset + limit) / density <= 4 * total:
                hint = self._SORT_INDEXES[sort]
        ids = [r[0] for r in self.conn.execute(
            f"SELECT b.image_id FROM browse b {hint} {clause} ORDER BY {order} LIMIT ? OFFSET ?", args + [limit, offset])]
        if reverse:
            ids.reverse()
        return ids, int(total)

    # -- the browse columns in memory (millions of images) -------------------------------
    browse_columns_min_rows: int | None = min_rows_setting()

    def browse_columns(self, wait: bool = False) -> BrowseColumns | None:
        """The in-memory snapshot of the browse index if it is current, else None (SQLite answers).

        A workspace of at least ``browse_columns_min_rows`` images gets one: a stale or missing
        snapshot is brought up to date in the background (``wait``: now, in this thread).
        """
        if self.browse_columns_min_rows is None or self._browse_rows() < self.browse_columns_min_rows:
            return None
        holder = holder_for(str(self.path.resolve()))
        cols = holder.fresh(browse_version(self.conn))
        if cols is not None:
            return cols
        if wait:
            holder.refresh(self.connect)
            return holder.fresh(browse_version(self.conn))
        holder.refresh_in_background(self.connect)
        return None

    def _fts_ids(self, match: str) -> np.ndarray:
        """Image ids whose caption matches an FTS5 query (in one string: no Python row per match)."""
        ids = self.conn.execute("SELECT group_concat(rowid) FROM caption_fts WHERE caption_fts MATCH ?",
                                (match,)).fetchone()[0]
        return int_list(ids)

    def _split_persons(self, split: str) -> np.ndarray:
        sql = "SELECT person_id FROM splits" + ("" if split == "unassigned" else " WHERE split = ?")
        args = () if split == "unassigned" else (split,)
        return np.fromiter((r[0] for r in self.conn.execute(sql, args)), dtype=np.int64)
