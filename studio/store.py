"""The workspace database: the only module that speaks SQL.

SQLite in WAL mode so that the UI can read while a stage writes; the schema is versioned with
``PRAGMA user_version`` and migrated forward on open. Every stage writes through the small
methods here, each inside a transaction, so a killed job leaves whole rows or none.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 5

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE persons (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    );
    CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL UNIQUE,
        person_id INTEGER NOT NULL REFERENCES persons(id),
        media_path TEXT NOT NULL,
        source TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        original_mode TEXT NOT NULL,
        exif_rotated INTEGER NOT NULL DEFAULT 0,
        import_caption TEXT,
        import_meta TEXT,
        added_at TEXT NOT NULL
    );
    CREATE INDEX images_person ON images(person_id);
    -- Every input ever seen, keyed by where it came from: re-ingesting a source is a no-op.
    CREATE TABLE sources (
        source TEXT PRIMARY KEY,
        outcome TEXT NOT NULL CHECK (outcome IN ('ingested', 'duplicate', 'rejected')),
        image_id INTEGER REFERENCES images(id) ON DELETE SET NULL,
        code TEXT,
        detail TEXT,
        seen_at TEXT NOT NULL
    );
    CREATE INDEX sources_outcome ON sources(outcome);
    CREATE TABLE analyses (
        image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
        pack TEXT NOT NULL,
        face_count INTEGER,
        largest_face_ratio REAL,
        error TEXT,
        analyzed_at TEXT NOT NULL
    );
    CREATE TABLE faces (
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        face_index INTEGER NOT NULL,
        x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
        score REAL NOT NULL,
        kps TEXT NOT NULL,
        embedding BLOB,
        area_ratio REAL NOT NULL,
        yaw REAL, pitch REAL, pose TEXT,
        PRIMARY KEY (image_id, face_index)
    );
    CREATE TABLE curation (
        image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
        passed INTEGER NOT NULL,
        reasons TEXT NOT NULL,
        identity_sim REAL,
        outlier INTEGER NOT NULL DEFAULT 0,
        curated_at TEXT NOT NULL
    );
    CREATE INDEX curation_passed ON curation(passed);
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # v2: a denormalised row per image for browsing (filters + paging stay fast at 1M images),
    # attribute tags, and full-text search over captions.
    2: """
    ALTER TABLE curation ADD COLUMN reasons_mask INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE browse (
        image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
        person_id INTEGER NOT NULL,
        person_name TEXT NOT NULL,
        status INTEGER NOT NULL DEFAULT 0,
        reasons_mask INTEGER NOT NULL DEFAULT 0,
        pose TEXT,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        min_side INTEGER NOT NULL,
        face_count INTEGER,
        face_ratio REAL,
        outlier INTEGER,
        identity_sim REAL,
        caption TEXT,
        caption_status TEXT NOT NULL DEFAULT 'none'
    );
    -- person filter; then one covering index per sort key holding every filter column, so a
    -- sorted, filtered page is an index-only scan even deep into a million rows
    CREATE INDEX browse_person ON browse(person_id, image_id);
    CREATE INDEX browse_by_name ON browse(person_name, image_id, status, reasons_mask, pose, min_side, face_ratio, outlier, caption_status);
    CREATE INDEX browse_by_ratio ON browse(face_ratio, image_id, status, reasons_mask, pose, min_side, person_id, outlier, caption_status);
    CREATE INDEX browse_by_side ON browse(min_side, image_id, status, reasons_mask, pose, face_ratio, person_id, outlier, caption_status);
    CREATE INDEX browse_by_sim ON browse(identity_sim, image_id, status, reasons_mask, pose, min_side, face_ratio, person_id, outlier, caption_status);
    CREATE INDEX browse_by_faces ON browse(face_count, image_id, status, reasons_mask, pose, min_side, face_ratio, person_id, outlier, caption_status);
    CREATE INDEX browse_filters ON browse(status, reasons_mask, pose, min_side, face_ratio, person_id, outlier, caption_status);
    CREATE TABLE image_tags (
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        tag TEXT NOT NULL,
        PRIMARY KEY (image_id, tag)
    );
    CREATE INDEX image_tags_tag ON image_tags(tag, image_id);
    CREATE VIRTUAL TABLE caption_fts USING fts5(caption, tokenize = 'unicode61');
    INSERT INTO caption_fts(rowid, caption) SELECT id, import_caption FROM images WHERE import_caption IS NOT NULL
    """,
    # v3: caption versions. Every change (model caption, edit, approval, rejection) is a new row
    # with who and when; the newest row is the image's current caption.
    3: """
    CREATE TABLE captions (
        id INTEGER PRIMARY KEY,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        text TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('imported', 'generated', 'edited', 'approved', 'rejected')),
        origin TEXT NOT NULL CHECK (origin IN ('import', 'model', 'human')),
        model TEXT,
        prompt_version TEXT,
        params TEXT,
        cache_key TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        cost_usd REAL,
        flags TEXT NOT NULL DEFAULT '[]',
        author TEXT NOT NULL,
        created_at TEXT NOT NULL,
        CONSTRAINT one_row_per_version UNIQUE (image_id, version)
    );
    CREATE INDEX captions_cache_key ON captions(cache_key);
    CREATE INDEX browse_caption_status ON browse(caption_status, image_id)
    """,
    # v4: generated samples with every setting that made them
    4: """
    CREATE TABLE generations (
        id INTEGER PRIMARY KEY,
        batch TEXT NOT NULL,
        model TEXT NOT NULL,
        model_spec TEXT NOT NULL,
        settings TEXT NOT NULL,
        reference TEXT NOT NULL,
        face TEXT NOT NULL,
        output_path TEXT NOT NULL,
        author TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX generations_batch ON generations(batch)
    """,
    # v5: the current caption is a pointer (a model rerun adds a version without displacing a
    # human-reviewed one); the subject face of each verdict (closest to the person's centroid);
    # which analysis a verdict saw, so verdicts made while `analyze` was writing show as stale.
    5: """
    ALTER TABLE browse ADD COLUMN caption_version INTEGER;
    UPDATE browse SET caption_version = (SELECT MAX(version) FROM captions c WHERE c.image_id = browse.image_id);
    ALTER TABLE analyses ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX analyses_rev ON analyses(rev);
    ALTER TABLE curation ADD COLUMN subject_face INTEGER;
    ALTER TABLE curation ADD COLUMN subject_by TEXT;
    ALTER TABLE curation ADD COLUMN analysis_rev INTEGER;
    UPDATE curation SET analysis_rev = CASE WHEN reasons LIKE '%not_analyzed%' THEN NULL ELSE 0 END
    """,
}

#: caption statuses a person gave; a model rerun never displaces these
HUMAN_REVIEWED = ("approved", "edited")


class StaleCaptionError(ValueError):
    """A review action on a caption version that is no longer the current one."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


class Store:
    """A workspace database. Connections are per thread (Gradio handlers run in threads)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._migrate()

    # -- connection plumbing -------------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (nested calls join the outer one)."""
        conn = self.conn
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: workspace schema v{version} is newer than this studio (v{SCHEMA_VERSION}); upgrade the studio"
                )
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _split_sql(_MIGRATIONS[v]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {v}")
            if 0 < version < 2:
                self._refresh_browse(conn)

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    # -- settings ------------------------------------------------------------------------
    def get_setting(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_setting(self, key: str, value: Any) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

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
    ) -> int:
        """Insert a new image and mark its source ingested, in one transaction."""
        with self.transaction() as conn:
            pid = self._person_id(conn, person)
            cur = conn.execute(
                """INSERT INTO images(sha256, person_id, media_path, source, width, height, original_mode,
                                      exif_rotated, import_caption, import_meta, added_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    sha256, pid, media_path, source, width, height, original_mode, int(exif_rotated),
                    import_caption, json.dumps(import_meta) if import_meta else None, _now(),
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
            (source, outcome, image_id, code, detail, _now()),
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
                """INSERT INTO analyses(image_id, pack, face_count, largest_face_ratio, error, analyzed_at, rev)
                   VALUES (?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(rev), 0) + 1 FROM analyses))
                   ON CONFLICT(image_id) DO UPDATE SET pack = excluded.pack, face_count = excluded.face_count,
                       largest_face_ratio = excluded.largest_face_ratio, error = excluded.error,
                       analyzed_at = excluded.analyzed_at, rev = excluded.rev""",
                (image_id, pack, None if faces is None else len(faces), largest_face_ratio, error, _now()),
            )
            self._refresh_browse(conn, [image_id])

    def faces(self, image_id: int) -> list[FaceRow]:
        rows = self.conn.execute(
            "SELECT * FROM faces WHERE image_id = ? ORDER BY face_index", (image_id,)
        ).fetchall()
        return [_face_row(r) for r in rows]

    def subject_face(self, image_id: int) -> FaceRow | None:
        """The face the photo is about: the curation's choice, else the largest."""
        row = self.conn.execute(
            """SELECT f.* FROM faces f LEFT JOIN curation c ON c.image_id = f.image_id
               WHERE f.image_id = ? AND f.face_index = COALESCE(c.subject_face, 0)""", (image_id,)).fetchone()
        return _face_row(row) if row else None

    # -- curation ------------------------------------------------------------------------
    def curation_inputs(self) -> list[dict]:
        """What curation needs per image: size, analysis (and which revision of it) and every face.

        ``faces`` holds (face index, embedding or None, area ratio), largest first. Read in one
        transaction so that the verdicts match the analyses they were computed from.
        """
        with self.transaction() as conn:
            rows = conn.execute(
                """SELECT i.id AS image_id, p.name AS person, i.width, i.height,
                          a.image_id IS NOT NULL AS analyzed, a.face_count, a.largest_face_ratio, a.error, a.rev
                   FROM images i JOIN persons p ON p.id = i.person_id
                   LEFT JOIN analyses a ON a.image_id = i.id
                   ORDER BY i.id"""
            ).fetchall()
            faces: dict[int, list] = {}
            for f in conn.execute("SELECT image_id, face_index, embedding, area_ratio FROM faces ORDER BY image_id, face_index"):
                emb = None if f[2] is None else np.frombuffer(f[2], dtype=np.float32)
                faces.setdefault(int(f[0]), []).append((int(f[1]), emb, float(f[3])))
        out = []
        for r in rows:
            d = dict(r)
            d["faces"] = faces.get(d["image_id"], [])
            out.append(d)
        return out

    def save_curation(self, results: Iterable[dict], rules: dict) -> None:
        """Replace every curation verdict in one transaction, with the rules that produced them."""
        now = _now()
        with self.transaction() as conn:
            conn.execute("DELETE FROM curation")
            conn.executemany(
                """INSERT INTO curation(image_id, passed, reasons, reasons_mask, identity_sim, outlier, curated_at,
                                        subject_face, subject_by, analysis_rev)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [
                    (r["image_id"], int(r["passed"]), json.dumps(r["reasons"]), r["reasons_mask"], r["identity_sim"],
                     int(r["outlier"]), now, r.get("subject_face"), r.get("subject_by"), r.get("analysis_rev"))
                    for r in results
                ],
            )
            self._refresh_browse(conn)
            conn.execute(
                "INSERT INTO settings(key, value) VALUES ('curation_rules', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (json.dumps(rules),),
            )
            # planner statistics, so filtered + sorted pages pick the covering indexes
            conn.execute("ANALYZE browse")
            conn.execute("ANALYZE image_tags")

    # -- browsing ------------------------------------------------------------------------
    @staticmethod
    def _refresh_browse(conn: sqlite3.Connection, image_ids: Sequence[int] | None = None) -> None:
        """Rebuild browse rows from the normalised tables (all, or just ``image_ids``).

        Caption columns are set when a row is first made and then belong to the caption stage.
        """
        where, args = "WHERE 1", ()
        if image_ids is not None:
            where = f"WHERE i.id IN ({_marks(image_ids)})"
            args = tuple(image_ids)
        conn.execute(
            f"""INSERT INTO browse(image_id, person_id, person_name, status, reasons_mask, pose, width, height, min_side,
                                   face_count, face_ratio, outlier, identity_sim, caption, caption_status)
                SELECT i.id, i.person_id, p.name,
                       CASE WHEN c.passed IS NULL THEN 0 WHEN c.passed THEN 1 ELSE 2 END,
                       COALESCE(c.reasons_mask, 0), f.pose, i.width, i.height, MIN(i.width, i.height),
                       a.face_count, COALESCE(f.area_ratio, a.largest_face_ratio),
                       CASE WHEN c.identity_sim IS NULL THEN NULL ELSE c.outlier END, c.identity_sim,
                       i.import_caption, CASE WHEN i.import_caption IS NULL THEN 'none' ELSE 'imported' END
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
                    outlier = excluded.outlier, identity_sim = excluded.identity_sim""",
            args,
        )

    def persons(self) -> list[tuple[str, int]]:
        """Every person with their number of images, by name."""
        rows = self.conn.execute(
            "SELECT p.name, COUNT(b.image_id) FROM persons p JOIN browse b ON b.person_id = p.id GROUP BY p.id ORDER BY p.name"
        ).fetchall()
        return [(r[0], int(r[1])) for r in rows]

    def person_ids(self, names: Sequence[str]) -> dict[str, int]:
        if not names:
            return {}
        rows = self.conn.execute(
            f"SELECT name, id FROM persons WHERE name IN ({_marks(names)})", tuple(names)
        ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def tag_counts(self, passed_only: bool = False) -> list[tuple[str, int]]:
        sql = "SELECT t.tag, COUNT(*) FROM image_tags t"
        if passed_only:
            sql += " JOIN browse b ON b.image_id = t.image_id WHERE b.status = 1"
        rows = self.conn.execute(sql + " GROUP BY t.tag ORDER BY COUNT(*) DESC, t.tag").fetchall()
        return [(r[0], int(r[1])) for r in rows]

    def set_tags(self, image_id: int, tags: Iterable[str]) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM image_tags WHERE image_id = ?", (image_id,))
            conn.executemany("INSERT INTO image_tags(image_id, tag) VALUES (?, ?)", [(image_id, t) for t in sorted(set(tags))])

    def tags_of(self, image_id: int) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT tag FROM image_tags WHERE image_id = ? ORDER BY tag", (image_id,))]

    def images_per_person(self, passed_only: bool = False) -> list[int]:
        """Image count of every person (with at least one image, or one kept image)."""
        where = "WHERE status = 1" if passed_only else ""
        return [int(r[0]) for r in self.conn.execute(f"SELECT COUNT(*) FROM browse {where} GROUP BY person_id")]

    def status_counts(self) -> dict[int, int]:
        return {int(r[0]): int(r[1]) for r in self.conn.execute("SELECT status, COUNT(*) FROM browse GROUP BY status")}

    def reason_bit_counts(self, bits: int) -> list[int]:
        """How many images have each of the first ``bits`` reason bits set (one scan)."""
        if bits == 0:
            return []
        sums = ", ".join(f"SUM((reasons_mask >> {i}) & 1)" for i in range(bits))
        row = self.conn.execute(f"SELECT {sums} FROM browse").fetchone()
        return [int(v or 0) for v in row]

    def pose_counts(self, passed_only: bool = True) -> dict[str, int]:
        where = "WHERE status = 1" if passed_only else ""
        return {(r[0] or "unknown"): int(r[1])
                for r in self.conn.execute(f"SELECT pose, COUNT(*) FROM browse {where} GROUP BY pose")}

    def problem_counts(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self.conn.execute(
            "SELECT code, COUNT(*) FROM sources WHERE outcome != 'ingested' GROUP BY code")}

    def poses(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT pose FROM browse WHERE pose IS NOT NULL ORDER BY pose")]

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
        sort: str = "id",
        descending: bool = False,
        limit: int = 48,
        offset: int = 0,
    ) -> tuple[list[dict], int]:
        """One page of images matching every given filter, and how many match in all."""
        where, args = [], []
        if person_ids is not None:
            where.append(f"b.person_id IN ({_marks(person_ids)})" if person_ids else "0")
            args += list(person_ids)
        for col, value in (("b.status", status), ("b.pose", pose or None), ("b.caption_status", caption_status or None)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if reasons_mask:
            where.append("(b.reasons_mask & ?) != 0")
            args.append(reasons_mask)
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
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        direction = " DESC" if descending else ""
        order = f"{self._SORTS[sort]}{direction}, b.image_id{direction}"
        total = self.conn.execute(f"SELECT COUNT(*) FROM browse b {clause}", args).fetchone()[0]
        # ids first (index-only), then the full rows of just this page
        ids = [r[0] for r in self.conn.execute(
            f"SELECT b.image_id FROM browse b {clause} ORDER BY {order} LIMIT ? OFFSET ?", args + [limit, offset])]
        if not ids:
            return [], int(total)
        rows = self.conn.execute(
            f"""SELECT b.*, b.person_name AS person, i.media_path FROM browse b JOIN images i ON i.id = b.image_id
                WHERE b.image_id IN ({_marks(ids)})""",
            ids,
        ).fetchall()
        by_id = {r["image_id"]: dict(r) for r in rows}
        return [by_id[i] for i in ids], int(total)

    # -- captions ------------------------------------------------------------------------
    def captioned_keys(self) -> set[str]:
        """Cache keys of every model caption ever stored: a resumed run skips these."""
        return {r[0] for r in self.conn.execute("SELECT DISTINCT cache_key FROM captions WHERE cache_key IS NOT NULL")}

    def images_for_captioning(self, kept_only: bool = True) -> list[tuple[int, str, str]]:
        """(image id, sha256, media path) of the images a caption run covers."""
        sql = "SELECT i.id, i.sha256, i.media_path FROM images i JOIN browse b ON b.image_id = i.id"
        if kept_only:
            sql += " WHERE b.status = 1"
        return [(int(r[0]), r[1], r[2]) for r in self.conn.execute(sql + " ORDER BY i.id")]

    def add_caption(self, image_id: int, text: str, *, status: str, origin: str, author: str, flags: Sequence[str] = (),
                    model: str | None = None, prompt_version: str | None = None, params: dict | None = None,
                    cache_key: str | None = None, prompt_tokens: int | None = None,
                    completion_tokens: int | None = None, cost_usd: float | None = None,
                    expected_version: int | None = None, overwrite_reviewed: bool = False) -> tuple[int, bool]:
        """Append a caption version; returns (version, whether it became the current caption).

        A model caption does not displace a human-reviewed one (approved or edited) unless
        ``overwrite_reviewed``; it is kept as a version to compare. ``expected_version`` is the
        version the person acting saw: if another one is current now, nothing is written and
        :class:`StaleCaptionError` says who changed it. Check and write are one transaction.
        """
        with self.transaction() as conn:
            cur = conn.execute(
                """SELECT c.version, c.status, c.author FROM browse b
                   JOIN captions c ON c.image_id = b.image_id AND c.version = b.caption_version
                   WHERE b.image_id = ?""", (image_id,)).fetchone()
            if expected_version is not None and (cur is None or int(cur[0]) != int(expected_version)):
                now = f"version {cur[0]} ({cur[1]} by {cur[2]})" if cur else "no caption"
                raise StaleCaptionError(
                    f"the caption of image {image_id} changed since you opened it: you saw version {expected_version}, "
                    f"the current one is {now}. Reload it and act again.")
            make_current = overwrite_reviewed or origin != "model" or cur is None or cur[1] not in HUMAN_REVIEWED
            version = conn.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM captions WHERE image_id = ?",
                                   (image_id,)).fetchone()[0]
            conn.execute(
                """INSERT INTO captions(image_id, version, text, status, origin, model, prompt_version, params, cache_key,
                                        prompt_tokens, completion_tokens, cost_usd, flags, author, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (image_id, version, text, status, origin, model, prompt_version,
                 json.dumps(params, sort_keys=True) if params is not None else None, cache_key, prompt_tokens,
                 completion_tokens, cost_usd, json.dumps(list(flags)), author, _now()),
            )
            if not make_current:
                return int(version), False
            conn.execute("UPDATE browse SET caption = ?, caption_status = ?, caption_version = ? WHERE image_id = ?",
                         (text, status, version, image_id))
            conn.execute("DELETE FROM caption_fts WHERE rowid = ?", (image_id,))
            if text:
                conn.execute("INSERT INTO caption_fts(rowid, caption) VALUES (?, ?)", (image_id, text))
            return int(version), True

    def caption_history(self, image_id: int) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM captions WHERE image_id = ? ORDER BY version", (image_id,)).fetchall()
        return [_caption_row(r) for r in rows]

    def current_caption(self, image_id: int) -> dict | None:
        row = self.conn.execute(
            """SELECT c.* FROM captions c JOIN browse b ON b.image_id = c.image_id AND c.version = b.caption_version
               WHERE c.image_id = ?""", (image_id,)).fetchone()
        return _caption_row(row) if row else None

    def caption_queue(self, *, status: str | None = None, flag: str | None = None, person: str | None = None,
                      limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
        """Current captions (newest version per image) filtered for review, oldest image first."""
        where, args = ["c.version = b.caption_version"], []
        if status:
            where.append("c.status = ?")
            args.append(status)
        if flag == "any":
            where.append("c.flags != '[]'")
        elif flag == "none":
            where.append("c.flags = '[]'")
        elif flag:
            where.append("EXISTS (SELECT 1 FROM json_each(c.flags) WHERE value = ?)")
            args.append(flag)
        if person:
            where.append("b.person_name = ?")
            args.append(person)
        clause = " AND ".join(where)
        base = f"FROM captions c JOIN browse b ON b.image_id = c.image_id JOIN images i ON i.id = c.image_id WHERE {clause}"
        total = self.conn.execute(f"SELECT COUNT(*) {base}", args).fetchone()[0]
        rows = self.conn.execute(
            f"SELECT c.*, b.person_name AS person, i.media_path {base} ORDER BY c.image_id LIMIT ? OFFSET ?",
            args + [limit, offset]).fetchall()
        out = []
        for r in rows:
            d = _caption_row(r)
            d["person"], d["media_path"] = r["person"], r["media_path"]
            out.append(d)
        return out, int(total)

    def caption_usage(self) -> dict:
        row = self.conn.execute(
            """SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),
                      COALESCE(SUM(cost_usd), 0) FROM captions WHERE origin = 'model'""").fetchone()
        return {"model_captions": int(row[0]), "prompt_tokens": int(row[1]), "completion_tokens": int(row[2]),
                "cost_usd": round(float(row[3]), 6)}

    def current_caption_flags(self) -> dict[int, tuple[str, list[str]]]:
        """image id -> (status, flags) of its current caption."""
        return {int(r[0]): (r[1], json.loads(r[2])) for r in self.conn.execute(
            """SELECT c.image_id, c.status, c.flags FROM captions c
               JOIN browse b ON b.image_id = c.image_id AND c.version = b.caption_version""")}

    def caption_status_counts(self) -> list[tuple[str, int]]:
        return [(r[0], int(r[1])) for r in self.conn.execute(
            "SELECT caption_status, COUNT(*) FROM browse GROUP BY caption_status")]

    def current_captions(self) -> list[tuple[int, str, str]]:
        """(image id, text, status) of every image's current caption."""
        return [(int(r[0]), r[1], r[2]) for r in self.conn.execute(
            "SELECT image_id, caption, caption_status FROM browse WHERE caption IS NOT NULL")]

    # -- generations ---------------------------------------------------------------------
    def add_generation(self, *, batch: str, model: str, model_spec: dict, settings: dict, reference: str, face: dict,
                       output_path: str, author: str) -> int:
        with self.transaction() as conn:
            cur = conn.execute(
                """INSERT INTO generations(batch, model, model_spec, settings, reference, face, output_path, author,
                                           created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (batch, model, json.dumps(model_spec), json.dumps(settings), reference, json.dumps(face), output_path,
                 author, _now()))
            return int(cur.lastrowid)

    def generations(self, batch: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM generations", ()
        if batch:
            sql, args = sql + " WHERE batch = ?", (batch,)
        out = []
        for r in self.conn.execute(sql + " ORDER BY id", args):
            d = dict(r)
            for k in ("model_spec", "settings", "face"):
                d[k] = json.loads(d[k])
            out.append(d)
        return out

    # -- reading -------------------------------------------------------------------------
    def image_table(self, image_ids: Sequence[int] | None = None, person: str | None = None) -> list[dict]:
        """Images with their person, analysis and verdict: the source of stats, list, detail and export."""
        where, args = [], []
        if image_ids is not None:
            where.append(f"i.id IN ({_marks(image_ids)})")
            args += list(image_ids)
        if person is not None:
            where.append("p.name = ?")
            args.append(person)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        rows = self.conn.execute(
            f"""SELECT i.id, i.sha256, p.name AS person, i.media_path, i.source, i.width, i.height,
                      i.original_mode, i.exif_rotated, i.import_caption, i.import_meta,
                      a.face_count, a.largest_face_ratio, a.error AS analysis_error, a.pack,
                      f.pose, f.yaw, f.pitch, f.area_ratio AS subject_ratio,
                      c.passed, c.reasons, c.identity_sim, c.outlier, c.subject_face, c.subject_by,
                      (c.image_id IS NOT NULL AND c.analysis_rev IS NOT a.rev) AS verdict_stale,
                      b.caption, b.caption_status, b.caption_version
               FROM images i LEFT JOIN browse b ON b.image_id = i.id JOIN persons p ON p.id = i.person_id
               LEFT JOIN analyses a ON a.image_id = i.id
               LEFT JOIN curation c ON c.image_id = i.id
               LEFT JOIN faces f ON f.image_id = i.id AND f.face_index = COALESCE(c.subject_face, 0)
               {clause}
               ORDER BY p.name, i.id""",
            args,
        ).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["reasons"] = json.loads(d["reasons"]) if d["reasons"] is not None else None
            d["import_meta"] = json.loads(d["import_meta"]) if d["import_meta"] else None
            d["exif_rotated"] = bool(d["exif_rotated"])
            d["outlier"] = None if d["outlier"] is None else bool(d["outlier"])
            d["passed"] = None if d["passed"] is None else bool(d["passed"])
            d["verdict_stale"] = bool(d["verdict_stale"])
            out.append(d)
        return out

    def stale_verdicts(self) -> int:
        """Verdicts computed from another analysis than the image has now (curate ran while analyze wrote)."""
        return int(self.conn.execute(
            """SELECT COUNT(*) FROM curation c LEFT JOIN analyses a ON a.image_id = c.image_id
               WHERE c.analysis_rev IS NOT a.rev""").fetchone()[0])

    def counts(self) -> dict[str, int]:
        c = self.conn
        return {
            "persons": c.execute("SELECT COUNT(DISTINCT person_id) FROM images").fetchone()[0],
            "images": c.execute("SELECT COUNT(*) FROM images").fetchone()[0],
            "analyzed": c.execute("SELECT COUNT(*) FROM analyses").fetchone()[0],
            "curated": c.execute("SELECT COUNT(*) FROM curation").fetchone()[0],
            "rejected_inputs": c.execute("SELECT COUNT(*) FROM sources WHERE outcome = 'rejected'").fetchone()[0],
            "duplicate_inputs": c.execute("SELECT COUNT(*) FROM sources WHERE outcome = 'duplicate'").fetchone()[0],
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


def _marks(values: Sequence) -> str:
    """``?, ?, ?``: one SQL parameter per value of an IN list."""
    return ",".join("?" * len(values))


def _caption_row(r: sqlite3.Row) -> dict:
    d = dict(r)
    d["flags"] = json.loads(d["flags"])
    d["params"] = json.loads(d["params"]) if d["params"] else None
    return d


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit our open transaction)."""
    code = "\n".join(line for line in script.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in code.split(";") if s.strip()]
