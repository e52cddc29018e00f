"""Human evaluation (paper §5.3): studies, blind 0-5 scores per annotator, agreement, Table 3.

A study is a fixed list of items (a generated image, the input face it was made from, its prompt,
and the model, which annotators never see) shown to assigned annotators, each item to
``per_item`` of them, each annotator in their own order (shuffled with a seed derived from the
study's seed and their name, so the order survives reloads and devices). Optional duplicate items
re-show a sample to the same annotators to measure their self-consistency. Each score is one row
(study, item, annotator, criterion); changing it keeps the old value in the history.
"""
from __future__ import annotations

import csv
import hashlib
import io
import random
from collections import defaultdict
from pathlib import Path
from typing import TypedDict

import numpy as np

from ..codes import CRITERIA, StudyStatus
from ..workspace import Workspace, atomic_write_bytes

DEFAULT_INSTRUCTIONS = ("Score each image on the three scales from 0 to 5. Keys: 0-5 score the highlighted scale, "
                        "Tab moves to the next scale, Enter saves and shows the next image, Backspace goes back.")


# -- creating a study -----------------------------------------------------------------------------

def _face_path(ws: Workspace, reference: str) -> str | None:
    """The input face photo of a generated sample, workspace-relative."""
    if reference.startswith("workspace:"):
        rows = ws.store.image_table(image_ids=[int(reference.split(":", 1)[1])])
        return rows[0]["media_path"] if rows else None
    if reference.startswith("testset:"):
        name, _, idx = reference[len("testset:"):].rpartition("#")
        t = ws.store.testset(name)
        items = ws.store.testset_items(t["id"]) if t else []
        return next((i["input_path"] for i in items if str(i["idx"]) == idx), None)
    return reference


def samples_from_generations(ws: Workspace, generation_ids: list[int] | None = None, batch: str | None = None,
                             eval_run: int | None = None) -> list[dict]:
    """Candidate study items from generated samples: all, some ids, one batch, or one evaluation run's."""
    if eval_run is not None:
        r = ws.store.run(int(eval_run))
        if r is None or r["kind"] != "evaluate":
            raise ValueError(f"no evaluation run {eval_run}")
        rows = ws.store.eval_run_rows(int(eval_run), "")
        return [{"model": x["model"], "prompt": x["prompt"], "image_path": x["output_path"], "face_path": x["input_path"],
                 "generation_id": x["generation_id"]} for x in rows]
    gens = ws.store.generations(batch)
    if generation_ids:
        wanted = set(generation_ids)
        gens = [g for g in gens if g["id"] in wanted]
        missing = wanted - {g["id"] for g in gens}
        if missing:
            raise ValueError(f"no generated sample with id(s) {sorted(missing)}")
    out = []
    for g in gens:
        face = _face_path(ws, g["reference"])
        out.append({"model": g["model"], "prompt": g["settings"].get("prompt", ""), "image_path": g["output_path"],
                    "face_path": face, "generation_id": g["id"]})
    return out


def samples_from_file(ws: Workspace, path: Path, name: str) -> list[dict]:
    """Items from a JSONL file: ``image``, ``face`` (paths relative to the file), ``prompt``, ``model``."""
    from ..images import load_rgb, read_bytes
    from ..evaluation.testsets import read_rows

    path = Path(path)
    dest = ws.root / "studies" / hashlib.sha256(name.encode()).hexdigest()[:12]
    out, problems = [], []
    for n, row in read_rows(path):
        try:
            item = {"prompt": str(row.get("prompt") or ""), "model": str(row.get("model") or "").strip()}
            if not item["model"]:
                raise ValueError("model is missing")
            for key, field in (("image_path", "image"), ("face_path", "face")):
                src = path.parent / str(row.get(field) or "")
                if not row.get(field):
                    raise ValueError(f"{field} is missing")
                data = read_bytes(src)
                load_rgb(src)
                dest.mkdir(parents=True, exist_ok=True)
                file = dest / (hashlib.sha256(data).hexdigest()[:24] + src.suffix.lower())
                if not file.exists():
                    atomic_write_bytes(file, data)
                item[key] = file.relative_to(ws.root).as_posix()
            out.append(item)
        except Exception as exc:  # noqa: BLE001 - named by line, the study is refused below
            problems.append(f"{path.name} line {n}: {exc}")
    if problems:
        raise ValueError("cannot import: " + "; ".join(problems[:10]))
    return out


def assign(n_items: int, annotators: list[str], per_item: int, seed: int) -> dict[int, list[str]]:
    """Item index -> the annotators who score it: ``per_item`` each (0: all of them), balanced by rotating a
    seeded order."""
    order = list(annotators)
    random.Random(f"{seed}:annotators").shuffle(order)
    k = min(per_item, len(order)) if per_item else len(order)
    return {j: [order[(j * k + r) % len(order)] for r in range(k)] for j in range(n_items)}


