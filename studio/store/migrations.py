"""Schema versions, oldest first; a workspace is migrated forward on open, in one transaction.

SQL steps are below; steps that must compute (backfills) are Python functions run after the SQL
of their version. Each version is tested by opening a database written by the studio release
that had it (tests/data/old_workspaces).
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from ..codes import REASONS, reasons_mask

SCHEMA_VERSION = 11

MIGRATIONS: dict[int, str] = {
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
    # v6: runs (every long stage, with progress, log and outcome) and provenance: each result row
    # points at the run that made it
    6: """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
        settings TEXT NOT NULL DEFAULT '{}',
        inputs TEXT NOT NULL DEFAULT '{}',
        argv TEXT,
        author TEXT NOT NULL,
        pid INTEGER,
        done INTEGER NOT NULL DEFAULT 0,
        total INTEGER,
        created_at TEXT NOT NULL,
        started_at TEXT,
        ended_at TEXT,
        heartbeat REAL,
        exit_code INTEGER,
        log_path TEXT,
        result TEXT,
        error TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        resumes INTEGER REFERENCES runs(id)
    );
    CREATE INDEX runs_by_kind ON runs(kind, id);
    CREATE INDEX runs_by_status ON runs(status, id);
    ALTER TABLE images ADD COLUMN run_id INTEGER;
    ALTER TABLE analyses ADD COLUMN run_id INTEGER;
    ALTER TABLE curation ADD COLUMN run_id INTEGER;
    ALTER TABLE captions ADD COLUMN run_id INTEGER;
    ALTER TABLE generations ADD COLUMN run_id INTEGER;
    CREATE TABLE exports (
        id INTEGER PRIMARY KEY,
        out_dir TEXT NOT NULL,
        settings TEXT NOT NULL,
        result TEXT NOT NULL,
        run_id INTEGER,
        author TEXT NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    # v7: cross-training. Persons (never single images) are split; pairs are (target i, face j)
    # of one person; perceptual hashes (whole photo, subject face) are cached for near-duplicate checks.
    7: """
    CREATE TABLE splits (
        person_id INTEGER PRIMARY KEY REFERENCES persons(id) ON DELETE CASCADE,
        split TEXT NOT NULL CHECK (split IN ('train', 'validation', 'test')),
        seed INTEGER NOT NULL,
        run_id INTEGER,
        assigned_at TEXT NOT NULL
    );
    CREATE INDEX splits_by_split ON splits(split);
    CREATE TABLE pairs (
        id INTEGER PRIMARY KEY,
        split TEXT NOT NULL,
        target_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        face_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        strategy TEXT NOT NULL,
        seed INTEGER NOT NULL,
        run_id INTEGER,
        UNIQUE (split, target_id, face_id),
        CHECK (target_id != face_id)
    );
    CREATE TABLE image_hashes (
        image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
        phash TEXT NOT NULL,
        face_phash TEXT
    )
    """,
    8: """
    -- Evaluation test sets: an input face (its analysis kept with the item), a prompt, optionally the
    -- attribute asked for and a real photo of the same person showing it.
    CREATE TABLE testsets (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL CHECK (kind IN ('customization', 'fidelity')),
        source TEXT NOT NULL,
        settings TEXT NOT NULL,
        pack TEXT NOT NULL,
        created_at TEXT NOT NULL,
        run_id INTEGER
    );
    CREATE TABLE testset_items (
        id INTEGER PRIMARY KEY,
        testset_id INTEGER NOT NULL REFERENCES testsets(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        person TEXT,
        input_image_id INTEGER,
        input_path TEXT NOT NULL,
        face TEXT NOT NULL,
        embedding BLOB NOT NULL,
        prompt TEXT NOT NULL,
        attribute TEXT,
        target_image_id INTEGER,
        target_path TEXT,
        UNIQUE (testset_id, idx)
    );
    -- One generated sample per distinct setting (key = hash of model, item, λ, seed, settings):
    -- a rerun, or another evaluation asking for the same sample, reuses it.
    CREATE TABLE eval_samples (
        key TEXT PRIMARY KEY,
        item_id INTEGER NOT NULL REFERENCES testset_items(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        ip_scale REAL NOT NULL,
        seed INTEGER NOT NULL,
        settings TEXT NOT NULL,
        generation_id INTEGER REFERENCES generations(id) ON DELETE SET NULL,
        output_path TEXT NOT NULL,
        run_id INTEGER,
        created_at TEXT NOT NULL
    );
    CREATE TABLE eval_scores (
        sample_key TEXT NOT NULL REFERENCES eval_samples(key) ON DELETE CASCADE,
        scorer TEXT NOT NULL,
        clip_t REAL,
        clip_i REAL,
        face_sim REAL,
        faces INTEGER NOT NULL,
        attribute TEXT,
        attr_score REAL,
        attr_correct INTEGER,
        yaw REAL, pitch REAL, pose TEXT,
        run_id INTEGER,
        scored_at TEXT NOT NULL,
        PRIMARY KEY (sample_key, scorer)
    );
    CREATE TABLE eval_run_samples (
        run_id INTEGER NOT NULL,
        sample_key TEXT NOT NULL REFERENCES eval_samples(key) ON DELETE CASCADE,
        PRIMARY KEY (run_id, sample_key)
    )
    """,
    9: """
    -- Human evaluation: a study shows items (a generated image, its input face, its prompt) to
    -- assigned annotators, each in their own shuffled order, and keeps one row per score.
    CREATE TABLE studies (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL CHECK (status IN ('draft', 'open', 'closed')),
        instructions TEXT NOT NULL,
        per_item INTEGER NOT NULL,
        seed INTEGER NOT NULL,
        source TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        opened_at TEXT,
        closed_at TEXT
    );
    CREATE TABLE study_items (
        id INTEGER PRIMARY KEY,
        study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('sample', 'duplicate')),
        duplicate_of INTEGER REFERENCES study_items(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        prompt TEXT NOT NULL,
        image_path TEXT NOT NULL,
        face_path TEXT NOT NULL,
        generation_id INTEGER,
        UNIQUE (study_id, idx)
    );
    CREATE TABLE study_assignments (
        study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
        annotator TEXT NOT NULL,
        position INTEGER NOT NULL,
        item_id INTEGER NOT NULL REFERENCES study_items(id) ON DELETE CASCADE,
        shown_at REAL,
        done INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (study_id, annotator, position),
        UNIQUE (study_id, annotator, item_id)
    );
    CREATE INDEX study_assignments_todo ON study_assignments(study_id, annotator, done, position);
    CREATE TABLE scores (
        study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
        item_id INTEGER NOT NULL REFERENCES study_items(id) ON DELETE CASCADE,
        annotator TEXT NOT NULL,
        criterion TEXT NOT NULL CHECK (criterion IN ('customization', 'fidelity', 'quality')),
        score INTEGER NOT NULL CHECK (score BETWEEN 0 AND 5),
        seconds REAL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (study_id, item_id, annotator, criterion)
    );
    CREATE TABLE score_history (
        id INTEGER PRIMARY KEY,
        study_id INTEGER NOT NULL,
        item_id INTEGER NOT NULL,
        annotator TEXT NOT NULL,
        criterion TEXT NOT NULL,
        score INTEGER NOT NULL,
        seconds REAL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX score_history_item ON score_history(study_id, item_id, annotator);
    CREATE TABLE item_comments (
        study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
        item_id INTEGER NOT NULL REFERENCES study_items(id) ON DELETE CASCADE,
        annotator TEXT NOT NULL,
        comment TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (study_id, item_id, annotator)
    )
    """,
    10: """
    -- Statistics at millions of images: counts kept current by triggers (TALLY_TRIGGERS) instead of
    -- a scan of every image; filled in run_backfills. A verdict's staleness moves into browse.
    ALTER TABLE browse ADD COLUMN stale INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE person_tally (
        person_id INTEGER NOT NULL,
        status INTEGER NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (person_id, status)
    ) WITHOUT ROWID;
    CREATE TABLE facet_tally (
        status INTEGER NOT NULL,
        reasons_mask INTEGER NOT NULL,
        pose TEXT NOT NULL,
        stale INTEGER NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (status, reasons_mask, pose, stale)
    ) WITHOUT ROWID;
    CREATE TABLE tag_tally (
        tag TEXT NOT NULL,
        status INTEGER NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (tag, status)
    ) WITHOUT ROWID;
    CREATE INDEX sources_problems ON sources(code) WHERE outcome != 'ingested'
    """,
    # v11: a log of which images' browse rows or tags changed (CHANGE_TRIGGERS), so that the browse
    # columns kept in memory at millions of images (store/columns.py) know whether they are current
    # and which rows to read again; no backfill, the triggers start it
    11: """
    -- AUTOINCREMENT: a seq is never handed out twice, even after the log was emptied
    CREATE TABLE browse_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        image_id INTEGER NOT NULL
    )
    """,
}

