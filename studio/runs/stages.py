"""Every kind of run: its settings, the pre-start check and the work, in one registry.

The CLI (in-process), the app and the API (``runs.submit``) and the worker
(``python -m studio worker RUN_ID``) all go through :data:`STAGES`: a run kind's settings class
builds the request, ``check_start`` refuses what would fail before anything is recorded, and
``run`` does the work with the run's progress, cancel flag and author. Settings with their own
home (training's :class:`TrainConfig`, evaluation's :class:`EvalConfig`) live next to their stage.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import face_pack_spec
from ..evaluation.evaluate import EvalConfig
from ..human.design import StudySettings
from .settings import RunSettings
from ..train.launch import TrainConfig
from ..workspace import Workspace


@dataclass
class StageRun:
    """What a stage's work sees of its run: the handle (progress, cancel), a progress wrapper, the author."""

    handle: Any  # runs.RunHandle
    track: Callable
    author: str

    @property
    def run_id(self) -> int:
        return self.handle.run_id


# -- the settings of the kinds that have no dataclass of their own ----------------------------------

@dataclass
class IngestSettings(RunSettings):
    KIND = "ingest"
    source: str
    workers: int | None = None
    file_column: str | None = None
    person_column: str | None = None
    person_pattern: str | None = None
    caption_column: str | None = None
    data_root: str | None = None  # JSONL: the folder relative image paths start from (default: the JSONL's)


@dataclass
class AnalyzeSettings(RunSettings):
    KIND = "analyze"
    face_pack: str = field(default_factory=face_pack_spec)  # $STUDIO_FACE_PACK or auto, where the run is asked for
    redo: bool = False
    curate: bool = True
    workers: int | None = None
    engine: str = "local"
    address: str | None = None
    gpus_per_worker: float = 0.0

    def validate(self) -> None:
        if self.engine not in ("local", "ray"):
            raise ValueError(f"analyze settings: engine must be local or ray, got {self.engine!r}")


@dataclass
class CurateSettings(RunSettings):
    """Rule overrides; None keeps the workspace's last rules (recorded resolved, see :func:`_resolve_curate`)."""

    KIND = "curate"
    min_faces: int | None = None
    max_faces: int | None = None
    min_side: int | None = None
    min_face_ratio: float | None = None
    identity_threshold: float | None = None
    min_person_images: int | None = None
    reject_outliers: bool | None = None


@dataclass
class CaptionRunSettings(RunSettings):
    """A captioning run; the API key is not a setting: it reaches the worker through its environment only."""

    KIND = "caption"
    model: str | None = None
    base_url: str | None = None
    concurrency: int | None = None
    timeout: float | None = None
    max_retries: int | None = None
    price_input: float | None = None
    price_output: float | None = None
    all: bool = False
    overwrite_reviewed: bool = False
    batch: bool = False
    poll_seconds: float = 30.0
    no_retry: bool = False

    def client_settings(self):
        from ..captions.captioner import CaptionSettings

        kw = {"model": self.model, "base_url": self.base_url, "concurrency": self.concurrency, "timeout": self.timeout,
              "max_retries": self.max_retries, "price_input_per_mtok": self.price_input,
              "price_output_per_mtok": self.price_output}
        return CaptionSettings(**{k: v for k, v in kw.items() if v is not None})

    def validate(self) -> None:
        self.client_settings()  # its own checks (concurrency, timeout, ...)


@dataclass
class TagSettings(RunSettings):
    KIND = "tag"
    vocabulary: str | None = None  # a JSON file {tag: [phrases]} to use from now on


@dataclass
class ExportSettings(RunSettings):
    KIND = "export"
    out: str
    include_failed: bool = False
    captions: str = "approved"
    missing_caption: str = "keep"
    allow_other_pack: bool = False
    format: str = "studio"  # studio: the training JSONL + .npy; hf: a Hugging Face imagefolder dataset + card
    push_to_hub: str | None = None  # hf: upload to this dataset repository (needs a token)
    public: bool = False  # a pushed dataset repository is private unless this is set

    def validate(self) -> None:
        _one_of("export", "captions", self.captions, ("approved", "unflagged", "any"))
        _one_of("export", "missing_caption", self.missing_caption, ("keep", "skip", "error"))
        _one_of("export", "format", self.format, ("studio", "hf"))
        if self.push_to_hub and self.format != "hf":
            raise ValueError("export settings: push_to_hub needs format hf")