def create_study(ws: Workspace, name: str, samples: list[dict], annotators: list[str], *, per_item: int = 0,
                 duplicates: int = 0, seed: int = 0, instructions: str = DEFAULT_INSTRUCTIONS, source: str = "",
                 created_by: str = "studio") -> dict:
    """Store a draft study; every image must exist now (the missing ones are named and nothing is stored).

    ``per_item`` 0 (the default) gives every item to every annotator, as the paper's participants scored
    everything; a larger study caps it."""
    name = (name or "").strip()
    if not name or len(name) > 80 or "\0" in name:
        raise ValueError("a study needs a name of 1-80 characters")
    annotators = list(dict.fromkeys(a.strip() for a in annotators if a and a.strip()))
    if not annotators:
        raise ValueError("assign at least one annotator")
    if not samples:
        raise ValueError("the study has no samples")
    if per_item < 0:
        raise ValueError("annotators per item: 0 (all of them) or more")
    per_item = min(per_item, len(annotators)) if per_item else len(annotators)  # what each item really gets
    if not 0 <= duplicates <= len(samples):
        raise ValueError(f"duplicates must be within [0, {len(samples)}]")
    missing = [s["image_path"] for s in samples if not (ws.root / s["image_path"]).is_file()]
    missing += [f"face of {s['image_path']}" for s in samples
                if not s.get("face_path") or not (ws.root / s["face_path"]).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} file(s) missing, e.g. {missing[:3]}: regenerate them or leave them out")
    rng = random.Random(seed)
    items = [{**s, "idx": i} for i, s in enumerate(samples)]
    for j, original in enumerate(rng.sample(range(len(samples)), duplicates)):
        items.append({**samples[original], "idx": len(samples) + j, "duplicate_of": original})
    who = assign(len(samples), annotators, per_item, seed)
    lists: dict[str, list[int]] = defaultdict(list)
    for it in items:
        for a in who[it.get("duplicate_of", it["idx"])]:  # a duplicate goes to its original's annotators
            lists[a].append(it["idx"])
    for a, order in lists.items():
        random.Random(f"{seed}:{a}").shuffle(order)
    sid = ws.store.create_study(name=name, instructions=instructions, per_item=per_item, seed=seed, source=source,
                                created_by=created_by, items=items, assignments=dict(lists))
    return {"id": sid, "name": name, "items": len(items), "duplicates": duplicates,
            "per_annotator": {a: len(v) for a, v in sorted(lists.items())}}


def get_study(ws: Workspace, name: str) -> dict:
    s = ws.store.study(name)
    if s is None:
        raise ValueError(f"no study named {name!r}; existing: {[x['name'] for x in ws.store.studies()]}")
    return s


def set_status(ws: Workspace, name: str, status: str) -> dict:
    s = get_study(ws, name)
    if status not in (StudyStatus.OPEN, StudyStatus.CLOSED):
        raise ValueError("a study can be opened or closed")
    if s["status"] == status:
        raise ValueError(f"study {name!r} is already {status}")
    ws.store.set_study_status(s["id"], status)
    return get_study(ws, name)


# -- annotating (what an annotator may see: never the model, file names or others' scores) -----------

SCORE_TEXTS = tuple(str(v) for v in range(6))  # what the radios send
MAX_POSITION = 2**31 - 1


def parse_score(value, criterion: str) -> int:
    """A 0-5 score: an int, or exactly one of the strings "0".."5"; nothing else (no 4.0, True, " 4 ", "٤")."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; one of {CRITERIA}")
    if type(value) is int and 0 <= value <= 5:
        return value
    if type(value) is str and value in SCORE_TEXTS:
        return int(value)
    raise ValueError(f"{criterion}: a score is a whole number from 0 to 5, got {_shown(value)}")


def parse_position(value) -> int:
    """An item position: a positive int (not 2.9, True or "2")."""
    if type(value) is not int or not 1 <= value <= MAX_POSITION:
        raise ValueError(f"item position must be a whole number from 1, got {_shown(value)}")
    return value


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def annotator_study(ws: Workspace, study: str, annotator: str) -> dict:
    """The open study ``study`` (name or id) as assigned to ``annotator``; refused otherwise."""
    if (type(study) is int and 0 <= study < 2**62) or (
            type(study) is str and study.isascii() and study.isdigit() and len(study) < 19):
        key = int(study)
    elif type(study) is str and "\0" not in study:
        key = study
    else:
        raise ValueError(f"a study is a name or an id, got {_shown(study)}")
    s = ws.store.annotator_study(key, annotator)
    if s is None or not s["assigned"]:
        raise ValueError("no open study of that name is assigned to you")
    if s["status"] != StudyStatus.OPEN:
        raise ValueError(f"study {s['name']!r} is {s['status']}")
    return s


class AnnotatorItem(TypedDict):
    """One annotator's item of a study, as the Annotate tab and its API read it (the paths stay server-side)."""

    position: int
    total: int
    done: int
    finished: bool  # every item of theirs is scored
    prompt: str
    image_path: str  # workspace-relative
    face_path: str
    missing: bool  # the image or the face photo is gone from the workspace
    scores: dict  # criterion -> 0-5, the ones given so far
    comment: str | None


