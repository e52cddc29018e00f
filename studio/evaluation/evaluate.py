"""Evaluation runs (paper §5.2, Table 2): models x test sets x λ -> samples -> metrics -> tables.

Every sample is generated with a recorded seed (the run's seed + the item's index, the same for
every model and λ, so models are compared on identical noise) and keyed by a hash of everything
that made it; a later run asking for the same sample reuses the file, and scores are reused per
scorer (CLIP model + face pack). A killed run therefore resumes without regenerating anything.

The table gives, per test set, model and λ: mean and 95% bootstrap interval of CLIP-T, CLIP-I and
Face Sim, the images without a face (Face Sim missing, counted), attribute-following accuracy,
and the paired difference to a baseline model on the same items with its own bootstrap interval.

Pose attributes (side profile, looking up / down) are scored apart from the others: evaluation
gives IdentityNet the input face's keypoints, as the official inference does, so the pose of an
InstantID sample follows the input face whatever the prompt or λ asks for. Mixing them in would
measure the keypoints, not the model; the λ trade-off curve therefore uses the others by default.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..codes import RunStatus
from ..models import GenerationSettings, ModelSpec
from ..models.settings import DEMO_NEGATIVE_PROMPT
from .metrics import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, POSE_ATTRIBUTES
from ..runs.settings import RunSettings
from ..workspace import Workspace, atomic_write_bytes

METRICS = ("clip_t", "clip_i", "face_sim", "attr_acc", "pose_acc")
#: why pose-following is reported apart (printed under every table that shows it)
POSE_NOTE = ("Pose attributes (side profile, looking up, looking down) are scored apart (pose acc.): evaluation "
             "gives IdentityNet the input face's keypoints, as the official inference does, so an InstantID "
             "sample's pose follows the input face whatever the prompt asks.")


class PlanEntry(NamedTuple):
    """One sample an evaluation needs: its content key, test set (row), item, model and generation settings."""
    key: str
    testset: dict
    item: dict
    spec: ModelSpec
    settings: GenerationSettings


@dataclass
class EvalConfig(RunSettings):
    """What an evaluation run compares, how its samples are generated and scored, and where it scores."""

    KIND = "evaluate"
    LABEL = "evaluation"
    CLI_NAMES = {"testsets": "testset", "models": "model"}
    CLI_JOINED = frozenset({"lambdas"})

    testsets: list[str]
    models: list[str]
    lambdas: list[float] = field(default_factory=lambda: [0.8])
    baseline: str | None = None  # default: the first model
    steps: int = 30
    guidance: float = 5.0
    identitynet_scale: float = 0.8
    width: int = 1024
    height: int = 1024
    seed: int = 0
    negative_prompt: str = DEMO_NEGATIVE_PROMPT  # Generate's default too: a sample looks as it would there
    clip_model: str = DEFAULT_CLIP_MODEL
    clip_pretrained: str | None = DEFAULT_CLIP_PRETRAINED
    n_boot: int = 1000
    device: str | None = None
    allow_pack_mismatch: bool = False
    engine: str = "local"  # local: score in the worker; ray: on a Ray actor pool
    address: str | None = None  # engine ray: the cluster to join (None: start one locally)
    workers: int | None = None  # engine ray: scoring actors
    gpus_per_worker: float = 0.0

    @classmethod
    def from_args(cls, args) -> "EvalConfig":
        """From `python -m studio evaluate`: repeated --testset / --model, λ as a comma-separated sweep."""
        from ..models.generate import parse_sweep

        values = {k: getattr(args, cls.CLI_NAMES.get(k, k)) for k in cls.__dataclass_fields__
                  if getattr(args, cls.CLI_NAMES.get(k, k), None) is not None}
        values.update(testsets=args.testset or [], models=args.model or [], lambdas=parse_sweep(args.lambdas),
                      clip_pretrained=args.clip_pretrained or None)
        return cls.from_dict(values)

    def validate(self) -> None:
        if self.engine not in ("local", "ray"):
            raise ValueError(f"engine must be local or ray, got {self.engine!r}")
        if not self.testsets:
            raise ValueError("choose at least one test set")
        if not self.models:
            raise ValueError("choose at least one model")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"a model is listed twice: {self.models}")
        if not self.lambdas or len(self.lambdas) > 9:
            raise ValueError("give 1 to 9 λ values")
        if self.baseline and self.baseline not in self.models:
            raise ValueError(f"baseline {self.baseline!r} is not one of the models {self.models}")
        if not 0 <= self.n_boot <= 100000:
            raise ValueError("bootstrap resamples must be within [0, 100000]")
        for lam in self.lambdas:
            self.settings("x", lam, 0).validate()

    def settings(self, prompt: str, lam: float, idx: int) -> GenerationSettings:
        return GenerationSettings(prompt=prompt, negative_prompt=self.negative_prompt, ip_scale=float(lam),
                                  identitynet_scale=self.identitynet_scale, steps=self.steps, guidance=self.guidance,
                                  seed=int(self.seed) + int(idx), width=self.width, height=self.height)


def check_start(ws: Workspace, cfg: EvalConfig) -> None:
    """Refuse what the run would refuse: an unknown test set or model, missing weights, a face-pack mismatch."""
    from ..models.generate import check_face_pack, resolve_models

    cfg.validate()
    specs = resolve_models(ws, cfg.models)
    known = {t["name"] for t in ws.store.testsets()}
    unknown = [t for t in cfg.testsets if t not in known]
    if unknown:
        raise ValueError(f"no test set named {unknown}; existing: {sorted(known)}")
    packs = {ws.store.testset(t)["pack"] for t in cfg.testsets}
    for spec in specs:
        for pack in packs:
            check_face_pack(spec, pack, cfg.allow_pack_mismatch)
    from .metrics import ClipSpec, missing_clip, scorer_name

    clip = ClipSpec(cfg.clip_model, cfg.clip_pretrained)
    problem = missing_clip(clip)
    if problem:
        # a rerun whose every sample is scored with this CLIP rebuilds its tables without loading it
        plan, packs = plan_samples(ws, cfg)
        keys = [p.key for p in plan]
        if not keys or len(ws.store.eval_scores(keys, scorer_name(clip, packs[0]))) < len(keys):
            raise ValueError(f"CLIP model {clip.label} could not be loaded: {problem}")


#: Settings added after evaluation runs existed, with the values those runs used: left out of a
#: sample's key while they keep that value, so the samples already made are reused.
_LATER_SETTINGS = {"long_side": 1280, "face_margin": 0.0, "style": "(No style)", "scheduler": "Euler"}


def sample_key(spec: dict, item: dict, settings: GenerationSettings) -> str:
    """Everything that decides a sample's pixels: model parts, item (face + prompt), settings."""
    s = {k: v for k, v in dataclasses.asdict(settings).items() if _LATER_SETTINGS.get(k, object()) != v}
    payload = json.dumps({"model": spec, "item": item["id"], "face": hashlib.sha256(item["embedding"].tobytes()).hexdigest(),
                          "kps": item["face"]["kps"], "settings": s}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def evaluate(ws: Workspace, cfg: EvalConfig, run_id: int, *, author: str = "studio", track: Callable | None = None,
             cache=None, clip=None, engine: str = "local", address: str | None = None, workers: int | None = None,
             gpus_per_worker: float = 0.0) -> dict:
    """Generate what is missing, score what is unscored, and write the tables of run ``run_id``.

    ``engine="ray"`` scores on a Ray actor pool (``workers`` actors, ``gpus_per_worker`` each;
    local unless ``address``) with the same scorer; this process generates and stores everything.
    """
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    from ..dataset.faces import FaceAnalyzer, MissingModelError, resolve_pack
    from ..models.generate import resolve_models
    from .metrics import ClipSpec, Scorer, load_clip, scorer_name

    plan, packs = plan_samples(ws, cfg)
    try:
        pack = resolve_pack(packs[0])
    except MissingModelError as exc:
        raise ValueError(f"the test sets' face pack {packs[0]!r} is needed for Face Sim: {exc}") from None
    track = track or (lambda items, **_: items)
    specs = resolve_models(ws, cfg.models)
    keys = [p.key for p in plan]
    clip_spec = clip.spec if clip is not None else ClipSpec(cfg.clip_model, cfg.clip_pretrained)
    name = scorer_name(clip_spec, pack.name)
    reused, todo = split_reused(ws, plan, run_id)
    # CLIP first: a missing model fails the run before any GPU time is spent on samples. On Ray the
    # actors load their own, so this process loads it only for that check and drops it before scoring;
    # with every sample already scored it is not loaded at all.
    if len(ws.store.eval_scores(keys, name)) < len(keys):
        clip = clip or load_clip(clip_spec, cfg.device)
    if todo:
        generate_samples(ws, todo, cfg, run_id, author, track, cache)

    done = ws.store.eval_scores(keys, name)
    samples = ws.store.eval_samples(keys)
    inputs = [score_input(ws, samples[k], item) for k, t, item, spec, s in plan if k not in done]
    errors = []
    if not inputs:
        batches = iter(())
    elif engine == "ray":
        from .score_ray import score_on_ray

        clip = None  # the actors' copies score; free this one (GPU memory) first
        batches = score_on_ray(inputs, clip_spec, pack, device=cfg.device, address=address, workers=workers,
                               gpus_per_worker=gpus_per_worker)
    else:
        batches = Scorer(clip, FaceAnalyzer(pack)).score(inputs)
    # progress counts samples, as generating does (a count of batches read "2/2" for 32 samples)
    scored = iter(track(range(len(inputs)), total=len(inputs), desc="scoring"))
    next(scored, None)
    for batch in batches:
        errors += [f"{r['key']}: {r['error']}" for r in batch if "error" in r]
        # an unreadable sample file stays unscored (counted, retried by a rerun), never a "no face"
        ws.store.save_eval_scores(name, [r for r in batch if "error" not in r], run_id)
        for _ in batch:
            next(scored, None)
    for _ in scored:  # the last count, written
        pass

    rows = ws.store.eval_run_rows(run_id, name)
    baseline = cfg.baseline or cfg.models[0]
    # a model trained by the studio is compared with the model it started from when that one is in the run
    against = {s.name: s.parent for s in specs if s.parent and s.parent in cfg.models}
    table = summarize(rows, baseline, n_boot=cfg.n_boot, seed=cfg.seed, against=against)
    curve = tradeoff(table)
    files = write_outputs(ws, run_id, cfg, name, rows, table, curve, against)
    return {"samples": len(plan), "generated": len(todo), "reused": len(reused), "scored": len(inputs),
            "scores_reused": len(plan) - len(inputs), "scorer": name, "face_pack": pack.name,
            "baseline": baseline, "against": against, "missing_faces": missing_faces(rows), "score_errors": errors,
            "table": table, "tradeoff": curve, "files": files}


def plan_samples(ws: Workspace, cfg: EvalConfig) -> tuple[list[PlanEntry], list[str]]:
    """Every sample the run needs (test set x model x λ x item, keyed by what decides its pixels), and the
    test sets' face pack; refuses unknown test sets, mixed face packs and a model of another pack."""
    from ..models.generate import check_face_pack, resolve_models

    cfg.validate()
    specs = resolve_models(ws, cfg.models)
    sets = []
    for name in cfg.testsets:
        t = ws.store.testset(name)
        if t is None:
            raise ValueError(f"no test set named {name!r}; existing: {[x['name'] for x in ws.store.testsets()]}")
        sets.append((t, ws.store.testset_items(t["id"])))
    packs = sorted({t["pack"] for t, _ in sets})
    if len(packs) > 1:
        raise ValueError(f"the test sets' faces come from different face packs {packs}: Face Sim needs one")
    for spec in specs:
        check_face_pack(spec, packs[0], cfg.allow_pack_mismatch)
    plan: list[PlanEntry] = []
    for t, items in sets:
        for spec in specs:
            for lam in cfg.lambdas:
                for item in items:
                    s = cfg.settings(item["prompt"], lam, item["idx"])
                    plan.append(PlanEntry(sample_key(spec.weights_key(), item, s), t, item, spec, s))
    return plan, packs


def split_reused(ws: Workspace, plan: list[PlanEntry], run_id: int) -> tuple[list[str], list[PlanEntry]]:
    """(keys of samples already made, linked to run ``run_id``; the entries still to generate)."""
    keys = [p.key for p in plan]
    existing = ws.store.eval_samples(keys)
    reused = [k for k in keys if k in existing and (ws.root / existing[k]["output_path"]).is_file()]
    reused_set = set(reused)
    ws.store.link_eval_samples(run_id, reused)
    return reused, [p for p in plan if p.key not in reused_set]


def generate_samples(ws: Workspace, todo: list[PlanEntry], cfg: EvalConfig, run_id: int, author: str, track,
                     cache=None) -> None:
    """Generate and record each missing sample (one commit per sample: a killed run keeps what it made)."""
    from ..models.generate import FaceCondition, control_inputs
    from ..models import family_of

    todo = sorted(todo, key=lambda p: p.spec.name)  # model by model: one SDXL in memory at a time
    loaded: dict = {}
    for key, t, item, spec, s in track(todo, desc="generating"):
        if cache is not None:
            model = cache.get(spec)
        elif spec.name not in loaded:
            loaded.clear()
            _free_memory()
            model = loaded[spec.name] = family_of(spec).load(spec, cfg.device)
        else:
            model = loaded[spec.name]
        f = item["face"]
        face = FaceCondition(item["embedding"], np.asarray(f["kps"], np.float64), tuple(f["bbox"]), tuple(f["size"]),
                             1, f"testset:{t['name']}#{item['idx']}", t["pack"])
        kps_image, mask = control_inputs(face, s.width, s.height, strict=False)
        image = model(face.embedding, kps_image, s, mask=mask)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        rel = Path("generated") / "eval" / key[:2] / f"{key}.png"
        (ws.root / rel).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(ws.root / rel, buf.getvalue())
        described = face.describe() | ({"pack_mismatch": {"model_expects": spec.face_pack, "used": face.pack}}
                                       if spec.face_pack != face.pack else {})
        gid = ws.store.add_generation(batch=f"eval-{run_id}", model=spec.name, model_spec=spec.to_dict(),
                                      settings=dataclasses.asdict(s), reference=face.reference, face=described,
                                      output_path=rel.as_posix(), author=author, run_id=run_id)
        ws.store.add_eval_sample(key=key, item_id=item["id"], model=spec.name, ip_scale=s.ip_scale, seed=s.seed,
                                 settings=dataclasses.asdict(s), generation_id=gid, output_path=rel.as_posix(),
                                 run_id=run_id)


def _free_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def score_input(ws: Workspace, sample: dict, item: dict):
    """CLIP-I compares with the item's real photo showing the attribute when it has one, else its input photo."""
    from .metrics import ScoreInput

    ref = item["target_path"] or item["input_path"]
    return ScoreInput(sample["key"], ws.root / sample["output_path"], item["prompt"], ws.root / ref, item["embedding"],
                      item["attribute"])


# -- statistics -----------------------------------------------------------------------------------

def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (``n_boot`` resamples with replacement, seeded)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (math.nan, math.nan)
    if v.size == 1 or n_boot == 0:
        return (float(v.mean()), float(v.mean()))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def _values(rows: list[dict], metric: str) -> dict[int, float]:
    """item id -> value; attribute accuracy (pose attributes apart) counts a sample without a face as not following."""
    out = {}
    for r in rows:
        if metric in ("attr_acc", "pose_acc"):
            if r.get("asked") and (r["asked"] in POSE_ATTRIBUTES) == (metric == "pose_acc"):
                out[r["item_id"]] = 1.0 if r.get("attr_correct") else 0.0
        elif r.get(metric) is not None:
            out[r["item_id"]] = float(r[metric])
    return out


def summarize(rows: list[dict], baseline: str | None, n_boot: int = 1000, seed: int = 0,
              against: dict[str, str] | None = None) -> list[dict]:
    """One row per (test set, model, λ): mean, 95% interval, count per metric; paired Δ to the baseline, or
    for a model in ``against`` (model -> the model it was fine-tuned from) to that model, as the paper's
    fine-tuned rows carry their gain over the model they started from."""
    against = against or {}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["testset"], r["model"], float(r["ip_scale"])), []).append(r)
    out = []
    for (ts, model, lam), g in sorted(groups.items()):
        row = {"testset": ts, "kind": g[0]["kind"], "model": model, "lambda": lam, "n": len(g),
               "unscored": sum(1 for r in g if r.get("faces") is None),
               "missing_faces": sum(1 for r in g if r.get("faces") == 0)}
        reference = against.get(model, baseline)
        base = groups.get((ts, reference, lam)) if reference and model != reference else None
        if base is not None:
            row["d_against"] = reference
        for m in METRICS:
            vals = _values(g, m)
            row[f"{m}_n"] = len(vals)
            row[m] = float(np.mean(list(vals.values()))) if vals else None
            row[f"{m}_lo"], row[f"{m}_hi"] = bootstrap_ci(list(vals.values()), n_boot, seed) if vals else (None, None)
            if base is not None:
                b = _values(base, m)
                diffs = [vals[i] - b[i] for i in sorted(vals) if i in b]  # paired on the same items
                row[f"d_{m}"] = float(np.mean(diffs)) if diffs else None
                row[f"d_{m}_lo"], row[f"d_{m}_hi"] = bootstrap_ci(diffs, n_boot, seed) if diffs else (None, None)
                row[f"d_{m}_n"] = len(diffs)
        out.append(row)
    return out


