"""Images, their sources, face analyses and curation verdicts."""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .base import marks, now

#: rows per write transaction in long stages
WRITE_BATCH = 1000


@dataclass(frozen=True)
class FaceRow:
    """One detected face as stored; faces of an image are ordered largest first."""

    face_index: int
    bbox: tuple[float, float, float, float]
    score: float
    kps: list[list[float]]
    embedding: np.ndarray | None
    area_ratio: float
    yaw: float | None
    pitch: float | None
    pose: str | None


class ImagesMixin:
    # -- ingest --------------------------------------------------------------------------
    def source_outcome(self, source: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM sources WHERE source = ?", (source,)).fetchone()

    def image_id_by_sha(self, sha256: str) -> int | None:
        row = self.conn.execute("SELECT id FROM images WHERE sha256 = ?", (sha256,)).fetchone()
        return int(row[0]) if row else None

    def image_source(self, image_id: int) -> str | None:
        row = self.conn.execute("SELECT source FROM images WHERE id = ?", (image_id,)).fetchone()
        return row[0] if row else None

    def _person_id(self, conn: sqlite3.Connection, name: str) -> int:
        conn.execute("INSERT INTO persons(name) VALUES (?) ON CONFLICT(name) DO NOTHING", (name,))
        return int(conn.execute("SELECT id FROM persons WHERE name = ?", (name,)).fetchone()[0])

    def add_image(
        self,
        *,
        source: str,
        sha256: str,
        person: str,
        media_path: str,
        width: int,
        height: int,
        original_mode: str,
        exif_rotated: bool,
        import_caption: str | None = None,
        import_meta: dict | None = None,
        run_id: int | None = None,
    ) -> int:
        """Insert a new image and mark its source ingested, in one transaction."""
        with self.transaction() as conn:
            pid = self._person_id(conn, person)
            cur = conn.execute(
                """INSERT INTO images(sha256, person_id, media_path, source, width, height, original_mode,
                                      exif_rotated, import_caption, import_meta, added_at, run_id)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    sha256, pid, media_path, source, width, height, original_mode, int(exif_rotated),
                    import_caption, json.dumps(import_meta) if import_meta else None, now(), run_id,
                ),
            )
            image_id = int(cur.lastrowid)
            self._set_source(conn, source, "ingested", image_id, None, None)
            self._refresh_browse(conn, [image_id])
            if import_caption:
                conn.execute("INSERT INTO caption_fts(rowid, caption) VALUES (?, ?)", (image_id, import_caption))
            return image_id

    def mark_source(self, source: str, outcome: str, image_id: int | None, code: str | None, detail: str | None) -> None:
        with self.transaction() as conn:
            self._set_source(conn, source, outcome, image_id, code, detail)

    @staticmethod
    def _set_source(conn, source, outcome, image_id, code, detail) -> None:
        conn.execute(
            """INSERT INTO sources(source, outcome, image_id, code, detail, seen_at) VALUES (?, ?, ?, ?, ?, ?)
               ON CONFLICT(source) DO UPDATE SET outcome = excluded.outcome, image_id = excluded.image_id,
                   code = excluded.code, detail = excluded.detail, seen_at = excluded.seen_at""",
            (source, outcome, image_id, code, detail, now()),
        )

    def ingest_problems(self) -> list[dict]:
        """Rejected and duplicate inputs with their reasons, for the CLI and the UI."""
        rows = self.conn.execute(
            """SELECT s.source, s.outcome, s.code, s.detail, i.source AS duplicate_of
               FROM sources s LEFT JOIN images i ON i.id = s.image_id
               WHERE s.outcome != 'ingested' ORDER BY s.source"""
        ).fetchall()
        return [dict(r) for r in rows]

    # -- analysis ------------------------------------------------------------------------
    def images_to_analyze(self, pack: str, redo: bool = False) -> list[tuple[int, str]]:
        """Images without an analysis by ``pack`` (all of them with ``redo``)."""
        if redo:
            sql = "SELECT id, media_path FROM images ORDER BY id"
            args: tuple = ()
        else:
            sql = """SELECT i.id, i.media_path FROM images i LEFT JOIN analyses a ON a.image_id = i.id
                     WHERE a.image_id IS NULL OR a.pack != ? ORDER BY i.id"""
            args = (pack,)
        return [(int(r[0]), str(r[1])) for r in self.conn.execute(sql, args)]

    def save_analysis(
        self,
        image_id: int,
        pack: str,
        faces: Sequence[dict] | None,
        largest_face_ratio: float | None,
        error: str | None = None,
        run_id: int | None = None,
    ) -> None:
        """Replace an image's faces and analysis row atomically."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM faces WHERE image_id = ?", (image_id,))
            for i, f in enumerate(faces or ()):
                emb = f.get("embedding")
                conn.execute(
                    """INSERT INTO faces(image_id, face_index, x1, y1, x2, y2, score, kps, embedding, area_ratio,
                                         yaw, pitch, pose) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (
                        image_id, i, *map(float, f["bbox"]), float(f["score"]), json.dumps(f["kps"]),
                        None if emb is None else np.asarray(emb, dtype=np.float32).tobytes(),
                        float(f["area_ratio"]), f.get("yaw"), f.get("pitch"), f.get("pose"),
                    ),
                )
            conn.execute(
                """INSERT INTO analyses(image_id, pack, face_count, largest_face_ratio, error, analyzed_at, rev, run_id)
                   VALUES (?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(rev), 0) + 1 FROM analyses), ?)
                   ON CONFLICT(image_id) DO UPDATE SET pack = excluded.pack, face_count = excluded.face_count,
                       largest_face_ratio = excluded.largest_face_ratio, error = excluded.error,
                       analyzed_at = excluded.analyzed_at, rev = excluded.rev, run_id = excluded.run_id""",
                (image_id, pack, None if faces is None else len(faces), largest_face_ratio, error, now(), run_id),
            )
            self._refresh_browse(conn, [image_id])

    def faces(self, image_id: int) -> list[FaceRow]:
        rows = self.conn.execute(
            "SELECT * FROM faces WHERE image_id = ? ORDER BY face_index", (image_id,)
        ).fetchall()
        return [_face_row(r) for r in rows]

    def subject_face(self, image_id: int) -> FaceRow | None:
        """The face the photo is about: the curation's choice, else the largest."""
        return self.subject_faces([image_id]).get(image_id)

    def subject_faces(self, image_ids: Sequence[int]) -> dict[int, FaceRow]:
        """:meth:`subject_face` of each image that has one, in one query."""
        rows = self.conn.execute(
            f"""SELECT f.* FROM faces f LEFT JOIN curation c ON c.image_id = f.image_id
                WHERE f.image_id IN ({marks(image_ids)}) AND f.face_index = COALESCE(c.subject_face, 0)""",
            tuple(image_ids)).fetchall() if image_ids else []
        return {int(r["image_id"]): _face_row(r) for r in rows}

    # -- curation ------------------------------------------------------------------------
    def person_groups(self, images: int) -> Iterator[tuple[int, int]]:
        """Person id ranges (first, last) of about ``images`` images each, every person whole (from the tally)."""
        first, n = None, 0
        for person_id, count in self.conn.execute(
                "SELECT person_id, SUM(n) FROM person_tally GROUP BY person_id HAVING SUM(n) > 0 ORDER BY person_id"):
            first = person_id if first is None else first
            n += count
            if n >= images:
                yield first, person_id
                first, n = None, 0
        if first is not None:
            yield first, person_id

    def curation_inputs(self, persons: tuple[int, int] | None = None) -> list[dict]:
        """What curation needs per image: size, analysis (and which revision of it) and every face.

        ``faces`` holds (face index, embedding or None, area ratio), largest first. ``persons``: only
        the images of person ids first..last. Read in one snapshot so that the verdicts match the
        analyses they were computed from (writers go on).
        """
        where, args = ("WHERE i.person_id BETWEEN ? AND ?", persons) if persons else ("", ())
        with self.snapshot() as conn:
            rows = conn.execute(
                f"""SELECT i.id AS image_id, p.name AS person, i.width, i.height,
                          a.image_id IS NOT NULL AS analyzed, a.face_count, a.largest_face_ratio, a.error, a.rev
                   FROM images i JOIN persons p ON p.id = i.person_id
                   LEFT JOIN analyses a ON a.image_id = i.id
                   {where}
                   ORDER BY i.id""", args
            ).fetchall()
            faces: dict[int, list] = {}
            for f in conn.execute(
                    f"""SELECT image_id, face_index, embedding, area_ratio FROM faces
                        WHERE image_id IN (SELECT i.id FROM images i {where}) ORDER BY image_id, face_index""", args):
                emb = None if f[2] is None else np.frombuffer(f[2], dtype=np.float32)
                faces.setdefault(int(f[0]), []).append((int(f[1]), emb, float(f[3])))
        out = []
        for r in rows:
            d = dict(r)
            d["faces"] = faces.get(d["image_id"], [])
            out.append(d)
        return out

    def save_curation(self, results: Iterable[dict], *, run_id: int | None = None, batch: int = WRITE_BATCH) -> None:
        """Store verdicts in short batches (a part of a curation; :meth:`finish_curation` ends it).

        Each batch is its own transaction, so a review or a score written meanwhile waits for
        one batch, never for the whole workspace.
        """
        stamp = now()
        results = list(results)
        for start in range(0, len(results), batch):
            chunk = results[start:start + batch]
            with self.transaction() as conn:
                conn.executemany(
                    """INSERT INTO curation(image_id, passed, reasons, reasons_mask, identity_sim, outlier, curated_at,
                                            subject_face, subject_by, analysis_rev, run_id)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT(image_id) DO UPDATE SET passed = excluded.passed, reasons = excluded.reasons,
                           reasons_mask = excluded.reasons_mask, identity_sim = excluded.identity_sim,
                           outlier = excluded.outlier, curated_at = excluded.curated_at,
                           subject_face = excluded.subject_face, subject_by = excluded.subject_by,
                           analysis_rev = excluded.analysis_rev, run_id = excluded.run_id""",
                    [(r["image_id"], int(r["passed"]), json.dumps(r["reasons"]), r["reasons_mask"], r["identity_sim"],
                      int(r["outlier"]), stamp, r.get("subject_face"), r.get("subject_by"), r.get("analysis_rev"), run_id)
                     for r in chunk])
                self._refresh_browse(conn, [r["image_id"] for r in chunk])
            self.yield_to_writers()

    def finish_curation(self, rules: dict) -> None:
        """Remember the rules every verdict was judged by, and refresh the planner's statistics."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO settings(key, value) VALUES ('curation_rules', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (json.dumps(rules),),
            )
            # planner statistics, so filtered + sorted pages pick the covering indexes; sampled, so
            # the lock is held for a moment even at a million rows
            conn.execute("PRAGMA analysis_limit = 2000")
            conn.execute("ANALYZE browse")
            conn.execute("ANALYZE image_tags")

    # -- reading -------------------------------------------------------------------------
    _IMAGE_ROWS = """SELECT i.id, i.sha256, p.name AS person, i.media_path, i.source, i.width, i.height,
                      i.original_mode, i.exif_rotated, i.import_caption, i.import_meta,
                      a.face_count, a.largest_face_ratio, a.error AS analysis_error, a.pack, a.analyzed_at,
                      a.run_id AS analysis_run, c.run_id AS curation_run, c.curated_at, i.run_id AS ingest_run,
                      f.pose, f.yaw, f.pitch, f.area_ratio AS subject_ratio,
                      c.passed, c.reasons, c.identity_sim, c.outlier, c.subject_face, c.subject_by,
                      (c.image_id IS NOT NULL AND c.analysis_rev IS NOT a.rev) AS verdict_stale,
                      b.caption, b.caption_status, b.caption_version
               FROM images i LEFT JOIN browse b ON b.image_id = i.id JOIN persons p ON p.id = i.person_id
               LEFT JOIN analyses a ON a.image_id = i.id
               LEFT JOIN curation c ON c.image_id = i.id
               LEFT JOIN faces f ON f.image_id = i.id AND f.face_index = COALESCE(c.subject_face, 0)"""

    def _image_rows(self, where: list[str], args: list, tail: str) -> list[dict]:
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        out = []
        for r in self.conn.execute(f"{self._IMAGE_ROWS} {clause} {tail}", args).fetchall():
            d = dict(r)
            d["reasons"] = json.loads(d["reasons"]) if d["reasons"] is not None else None
            d["import_meta"] = json.loads(d["import_meta"]) if d["import_meta"] else None
            d["exif_rotated"] = bool(d["exif_rotated"])
            d["outlier"] = None if d["outlier"] is None else bool(d["outlier"])
            d["passed"] = None if d["passed"] is None else bool(d["passed"])
            d["verdict_stale"] = bool(d["verdict_stale"])
            out.append(d)
        return out

    def image_table(self, image_ids: Sequence[int] | None = None, person: str | None = None) -> list[dict]:
        """Images with their person, analysis and verdict: the source of stats, list, detail and export."""
        where, args = [], []
        if image_ids is not None:
            where.append(f"i.id IN ({marks(image_ids)})")
            args += list(image_ids)
        if person is not None:
            where.append("p.name = ?")
            args.append(person)
        return self._image_rows(where, args, "ORDER BY p.name, i.id")

    def image_chunks(self, *, passed_only: bool = False, chunk: int = 2000) -> Iterator[list[dict]]:
        """:meth:`image_table`'s rows in id order, by ranges of ``chunk`` ids: memory stays bounded at millions.

        Ranges, not ``LIMIT``: whatever index the planner picks, each query reads one range (a LIMIT
        over "passed" rows had SQLite sort every passed image again for each chunk).
        """
        top = self.conn.execute("SELECT MAX(id) FROM images").fetchone()[0] or 0
        for lo in range(1, top + 1, chunk):
            where = ["i.id BETWEEN ? AND ?"] + (["c.passed = 1"] if passed_only else [])
            rows = self._image_rows(where, [lo, lo + chunk - 1], "ORDER BY i.id")
            if rows:
                yield rows

    def export_packs(self, passed_only: bool) -> list[str]:
        """The face packs that made the analyses of the images an export would write."""
        where = "WHERE c.passed = 1" if passed_only else ""
        return sorted(r[0] for r in self.conn.execute(
            f"""SELECT DISTINCT a.pack FROM analyses a LEFT JOIN curation c ON c.image_id = a.image_id {where}""")
            if r[0])

    def counts(self) -> dict[str, int]:
        c = self.conn
        problems = dict(c.execute(  # the few rows of the partial index, not every source
            "SELECT outcome, COUNT(*) FROM sources WHERE outcome != 'ingested' GROUP BY outcome").fetchall())
        return {
            "persons": c.execute("SELECT COUNT(*) FROM (SELECT person_id FROM person_tally GROUP BY person_id "
                                 "HAVING SUM(n) > 0)").fetchone()[0],
            "images": c.execute("SELECT COUNT(*) FROM images").fetchone()[0],
            "analyzed": c.execute("SELECT COUNT(*) FROM analyses").fetchone()[0],
            "curated": c.execute("SELECT COUNT(*) FROM curation").fetchone()[0],
            "rejected_inputs": problems.get("rejected", 0),
            "duplicate_inputs": problems.get("duplicate", 0),
        }



def _face_row(r: sqlite3.Row) -> FaceRow:
    return FaceRow(
        face_index=int(r["face_index"]),
        bbox=(r["x1"], r["y1"], r["x2"], r["y2"]),
        score=float(r["score"]),
        kps=json.loads(r["kps"]),
        embedding=None if r["embedding"] is None else np.frombuffer(r["embedding"], dtype=np.float32),
        area_ratio=float(r["area_ratio"]),
        yaw=r["yaw"],
        pitch=r["pitch"],
        pose=r["pose"],
    )