def item_for(ws: Workspace, study_id: int, annotator: str, position: int | None = None,
             after: int | None = None) -> AnnotatorItem:
    """An annotator's item, marked as shown: at ``position``; else the first unfinished one after ``after``
    (then from the start); else the first unfinished one; the last when all are done."""
    done, total, first = ws.store.annotator_progress(study_id, annotator)
    if position is None and after is not None and first is not None:
        position = ws.store.next_unfinished(study_id, annotator, after)
    elif position is not None:
        position = parse_position(position)
    if position is None:
        position = first if first is not None else (after or total)
    position = max(1, min(int(position), total))
    a = ws.store.assignment(study_id, annotator, position)
    ws.store.mark_shown(study_id, annotator, position)
    missing = not (ws.root / a["image_path"]).is_file() or not (ws.root / a["face_path"]).is_file()
    return {"position": position, "total": total, "done": done, "finished": first is None, "prompt": a["prompt"],
            "image_path": a["image_path"], "face_path": a["face_path"], "missing": missing, "scores": a["scores"],
            "comment": a["comment"]}


def save(ws: Workspace, study_id: int, annotator: str, position, scores: dict, comment: str | None = None) -> dict:
    """Validate and store an annotator's scores for their item at ``position``; nothing is stored on a mistake."""
    position = parse_position(position)
    if not isinstance(scores, dict) or (not scores and not comment):
        raise ValueError("give at least one score: {criterion: 0-5}")
    parsed = {c: parse_score(v, c) for c, v in scores.items()}
    if comment is not None and (not isinstance(comment, str) or len(comment) > 2000 or "\0" in comment):
        raise ValueError("a comment is text of at most 2000 characters")
    a = ws.store.assignment(study_id, annotator, position)
    if a is None:
        raise ValueError(f"item {position} is not one of your items in this study")
    if not (ws.root / a["image_path"]).is_file():
        raise ValueError(f"item {position}'s image is no longer available; skip it and tell the study's admin")
    return ws.store.save_scores(study_id, annotator, position, parsed, comment)


# -- results --------------------------------------------------------------------------------------

def table3(rows: list[dict]) -> list[dict]:
    """Per model and criterion: min / max / avg (the paper's Table 3), plus std and n (duplicates left out)."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for r in rows:
        if r["kind"] == "sample":
            groups[(r["model"], r["criterion"])].append(r["score"])
    out = []
    for (model, crit), v in sorted(groups.items(), key=lambda kv: (kv[0][0], CRITERIA.index(kv[0][1]))):
        a = np.asarray(v, dtype=float)
        out.append({"model": model, "criterion": crit, "min": int(a.min()), "max": int(a.max()),
                    "avg": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)})
    return out


def alpha(rows: list[dict]) -> dict[str, float | None]:
    """Krippendorff's alpha per criterion (ordinal, values 0-5) over the sample items; None below 2 raters."""
    import krippendorff

    out: dict[str, float | None] = {}
    for crit in CRITERIA:
        sub = [r for r in rows if r["criterion"] == crit and r["kind"] == "sample"]
        raters = sorted({r["annotator"] for r in sub})
        items = sorted({r["item_id"] for r in sub})
        if len(raters) < 2 or len(items) < 1:
            out[crit] = None
            continue
        data = np.full((len(raters), len(items)), np.nan)
        ri, ii = {a: n for n, a in enumerate(raters)}, {i: n for n, i in enumerate(items)}
        for r in sub:
            data[ri[r["annotator"]], ii[r["item_id"]]] = r["score"]
        paired = (~np.isnan(data)).sum(axis=0) >= 2
        if paired.sum() == 0 or len(np.unique(data[:, paired][~np.isnan(data[:, paired])])) < 2:
            out[crit] = None  # no item with two scores, or no variation at all: alpha is undefined
            continue
        out[crit] = float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal",
                                             value_domain=list(range(6))))
    return out


