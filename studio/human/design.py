"""Human studies as the paper ran them (§5.3): every face x designed prompts x every model, generated as a run.

No automatic scoring is involved, so a study can be made on a machine without CLIP weights. The
faces x prompts grid is stored as a test set (``<study> (design)``, kind customization), so its
samples are generated, keyed and reused exactly as an evaluation run's: a killed run resumes
without regenerating anything, and the same grid can later be scored automatically as well.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..evaluation.evaluate import EvalConfig
from ..models.settings import DEMO_NEGATIVE_PROMPT
from ..runs.settings import RunSettings
from ..workspace import Workspace

#: an example prompt list in the spirit of the paper's (other expressions, angles and attire)
EXAMPLE_PROMPTS = Path(__file__).resolve().parents[2] / "assets" / "prompts" / "human_study.txt"
MAX_PROMPTS = 200


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; empty lines and lines starting with ``#`` are left out."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"prompt file {path}: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def design_name(study: str) -> str:
    return f"{study} (design)"


@dataclass
class StudySettings(RunSettings):
    """A study generated from faces x prompts x models (``python -m studio study generate``)."""

    KIND = "study"
    LABEL = "study"
    CLI_NAMES = {"models": "model", "prompts": "prompt", "ip_scale": "lambda_"}
    CLI_JOINED = frozenset({"annotators"})

    action: str
    name: str
    faces: str  # a test set (its distinct input faces), or a folder / zip of face photos
    prompts: list[str]
    models: list[str]
    annotators: list[str]
    per_item: int = 0  # 0: every annotator scores every item, as the paper's participants did
    duplicates: int = 0
    ip_scale: float = 0.8
    steps: int = 30
    guidance: float = 5.0
    identitynet_scale: float = 0.8
    width: int = 1024
    height: int = 1024
    seed: int = 0
    negative_prompt: str = DEMO_NEGATIVE_PROMPT
    face_pack: str = "auto"
    device: str | None = None
    instructions: str = field(default="")

    @classmethod
    def from_args(cls, args) -> "StudySettings":
        """From `python -m studio study generate`: --prompt (repeatable) and/or --prompts-file, --annotators a,b."""
        prompts = list(args.prompt or []) + (read_prompts(args.prompts_file) if args.prompts_file else [])
        values = {k: getattr(args, cls.CLI_NAMES.get(k, k)) for k in cls.__dataclass_fields__
                  if getattr(args, cls.CLI_NAMES.get(k, k), None) is not None}
        values.update(prompts=prompts, models=args.model or [],
                      annotators=[a.strip() for a in (args.annotators or "").split(",") if a.strip()])
        return cls.from_dict(values)

    def validate(self) -> None:
        if self.action != "generate":
            raise ValueError(f"study settings: action must be generate, got {self.action!r}")
        if not self.name.strip() or len(self.name) > 60:
            raise ValueError("study settings: give the study a name of 1-60 characters")
        if not self.faces.strip():
            raise ValueError("study settings: faces: name a test set, or a folder or zip of face photos")
        if not self.prompts or len(self.prompts) > MAX_PROMPTS or any(not p.strip() for p in self.prompts):
            raise ValueError(f"study settings: prompts: give 1-{MAX_PROMPTS} prompts, none empty")
        if not self.models:
            raise ValueError("study settings: choose at least one model")
        if not self.annotators:
            raise ValueError("study settings: assign at least one annotator")
        if self.per_item < 0 or self.duplicates < 0:
            raise ValueError("study settings: per item and duplicates are 0 or more")
        self.generation().validate()

    def generation(self) -> EvalConfig:
        """The generation half of an evaluation (same planning, keys and seeds; never scored)."""
        return EvalConfig(testsets=[design_name(self.name)], models=list(self.models), lambdas=[self.ip_scale],
                          steps=self.steps, guidance=self.guidance, identitynet_scale=self.identitynet_scale,
                          width=self.width, height=self.height, seed=self.seed, negative_prompt=self.negative_prompt,
                          device=self.device)


def check_start(ws: Workspace, s: StudySettings) -> None:
    """Refuse before anything is generated: a study name in use, faces not found, models without weights."""
    from ..models.generate import resolve_models

    s.validate()
    if ws.store.study(s.name) is not None:
        raise ValueError(f"a study named {s.name!r} exists; choose another name")
    if ws.store.testset(s.faces) is None and not Path(s.faces).exists():
        raise ValueError(f"faces {s.faces!r}: neither a test set ({[t['name'] for t in ws.store.testsets()]}) "
                         "nor a folder or zip on this machine")
    resolve_models(ws, s.models)
    design = ws.store.testset(design_name(s.name))
    if design is not None and design["settings"].get("design") != _design_key(s):
        raise ValueError(f"test set {design_name(s.name)!r} holds another design; delete it or choose another name")


def _design_key(s: StudySettings) -> dict:
    return {"faces": s.faces, "prompts": list(s.prompts), "face_pack": s.face_pack}


def build_design(ws: Workspace, s: StudySettings, run_id: int | None = None, track=None) -> dict:
    """The faces x prompts test set (reused when a killed run made it already)."""
    from ..dataset.attributes import compile_vocabulary, tags_for, vocabulary
    from ..evaluation import testsets as ts
    from ..evaluation.metrics import SCORED_ATTRIBUTES

    name = design_name(s.name)
    found = ws.store.testset(name)
    if found is not None and found["settings"].get("design") == _design_key(s):
        return ts.summary(ws, name)
    faces, left_out, pack = _faces(ws, s, name, track)
    if not faces:
        raise ValueError("no usable face: " + "; ".join(left_out[:5]))
    compiled = compile_vocabulary({k: v for k, v in vocabulary(ws).items() if k in SCORED_ATTRIBUTES})
    items = []
    for face in faces:
        for prompt in s.prompts:
            found_tags = tags_for(prompt, compiled)
            items.append({**face, "prompt": prompt, "attribute": found_tags[0] if found_tags else None,
                          "target_image_id": None, "target_path": None})
    settings = {"design": _design_key(s), "faces": len(faces), "left_out": left_out}
    ws.store.save_testset(name=name, kind="customization", source=f"study design: {s.faces}", settings=settings,
                          pack=pack, items=items, run_id=run_id)
    return ts.summary(ws, name) | {"left_out": left_out}


def _faces(ws: Workspace, s: StudySettings, name: str, track) -> tuple[list[dict], list[str], str]:
    """Distinct input faces of a test set, or every face photo of a folder / zip (analysed once each)."""
    from ..evaluation import testsets as ts

    t = ws.store.testset(s.faces)
    keep = ("person", "input_image_id", "input_path", "face", "embedding")
    if t is not None:
        seen: dict[str, dict] = {}
        for item in ws.store.testset_items(t["id"]):
            seen.setdefault(item["input_path"], {k: item[k] for k in keep})
        return list(seen.values()), [], t["pack"]
    path = Path(s.faces)
    (ws.root / "tmp").mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="faces-", dir=ws.root / "tmp"))
    try:
        root = ts.extract_zip(path, scratch) if path.suffix.lower() == ".zip" else path
        if not root.is_dir():
            raise ValueError(f"faces {s.faces}: not a folder or a zip")
        items, left_out, pack = ts.read_items(ws, ts.read_photos(root), root, name, "fidelity", s.face_pack, track,
                                              scratch if root != path else None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [{k: i.get(k) for k in keep} for i in items], left_out, pack


def generate_study(ws: Workspace, s: StudySettings, run_id: int, author: str = "studio", track=None) -> dict:
    """Make the faces x prompts grid, generate every (face, prompt, model) sample that is missing, and create the
    study (a draft) from them; the models' names stay hidden from annotators, as in every study."""
    from ..evaluation.evaluate import generate_samples, plan_samples, split_reused
    from .studies import DEFAULT_INSTRUCTIONS, create_study

    track = track or (lambda items, **_: items)
    design = build_design(ws, s, run_id, track)
    cfg = s.generation()
    plan, _ = plan_samples(ws, cfg)
    reused, todo = split_reused(ws, plan, run_id)
    if todo:
        generate_samples(ws, todo, cfg, run_id, author, track)
    made = ws.store.eval_samples([p.key for p in plan])
    samples = [{"model": p.spec.name, "prompt": p.item["prompt"], "image_path": made[p.key]["output_path"],
                "face_path": p.item["input_path"], "generation_id": made[p.key]["generation_id"]} for p in plan]
    study = create_study(ws, s.name, samples, s.annotators, per_item=s.per_item, duplicates=s.duplicates,
                         seed=s.seed, instructions=s.instructions or DEFAULT_INSTRUCTIONS,
                         source=f"faces x prompts x models: {design['persons']} persons' faces from {s.faces}, "
                                f"{len(s.prompts)} prompts, {len(s.models)} models (run {run_id})",
                         created_by=author)
    return {"study": study, "design": design["name"], "faces": design["items"] // len(s.prompts),
            "prompts": len(s.prompts), "models": list(s.models), "samples": len(plan), "generated": len(todo),
            "reused": len(reused), "left_out": design.get("left_out", [])}