@dataclass
class SplitSettings(RunSettings):
    KIND = "split"
    shares: str = "0.8,0.1,0.1"
    seed: int = 0
    person: list[str] = field(default_factory=list)  # NAME=SPLIT pins
    reassign: bool = False

    def validate(self) -> None:
        from ..train.pairs import parse_pins, parse_shares

        parse_shares(self.shares)
        parse_pins(self.person)


@dataclass
class PairsSettings(RunSettings):
    KIND = "pairs"
    split: str = "train"
    strategy: str = "random"
    per_image: int = 1
    seed: int = 0
    max_hash_distance: int = 6
    max_face_cos: float = 0.95

    def validate(self) -> None:
        from ..train.pairs import STRATEGIES

        _one_of("pairs", "split", self.split, ("train", "validation"))
        _one_of("pairs", "strategy", self.strategy, tuple(STRATEGIES))
        if self.per_image < 1:
            raise ValueError(f"pairs settings: per_image must be >= 1, got {self.per_image}")


@dataclass
class ManifestSettings(RunSettings):
    KIND = "manifest"
    out: str
    split: str = "train"
    captions: str = "approved"
    missing_caption: str = "skip"
    template: str = "a photo of a person"
    allow_other_pack: bool = False
    candidates: bool = False
    paths: str = "relative"  # image paths relative to the manifest's folder, or absolute

    def validate(self) -> None:
        _one_of("manifest", "paths", self.paths, ("relative", "absolute"))
        _one_of("manifest", "split", self.split, ("train", "validation"))
        _one_of("manifest", "captions", self.captions, ("approved", "unflagged", "any"))
        _one_of("manifest", "missing_caption", self.missing_caption, ("skip", "template", "error"))


@dataclass
class TestsetSettings(RunSettings):
    """Building a test set from a split (``build``) or importing one from a file (``import``)."""

    __test__ = False  # not a pytest class
    KIND = "testset"
    action: str
    name: str
    kind: str  # import: "" infers it from the items
    split: str = "test"
    person: list[str] | None = None
    ask: str = ""
    prompt: str = "a photo of a person"
    per_person: int = 0
    seed: int = 0
    file: str | None = None
    face_pack: str = "auto"
    replace: bool = False

    def validate(self) -> None:
        from ..evaluation.testsets import KINDS, parse_attributes

        _one_of("testset", "action", self.action, ("build", "import"))
        if self.kind or self.action == "build":
            _one_of("testset", "kind", self.kind, KINDS)
        if not self.name.strip():
            raise ValueError("testset settings: give the test set a name")
        if self.action == "import" and not self.file:
            raise ValueError("testset import needs --file (CSV, JSONL, a folder of text-image pairs or a zip)")
        parse_attributes(self.ask)