def annotators_summary(rows: list[dict], ws: Workspace | None = None, study_id: int | None = None) -> list[dict]:
    """Per annotator: items done (every criterion scored, as the annotator's own count says) and partly
    scored, mean score per criterion, median seconds per item, self-consistency."""
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r["annotator"]].append(r)
    out = []
    for a, rs in sorted(by.items()):
        criteria: dict[int, set] = defaultdict(set)
        for r in rs:
            criteria[r["item_id"]].add(r["criterion"])
        done = sum(len(c) == len(CRITERIA) for c in criteria.values())
        row = {"annotator": a, "items": done, "partly": len(criteria) - done}
        for c in CRITERIA:
            v = [r["score"] for r in rs if r["criterion"] == c]
            row[f"mean_{c}"] = float(np.mean(v)) if v else None
        secs = {}
        for r in rs:
            if r["seconds"] is not None:
                secs[r["item_id"]] = max(secs.get(r["item_id"], 0.0), r["seconds"])
        row["median_seconds"] = float(np.median(list(secs.values()))) if secs else None
        original = {(r["idx"], r["criterion"]): r["score"] for r in rs if r["kind"] == "sample"}
        diffs = [abs(r["score"] - original[(r["duplicate_of"], r["criterion"])]) for r in rs
                 if r["kind"] == "duplicate" and (r["duplicate_of"], r["criterion"]) in original]
        row["duplicate_mean_abs_diff"] = float(np.mean(diffs)) if diffs else None
        out.append(row)
    return out


def results(ws: Workspace, name: str) -> dict:
    s = get_study(ws, name)
    rows = ws.store.study_scores(s["id"])
    return {"study": {k: s[k] for k in ("id", "name", "status", "items", "annotators", "assigned", "done", "per_item")},
            "table3": table3(rows), "alpha": alpha(rows), "annotators": annotators_summary(rows), "scores": len(rows)}


def table3_markdown(res: dict) -> str:
    lines = [f"Study **{res['study']['name']}** ({res['study']['status']}): {res['study']['items']} items, "
             f"{res['study']['annotators']} annotators, {res['scores']} scores.", "",
             "| model | criterion | min | max | avg | std | n |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['criterion']} | {r['min']} | {r['max']} | {r['avg']:.2f} | {r['std']:.2f} | {r['n']} |"
              for r in res["table3"]]
    lines += ["", alpha_text(res)]
    return "\n".join(lines)


def alpha_text(res: dict) -> str:
    """Krippendorff's alpha per criterion of :func:`results`, as one line ("–" below two raters)."""
    return "Krippendorff's alpha (ordinal): " + ", ".join(
        f"{c} {'–' if v is None else format(v, '.3f')}" for c, v in res["alpha"].items())


#: up to this many items a Label Studio export embeds the photos (data URLs); above, local-files URLs
#: under the workspace as document root
DATA_URL_ITEMS = 200


def export(ws: Workspace, name: str, out_dir: Path | None = None) -> dict[str, str]:
    """scores.csv (long: sample, model, annotator, criterion, score, time, seconds), labelstudio/ (a labeling
    config, the tasks with every score and comment, the annotator -> email mapping: see labelstudio.py),
    table3.md (the paper's layout, then the studio's own measures), table3.csv and table3.tex (the paper's
    layout); returns workspace-relative paths."""
    s = get_study(ws, name)
    rows = ws.store.study_scores(s["id"])
    out = Path(out_dir) if out_dir else ws.root / "exports" / "studies" / hashlib.sha256(name.encode()).hexdigest()[:12]
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["sample", "model", "annotator", "criterion", "score", "time", "seconds", "kind", "duplicate_of"])
    for r in rows:
        w.writerow([r["idx"], r["model"], r["annotator"], r["criterion"], r["score"], r["updated_at"], r["seconds"],
                    r["kind"], r["duplicate_of"] if r["duplicate_of"] is not None else ""])
    from ..evaluation import tables

    res = results(ws, name)
    paper = tables.table3(res["table3"], name)
    files = {"scores.csv": buf.getvalue(),
             "table3.md": tables.markdown(paper) + "\n\n" + table3_markdown(res) + "\n",
             "table3.csv": tables.csv_text(paper), "table3.tex": tables.latex(paper)}
    for fname, text in files.items():
        atomic_write_bytes(out / fname, text.encode("utf-8"))
    from .labelstudio import export_labelstudio

    ls = export_labelstudio(ws, name, out / "labelstudio", images="data" if s["items"] <= DATA_URL_ITEMS else "local-files")
    paths = {k: out / k for k in files} | {f"labelstudio/{Path(ls[k]).name}": Path(ls[k])
                                           for k in ("label_config", "tasks", "annotators")}
    return {k: str(p.relative_to(ws.root)) if p.is_relative_to(ws.root) else str(p) for k, p in paths.items()}