def tradeoff(table: list[dict], pose: bool = False) -> list[dict]:
    """The λ trade-off curve: attribute accuracy (x) against Face Sim (y), per model, over the sets asking for
    attributes; pose attributes count only with ``pose`` (the keypoints, not λ, decide them; see POSE_NOTE)."""
    measures = ("attr_acc", "pose_acc") if pose else ("attr_acc",)
    points: dict[tuple, dict] = {}
    for r in table:
        asked = [(r[m], r[f"{m}_n"]) for m in measures if r.get(f"{m}_n")]
        if not asked:
            continue
        p = points.setdefault((r["model"], r["lambda"]), {"acc": [], "sim": []})
        p["acc"] += asked
        if r["face_sim"] is not None:
            p["sim"].append((r["face_sim"], r["face_sim_n"]))
    curve = []
    for (model, lam), p in sorted(points.items()):
        acc = sum(v * n for v, n in p["acc"]) / sum(n for _, n in p["acc"])
        sim = sum(v * n for v, n in p["sim"]) / sum(n for _, n in p["sim"]) if p["sim"] else None
        curve.append({"model": model, "lambda": lam, "attribute_accuracy": acc, "face_sim": sim})
    return curve


def missing_faces(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        if r.get("faces") == 0:
            out[r["model"]] = out.get(r["model"], 0) + 1
    return out


# -- outputs --------------------------------------------------------------------------------------

def _fmt(v, digits: int = 3, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def cell(row: dict, m: str) -> str:
    if row.get(m) is None:
        return "–"
    text = f"{_fmt(row[m])} [{_fmt(row[m + '_lo'])}, {_fmt(row[m + '_hi'])}]"
    if row.get(f"d_{m}") is not None:
        text += f" (Δ {_fmt(row['d_' + m], signed=True)} [{_fmt(row['d_' + m + '_lo'], signed=True)}, " \
                f"{_fmt(row['d_' + m + '_hi'], signed=True)}])"
    return text


def table_markdown(table: list[dict], baseline: str | None) -> str:
    """Table 2's shape: per test set, a row per model and λ; mean [95% bootstrap interval] (Δ to the baseline)."""
    out = []
    for ts in dict.fromkeys(r["testset"] for r in table):
        rows = [r for r in table if r["testset"] == ts]
        out.append(f"**{ts}** ({rows[0]['kind']}, {rows[0]['n']} samples per model and λ)\n")
        out.append("| model | λ | CLIP-T | CLIP-I | Face Sim | no face | Attribute acc. | Pose acc. |")
        out.append("|---|---:|---|---|---|---:|---|---|")
        for r in rows:
            label = " (baseline)" if r["model"] == baseline else (
                f" (Δ vs {r['d_against']})" if r.get("d_against") not in (None, baseline) else "")
            out.append(f"| {r['model']}{label} | {r['lambda']:g} | "
                       f"{cell(r, 'clip_t')} | {cell(r, 'clip_i')} | {cell(r, 'face_sim')} | "
                       f"{r['missing_faces']}/{r['n']} | {cell(r, 'attr_acc') if r['attr_acc_n'] else '–'} | "
                       f"{cell(r, 'pose_acc') if r.get('pose_acc_n') else '–'} |")
        out.append("")
    if any(r.get("pose_acc_n") for r in table):
        out.append(POSE_NOTE + "\n")
    return "\n".join(out)


def settings_markdown(cfg: dict, scorer: str, run_id: int) -> str:
    return (f"Evaluation run {run_id}: models {', '.join(cfg['models'])}; λ {', '.join(f'{v:g}' for v in cfg['lambdas'])}; "
            f"{cfg['steps']} steps, guidance {cfg['guidance']}, IdentityNet {cfg['identitynet_scale']}, "
            f"{cfg['width']}x{cfg['height']}, seed {cfg['seed']} + item index; negative prompt: "
            f"{_negative(cfg.get('negative_prompt', ''))}; scored with {scorer}; "
            f"{cfg['n_boot']} bootstrap resamples. CLIP-T / CLIP-I / Face Sim are cosines; Face Sim over samples with "
            "a face; attribute accuracy counts a sample without a face as not following.")


def _negative(text: str) -> str:
    if text == DEMO_NEGATIVE_PROMPT:
        return "the official demo's (Generate's default)"
    return f"“{text}”" if text else "none"


def write_outputs(ws: Workspace, run_id: int, cfg: EvalConfig, scorer: str, rows: list[dict], table: list[dict],
                  curve: list[dict], against: dict[str, str] | None = None) -> dict[str, str]:
    """Under evaluations/run-<id>/ (workspace-relative paths): table2.md / .csv / .tex (the paper's layout),
    table.md and table.csv (the studio's own measures), samples.csv and tradeoff.csv."""
    from . import tables

    out = Path("evaluations") / f"run-{run_id}"
    (ws.root / out).mkdir(parents=True, exist_ok=True)
    baseline = cfg.baseline or cfg.models[0]
    md = (f"# Evaluation run {run_id}\n\n{settings_markdown(cfg.to_dict(), scorer, run_id)}\n\n"
          f"{table_markdown(table, baseline)}\n## λ trade-off (attributes other than pose)\n\n| model | λ | attribute acc. | Face Sim |\n|---|---:|---:|---:|\n"
          + "".join(f"| {p['model']} | {p['lambda']:g} | {_fmt(p['attribute_accuracy'])} | {_fmt(p['face_sim'])} |\n"
                    for p in curve))
    paper = tables.table2(table, against)
    files = {"table2.md": tables.markdown(paper) + "\n", "table2.csv": tables.csv_text(paper),
             "table2.tex": tables.latex(paper), "table.md": md, "table.csv": _csv(table), "samples.csv": _csv(rows),
             "tradeoff.csv": _csv(curve, ["model", "lambda", "attribute_accuracy", "face_sim"])}
    for name, text in files.items():
        atomic_write_bytes(ws.root / out / name, text.encode("utf-8"))
    return {name: (out / name).as_posix() for name in files}


def _csv(rows: list[dict], fields: list[str] | None = None) -> str:
    buf = io.StringIO()
    fields = fields or list(dict.fromkeys(k for r in rows for k in r))
    if fields:
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def latest_result(ws: Workspace, run_id: int | None = None) -> dict | None:
    """A finished evaluation run (the latest when ``run_id`` is None) with its settings and result."""
    if run_id is not None:
        r = ws.store.run(int(run_id))
        if r is None or r["kind"] != "evaluate":
            raise ValueError(f"no evaluation run {run_id}")
        return r
    done = [r for r in ws.store.runs(kind="evaluate") if r["status"] == RunStatus.DONE and r["result"]]
    return done[0] if done else None