def _one_of(kind: str, name: str, value: str, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{kind} settings: {name} must be one of {', '.join(allowed)}; got {value!r}")


# -- the work of each kind --------------------------------------------------------------------------

def _ingest(ws: Workspace, s: IngestSettings, run: StageRun) -> dict:
    from ..dataset.ingest import ingest

    return ingest(ws, s.source, workers=s.workers, progress=run.track, file_column=s.file_column,
                  person_column=s.person_column, caption_column=s.caption_column, person_pattern=s.person_pattern,
                  data_root=s.data_root, run_id=run.run_id).as_dict()


def _analyze(ws: Workspace, s: AnalyzeSettings, run: StageRun) -> dict:
    from ..dataset.analyze import analyze
    from ..dataset.curate import curate

    report = analyze(ws, s.face_pack, redo=s.redo, workers=s.workers, progress=run.track, run_id=run.run_id,
                     engine=s.engine, address=s.address, gpus_per_worker=s.gpus_per_worker)
    if report.note:
        print(f"note: {report.note}", file=sys.stderr)
    result = report.as_dict()
    touched = report.analyzed + report.failed
    if touched and s.curate:  # verdicts depend on the analyses just written: bring them up to date
        result["curation"] = curate(ws, run_id=run.run_id).as_dict()
    elif touched:
        print("note: analyses changed; run `python -m studio curate` to update the verdicts", file=sys.stderr)
    return result


def _resolve_curate(ws: Workspace, s: CurateSettings) -> CurateSettings:
    """The rules the run applies, recorded in full: a rerun applies the same ones."""
    from ..dataset.curate import curation_rules

    return CurateSettings(**curation_rules(ws, **s.to_dict()).to_dict())


def _curate(ws: Workspace, s: CurateSettings, run: StageRun) -> dict:
    from ..dataset.curate import curate, curation_rules

    return curate(ws, curation_rules(ws, **s.to_dict()), run_id=run.run_id, track=run.track).as_dict()


def _caption(ws: Workspace, s: CaptionRunSettings, run: StageRun) -> dict:
    from ..captions.captioner import caption_workspace

    key = os.environ.get("OPENAI_API_KEY")
    client = s.client_settings()
    if not s.batch:
        return caption_workspace(ws, client, key, kept_only=not s.all, author=run.author, progress=run.track,
                                 overwrite_reviewed=s.overwrite_reviewed, run_id=run.run_id).as_dict() | {"mode": "sync"}
    from ..captions.batch import BATCH_DISCOUNT, batches, caption_batch

    report = caption_batch(ws, client, key, kept_only=not s.all, author=run.author, progress=run.track,
                           overwrite_reviewed=s.overwrite_reviewed, run_id=run.run_id, poll_seconds=s.poll_seconds,
                           retry_failed=not s.no_retry)
    return report.as_dict() | {"mode": f"batch (Batch API price: {BATCH_DISCOUNT:g} x the synchronous one)",
                               "batches": [b["batch_id"] for b in batches(ws)]}


def _read_vocabulary(s: TagSettings) -> dict | None:
    if not s.vocabulary:
        return None
    try:
        return json.loads(Path(s.vocabulary).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--vocabulary {s.vocabulary}: {exc}") from None


def _check_tag(ws: Workspace, s: TagSettings, run_id: int | None = None) -> None:
    from ..dataset.attributes import compile_vocabulary

    vocab = _read_vocabulary(s)
    if vocab is not None:
        compile_vocabulary(vocab)


def _tag(ws: Workspace, s: TagSettings, run: StageRun) -> dict:
    from ..dataset.attributes import set_vocabulary, tag_workspace

    vocab = _read_vocabulary(s)
    if vocab is not None:
        set_vocabulary(ws, vocab)
    return {"tags": tag_workspace(ws)}


def _check_export(ws: Workspace, s: ExportSettings, run_id: int | None = None) -> None:
    """A push without a Hugging Face token is refused before anything is written."""
    if s.push_to_hub:
        from huggingface_hub import get_token

        if not get_token():
            raise ValueError(f"--push-to-hub {s.push_to_hub}: no Hugging Face token; run `hf auth login` or set "
                             "HF_TOKEN (or export without --push-to-hub and upload the folder later)")


def _export(ws: Workspace, s: ExportSettings, run: StageRun) -> dict:
    from ..dataset.export import export_training_set

    if s.format == "hf":
        from ..dataset.hf_export import export_hf, push_to_hub

        result = export_hf(ws, s.out, include_failed=s.include_failed, captions=s.captions,
                           allow_other_pack=s.allow_other_pack, track=run.track)
        if s.push_to_hub:
            result["pushed"] = push_to_hub(s.out, s.push_to_hub, private=not s.public)
        return result
    return export_training_set(ws, s.out, include_failed=s.include_failed, captions=s.captions,
                               missing_caption=s.missing_caption, allow_other_pack=s.allow_other_pack,
                               run_id=run.run_id, author=run.author, track=run.track)


def _split(ws: Workspace, s: SplitSettings, run: StageRun) -> dict:
    from ..train.pairs import assign_splits, parse_pins

    return assign_splits(ws, s.shares, seed=s.seed, reassign=s.reassign, pins=parse_pins(s.person), run_id=run.run_id)


def _pairs(ws: Workspace, s: PairsSettings, run: StageRun) -> dict:
    from ..train.pairs import make_pairs

    return make_pairs(ws, s.split, s.strategy, per_image=s.per_image, seed=s.seed, max_hash_distance=s.max_hash_distance,
                      max_face_cos=s.max_face_cos, run_id=run.run_id, track=run.track)


def _manifest(ws: Workspace, s: ManifestSettings, run: StageRun) -> dict:
    from ..train.pairs import export_manifest

    return export_manifest(ws, s.out, s.split, captions=s.captions, missing_caption=s.missing_caption,
                           template=s.template, allow_other_pack=s.allow_other_pack, candidates=s.candidates,
                           paths=s.paths, run_id=run.run_id, author=run.author)


def _check_train(ws: Workspace, s: TrainConfig, run_id: int | None = None) -> None:
    from ..train.launch import check_start

    check_start(ws, s, run_id)


def _resolve_train(ws: Workspace, s: TrainConfig) -> TrainConfig:
    """A recipe's values written into the settings, so the run records what it trains with."""
    from ..train.launch import with_recipe

    return with_recipe(s)


def _train(ws: Workspace, s: TrainConfig, run: StageRun) -> dict:
    from ..train.launch import train

    return train(ws, s, run.handle, run.author)


def _testset(ws: Workspace, s: TestsetSettings, run: StageRun) -> dict:
    from ..evaluation.testsets import build_testset, import_testset

    if s.action == "import":
        result = import_testset(ws, Path(s.file or ""), s.name, s.kind, face_pack=s.face_pack, replace=s.replace,
                                run_id=run.run_id, track=run.track)
        for p in result.get("left_out", []):
            print(f"left out: {p}", file=sys.stderr)
        return result
    return build_testset(ws, s.name, s.kind, split=s.split, persons=s.person, ask=s.ask, prompt=s.prompt,
                         per_person=s.per_person, seed=s.seed, replace=s.replace, run_id=run.run_id)


def _check_study(ws: Workspace, s: StudySettings, run_id: int | None = None) -> None:
    from ..human.design import check_start

    check_start(ws, s)


def _study(ws: Workspace, s: StudySettings, run: StageRun) -> dict:
    from ..human.design import generate_study

    return generate_study(ws, s, run.run_id, author=run.author, track=run.track)


def _check_evaluate(ws: Workspace, s: EvalConfig, run_id: int | None = None) -> None:
    from ..evaluation.evaluate import check_start

    check_start(ws, s)


def _evaluate(ws: Workspace, s: EvalConfig, run: StageRun) -> dict:
    from ..evaluation.evaluate import evaluate

    return evaluate(ws, s, run.run_id, author=run.author, track=run.track, engine=s.engine, address=s.address,
                    workers=s.workers, gpus_per_worker=s.gpus_per_worker)


# -- the registry -----------------------------------------------------------------------------------

def _no_check(ws: Workspace, settings: RunSettings, run_id: int | None = None) -> None:
    """Nothing to check beyond the settings' own validation."""


def _as_given(ws: Workspace, settings: RunSettings) -> RunSettings:
    return settings


@dataclass(frozen=True)
class Stage:
    """A run kind: its settings class, its pre-start check and its work."""

    kind: str
    settings: type[RunSettings]
    run: Callable[[Workspace, Any, StageRun], dict]
    check: Callable[..., None] = _no_check
    resolve: Callable[[Workspace, Any], RunSettings] = _as_given
    #: one run of this kind at a time per workspace: two would ask for (and pay for) the same items
    exclusive: bool = False

    def check_start(self, ws: Workspace, settings: RunSettings, run_id: int | None = None) -> None:
        """Refuse what would fail, before a run is recorded (the CLI, the app) and again in the worker."""
        if not isinstance(settings, self.settings):
            raise ValueError(f"a {self.kind} run needs {self.settings.__name__}, got {type(settings).__name__}")
        settings.validate()
        self.check(ws, settings, run_id)  # run_id: the worker's own run, not one holding what it needs


STAGES: dict[str, Stage] = {s.kind: s for s in (
    Stage("ingest", IngestSettings, _ingest),
    Stage("analyze", AnalyzeSettings, _analyze, exclusive=True),
    Stage("curate", CurateSettings, _curate, resolve=_resolve_curate),
    Stage("caption", CaptionRunSettings, _caption, exclusive=True),
    Stage("tag", TagSettings, _tag, _check_tag),
    Stage("export", ExportSettings, _export, _check_export),
    Stage("split", SplitSettings, _split),
    Stage("pairs", PairsSettings, _pairs),
    Stage("manifest", ManifestSettings, _manifest),
    Stage("train", TrainConfig, _train, _check_train, resolve=_resolve_train),
    Stage("testset", TestsetSettings, _testset),
    Stage("evaluate", EvalConfig, _evaluate, _check_evaluate, exclusive=True),
    Stage("study", StudySettings, _study, _check_study),
)}


def stage(kind: str) -> Stage:
    if kind not in STAGES:
        raise ValueError(f"unknown run kind {kind!r}; one of {tuple(STAGES)}")
    return STAGES[kind]