#: Keep the tallies equal to GROUP BYs over browse and image_tags, row by row (tested against them).
#: A browse row counts once per (person, status), once per (status, reasons, pose, stale), and
#: once per (tag, status) for each of its tags; rows only ever change, they are never deleted.
TALLY_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS browse_tally_insert AFTER INSERT ON browse BEGIN
    INSERT INTO person_tally(person_id, status, n) VALUES (NEW.person_id, NEW.status, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
    INSERT INTO facet_tally(status, reasons_mask, pose, stale, n)
        VALUES (NEW.status, NEW.reasons_mask, COALESCE(NEW.pose, ''), NEW.stale, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
    INSERT INTO tag_tally(tag, status, n) SELECT tag, NEW.status, 1 FROM image_tags WHERE image_id = NEW.image_id
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS browse_tally_person AFTER UPDATE OF person_id, status ON browse
WHEN OLD.person_id IS NOT NEW.person_id OR OLD.status IS NOT NEW.status BEGIN
    UPDATE person_tally SET n = n - 1 WHERE person_id = OLD.person_id AND status = OLD.status;
    INSERT INTO person_tally(person_id, status, n) VALUES (NEW.person_id, NEW.status, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS browse_tally_facet AFTER UPDATE OF status, reasons_mask, pose, stale ON browse
WHEN OLD.status IS NOT NEW.status OR OLD.reasons_mask IS NOT NEW.reasons_mask OR OLD.pose IS NOT NEW.pose
     OR OLD.stale IS NOT NEW.stale BEGIN
    UPDATE facet_tally SET n = n - 1 WHERE status = OLD.status AND reasons_mask = OLD.reasons_mask
        AND pose = COALESCE(OLD.pose, '') AND stale = OLD.stale;
    INSERT INTO facet_tally(status, reasons_mask, pose, stale, n)
        VALUES (NEW.status, NEW.reasons_mask, COALESCE(NEW.pose, ''), NEW.stale, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS browse_tally_tags AFTER UPDATE OF status ON browse
WHEN OLD.status IS NOT NEW.status BEGIN
    UPDATE tag_tally SET n = n - 1
        WHERE status = OLD.status AND tag IN (SELECT tag FROM image_tags WHERE image_id = OLD.image_id);
    INSERT INTO tag_tally(tag, status, n) SELECT tag, NEW.status, 1 FROM image_tags WHERE image_id = NEW.image_id
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS image_tags_tally_insert AFTER INSERT ON image_tags BEGIN
    INSERT INTO tag_tally(tag, status, n) SELECT NEW.tag, status, 1 FROM browse WHERE image_id = NEW.image_id
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS image_tags_tally_delete AFTER DELETE ON image_tags BEGIN
    UPDATE tag_tally SET n = n - 1
        WHERE tag = OLD.tag AND status = (SELECT status FROM browse WHERE image_id = OLD.image_id);
END
"""


def browse_ddl() -> list[str]:
    """The browse table and its indexes as the migrations leave them, read from a fresh schema built in
    memory: today's shape is written once, in :data:`MIGRATIONS`, and an old workspace is rebuilt to it."""
    mem = sqlite3.connect(":memory:")
    try:
        for v in range(1, SCHEMA_VERSION + 1):
            for statement in split_sql(MIGRATIONS[v]):
                mem.execute(statement)
        rows = mem.execute("""SELECT sql FROM sqlite_master WHERE tbl_name = 'browse' AND type IN ('table', 'index')
                              AND sql IS NOT NULL ORDER BY type = 'index', name""").fetchall()
    finally:
        mem.close()
    return [sql for (sql,) in rows]

#: Log every change of what Browse filters, sorts or pages on (a browse row, a tag), newest last.
#: The last seq handed out is the browse index's version; the log keeps the last CHANGE_LOG_ROWS changes (each
#: write drops the one that many before it), and a reader further behind than that reads everything.
CHANGE_LOG_ROWS = 1_000_000
_LOG = """
    INSERT INTO browse_changes(image_id) VALUES ({row}.image_id);
    DELETE FROM browse_changes WHERE seq = (SELECT MAX(seq) FROM browse_changes) - {keep};
"""
CHANGE_TRIGGERS = ";\n".join(
    f"CREATE TRIGGER IF NOT EXISTS {name} AFTER {event} ON {table} BEGIN{_LOG.format(row=row, keep=CHANGE_LOG_ROWS)}END"
    for name, event, table, row in (
        ("browse_changes_insert", "INSERT", "browse", "NEW"), ("browse_changes_update", "UPDATE", "browse", "NEW"),
        ("browse_changes_delete", "DELETE", "browse", "OLD"), ("image_tags_changes_insert", "INSERT", "image_tags", "NEW"),
        ("image_tags_changes_delete", "DELETE", "image_tags", "OLD")))

def run_backfills(conn: sqlite3.Connection, from_version: int, refresh_browse: Callable) -> None:
    """Fill what older versions left empty, so an upgraded workspace equals a fresh ingest of its photos.

    * v1 verdicts have no ``reasons_mask`` (reason filters and statistics would find nothing);
    * captions imported before v3 are not caption rows (no review queue, nothing to approve);
    * browse rows of any older version are rebuilt from the tables they summarise.
    """
    if from_version >= 10:  # v11 only added the change log; older versions get its triggers in fill_tallies
        for statement in split_sql(CHANGE_TRIGGERS):
            conn.execute(statement)
        return
    if from_version >= 9:  # browse has today's shape but for v10's column; the tallies are new
        conn.execute(
            """UPDATE browse SET stale = 1 WHERE image_id IN (
                   SELECT c.image_id FROM curation c LEFT JOIN analyses a ON a.image_id = c.image_id
                   WHERE c.analysis_rev IS NOT a.rev)""")
        fill_tallies(conn)
        return
    from ..captions.checks import check_caption

    for image_id, reasons in conn.execute("SELECT image_id, reasons FROM curation").fetchall():
        try:
            mask = reasons_mask(r for r in json.loads(reasons) if r in REASONS)
        except (TypeError, ValueError):
            continue
        conn.execute("UPDATE curation SET reasons_mask = ? WHERE image_id = ?", (mask, image_id))
    imported = conn.execute(
        """SELECT i.id, i.import_caption, i.added_at FROM images i
           WHERE i.import_caption IS NOT NULL AND i.import_caption != ''
             AND NOT EXISTS (SELECT 1 FROM captions c WHERE c.image_id = i.id)""").fetchall()
    conn.executemany(
        """INSERT INTO captions(image_id, version, text, status, origin, flags, author, created_at)
           VALUES (?, 1, ?, 'imported', 'import', ?, 'import', ?)""",
        [(i, text, json.dumps(check_caption(text)), added) for i, text, added in imported])
    # the browse index is derived data: rebuild it in today's shape (early v2 releases had fewer columns)
    conn.execute("DROP TABLE IF EXISTS browse")
    for statement in browse_ddl():
        conn.execute(statement)
    refresh_browse(conn)
    conn.execute(
        """UPDATE browse SET caption_version = (SELECT MAX(version) FROM captions c WHERE c.image_id = browse.image_id)
           WHERE caption_version IS NULL""")
    conn.execute(
        """UPDATE browse SET
               caption = (SELECT text FROM captions c WHERE c.image_id = browse.image_id AND c.version = browse.caption_version),
               caption_status = (SELECT status FROM captions c WHERE c.image_id = browse.image_id AND c.version = browse.caption_version)
           WHERE caption_version IS NOT NULL""")
    fill_tallies(conn)


def fill_tallies(conn: sqlite3.Connection) -> None:
    """Count what browse and image_tags hold now, then let the triggers keep the counts."""
    for table in ("person_tally", "facet_tally", "tag_tally"):
        conn.execute(f"DELETE FROM {table}")
    conn.execute("INSERT INTO person_tally SELECT person_id, status, COUNT(*) FROM browse GROUP BY 1, 2")
    conn.execute("""INSERT INTO facet_tally SELECT status, reasons_mask, COALESCE(pose, ''), stale, COUNT(*)
                    FROM browse GROUP BY 1, 2, 3, 4""")
    conn.execute("""INSERT INTO tag_tally SELECT t.tag, b.status, COUNT(*)
                    FROM image_tags t JOIN browse b ON b.image_id = t.image_id GROUP BY 1, 2""")
    for statement in split_sql(TALLY_TRIGGERS + ";" + CHANGE_TRIGGERS):
        conn.execute(statement)


def split_sql(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit our open transaction)."""
    code = "\n".join(line for line in script.splitlines() if not line.strip().startswith("--"))
    out, buf = [], ""
    for part in code.split(";"):
        buf = f"{buf};{part}" if buf else part
        if sqlite3.complete_statement(buf + ";"):  # a trigger's body holds semicolons of its own
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
