"""The paper's automatic metrics (CLIP-T, CLIP-I, Face Sim) and an attribute-following score, in one pass.

* CLIP-T: cosine between the prompt and the generated image (open_clip; ViT-L/14 by default, the
  studio's choice: the paper names no CLIP model; the model is recorded with every score).
* CLIP-I: cosine between the reference photo and the generated image.
* Face Sim: ArcFace cosine between the input face and the largest generated face, with the
  workspace's face pack (the score records which). A generated image without a face gets no
  Face Sim: it is counted as missing, never scored 0.
* Attribute: for a prompt that asks for an attribute, zero-shot CLIP between the attribute's
  phrasings and their opposites on the generated face crop (expressions, accessories), or the head
  pose from the 5 keypoints (side profile, looking up / down).

:class:`Scorer` decodes each generated image once for every metric, detects its faces once,
embeds each reference photo once, batches the CLIP forward passes and preprocesses in threads.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..dataset.faces import FaceAnalyzer, cosine

DEFAULT_CLIP_MODEL = "ViT-L-14"
DEFAULT_CLIP_PRETRAINED = "openai"

#: attribute -> (phrasings of it, phrasings of its opposite), for zero-shot CLIP on the face crop
CLIP_ATTRIBUTES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "smiling": (("a photo of a smiling face", "a face with a big smile"),
                ("a photo of a face with a neutral expression", "a face that is not smiling")),
    "laughing": (("a photo of a laughing face", "a person laughing out loud"),
                 ("a photo of a calm face", "a face with a closed mouth and a neutral expression")),
    "sad": (("a photo of a sad face", "a face with a sorrowful frown"),
            ("a photo of a happy face", "a face with a neutral expression")),
    "angry": (("a photo of an angry face", "a furious scowling face"),
              ("a photo of a calm face", "a face with a neutral expression")),
    "surprised": (("a photo of a surprised face", "an astonished face with wide eyes and open mouth"),
                  ("a photo of a calm face", "a face with a neutral expression")),
    "mouth open": (("a face with the mouth open", "a person with an open mouth"),
                   ("a face with the mouth closed", "a person with closed lips")),
    "eyes closed": (("a face with closed eyes", "a person with eyes shut"),
                    ("a face with open eyes", "a person looking with eyes open")),
    "glasses": (("a face wearing glasses", "a person with eyeglasses"),
                ("a face without glasses", "a person with no eyewear")),
    "sunglasses": (("a face wearing sunglasses", "a person with dark shades"),
                   ("a face without sunglasses", "a person with bare eyes")),
    "hat": (("a person wearing a hat", "a face under a cap"), ("a person with no hat", "a bare head")),
    "beard": (("a man with a beard", "a face with a full beard"), ("a clean-shaven face", "a face with no beard")),
    "mustache": (("a man with a mustache", "a face with a moustache"), ("a clean-shaven face", "a face with no mustache")),
}
#: attribute -> the pose label (studio.dataset.faces.pose_from_kps) that fulfils it
POSE_ATTRIBUTES = {"side profile": "side", "looking up": "looking up", "looking down": "looking down"}
SCORED_ATTRIBUTES = (*CLIP_ATTRIBUTES, *POSE_ATTRIBUTES)


class MissingClipError(ValueError):
    """CLIP weights are not on this machine; the message says how to get them."""


@dataclass(frozen=True)
class ClipSpec:
    """An open_clip model: a built-in name + pretrained tag or weights file, or a folder / hub repo of its own."""

    model: str = DEFAULT_CLIP_MODEL
    pretrained: str | None = DEFAULT_CLIP_PRETRAINED

    @property
    def label(self) -> str:
        return f"{self.model}/{self.pretrained}" if self.pretrained and not self._has_own_weights() else self.model

    def _has_own_weights(self) -> bool:
        return self.model.startswith(("hf-hub:", "local-dir:")) or Path(self.model).is_dir()

    def open_clip_args(self) -> tuple[str, str | None]:
        """(model_name, pretrained) as open_clip's factory takes them; a folder becomes ``local-dir:``."""
        if not self.model.startswith(("hf-hub:", "local-dir:")) and Path(self.model).is_dir():
            return f"local-dir:{Path(self.model).resolve()}", None
        return self.model, None if self._has_own_weights() else self.pretrained


@dataclass
class ClipModel:
    """A loaded open_clip model with its preprocessing and tokenizer; text features are cached."""

    spec: ClipSpec
    model: object
    preprocess: Callable
    tokenizer: Callable
    device: str
    _texts: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def encode_images(self, tensors: Sequence) -> np.ndarray:
        """Preprocessed image tensors -> L2-normalised features (n, d), one batched forward pass."""
        import torch

        if not len(tensors):
            return np.zeros((0, 0), np.float32)
        with torch.inference_mode():
            feats = self.model.encode_image(torch.stack(list(tensors)).to(self.device))
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        todo = [t for t in dict.fromkeys(texts) if t not in self._texts]
        if todo:
            with torch.inference_mode():
                feats = self.model.encode_text(self.tokenizer(todo).to(self.device))
                feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
            self._texts.update(zip(todo, feats))
        return np.stack([self._texts[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())


def load_clip(spec: ClipSpec = ClipSpec(), device: str | None = None) -> ClipModel:
    """Load through open_clip's own factory (the same call for ViT-L/14 and for a small local model)."""
    import open_clip

    device = device or ("cuda" if _cuda() else "cpu")
    name, pretrained = spec.open_clip_args()
    try:
        # require_pretrained: a folder without its weights file would otherwise give a randomly initialised
        # CLIP, and scores that look real
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device,
                                                                     require_pretrained=True)
        tokenizer = open_clip.get_tokenizer(name)
    except (RuntimeError, OSError, ValueError) as exc:
        raise MissingClipError(
            f"CLIP model {spec.label} could not be loaded ({str(exc).splitlines()[0][:300]}). Its weights are "
            "downloaded by open_clip on first use or by `python -m studio models --download clip`, which need "
            "the network; offline, give a folder holding "
            "open_clip_config.json and the weights (e.g. `hf download timm/vit_large_patch14_clip_224.openai "
            "--local-dir models/clip-vit-l-14`, then --clip-model models/clip-vit-l-14), or --clip-pretrained "
            "with a weights file for a built-in model name.") from None
    model.eval()
    return ClipModel(spec, model, preprocess, tokenizer, device)


WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def missing_clip(spec: ClipSpec) -> str | None:
    """Why ``spec``'s weights are not on this machine (checked without loading anything), or None when they
    are, or when it cannot be told without the network (open_clip's own URL downloads)."""
    from ..models.hub import hub_cached

    how = ("get them with `python -m studio models --download clip` (the default), or give a folder holding "
           "open_clip_config.json and the weights (`hf download REPO --local-dir DIR`)")
    name, pretrained = spec.open_clip_args()
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):])
        if not (folder / "open_clip_config.json").is_file():
            return f"folder {folder} has no open_clip_config.json; {how}"
        if not any((folder / f).is_file() for f in WEIGHT_FILES):
            return f"folder {folder} has no weights ({' or '.join(WEIGHT_FILES)}); {how}"
        return None
    if name.startswith("hf-hub:"):
        repo = name[len("hf-hub:"):]
        return None if hub_cached(repo, "open_clip_config.json") else f"hub repo {repo} is not in the hub cache; {how}"
    if pretrained and Path(pretrained).expanduser().is_file():
        return None
    from open_clip import pretrained as oc

    cfg = oc.get_pretrained_cfg(name, pretrained or "") if pretrained else {}
    hub = (cfg or {}).get("hf_hub", "")
    if not hub:
        return None if cfg else f"{spec.label} is not one of open_clip's pretrained models; {how}"
    repo, filename = hub.rstrip("/").rsplit("/", 1) if not hub.endswith("/") else (hub.rstrip("/"), "")
    names = [filename] if filename else list(WEIGHT_FILES)
    if any(hub_cached(repo, f) for f in names):
        return None
    return f"its weights (hub repo {repo}) are not in the hub cache; {how}"


def download_clip(spec: ClipSpec = ClipSpec()) -> str:
    """Fetch a built-in model's pretrained weights with open_clip's own downloader (into the hub cache, where
    :func:`load_clip` finds them); returns the file. ``python -m studio models --download clip``."""
    from open_clip import pretrained as oc

    name, tag = spec.open_clip_args()
    cfg = oc.get_pretrained_cfg(name, tag or "") if tag else {}
    if not cfg:
        raise ValueError(f"{spec.label} is not one of open_clip's built-in pretrained models; give a folder or "
                         "hf-hub:REPO as the CLIP model instead")
    try:
        return str(oc.download_pretrained(cfg))
    except Exception as exc:  # offline, not found: what failed, and the command for a machine with internet
        repo = cfg.get("hf_hub", "").rstrip("/")
        raise MissingClipError(f"download of CLIP {spec.label} failed ({exc.__class__.__name__}: {str(exc)[:200]}). "
                               f"On a machine with internet run: hf download {repo} --local-dir models/clip, then "
                               "evaluate with --clip-model models/clip") from None


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def scorer_name(clip: ClipSpec, pack_name: str) -> str:
    """What produced a score: CLIP model and face pack (scores of another scorer are not reused)."""
    return f"clip={clip.label};faces={pack_name}"


@dataclass
class ScoreInput:
    """One generated sample to score, with what it is compared against."""

    key: str
    image_path: Path
    prompt: str
    reference_path: Path | None  # the photo CLIP-I compares with
    face_embedding: np.ndarray | None  # the input face (Face Sim)
    attribute: str | None = None  # the attribute the prompt asks for (one of SCORED_ATTRIBUTES)


def check_attributes(inputs: Sequence[ScoreInput]) -> None:
    """Refuse, before any work, an attribute the scorer has no automatic score for."""
    unknown = {i.attribute for i in inputs if i.attribute and i.attribute not in SCORED_ATTRIBUTES}
    if unknown:
        raise ValueError(f"no automatic score for attribute(s) {sorted(unknown)}; scored: {list(SCORED_ATTRIBUTES)}")


def face_crop(rgb: np.ndarray, bbox: Sequence[float], margin: float = 0.3) -> Image.Image:
    """A square crop around a face box with a margin, clipped to the image."""
    x1, y1, x2, y2 = bbox
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = max(x2 - x1, y2 - y1) * (1 + margin) / 2
    h, w = rgb.shape[:2]
    box = (max(0, int(cx - half)), max(0, int(cy - half)), min(w, int(np.ceil(cx + half))), min(h, int(np.ceil(cy + half))))
    return Image.fromarray(rgb).crop(box)


class Scorer:
    """Every metric for a batch of samples from one decode of each image."""

    def __init__(self, clip: ClipModel, analyzer: FaceAnalyzer, batch_size: int = 16, workers: int | None = None):
        self.clip = clip
        self.analyzer = analyzer
        self.batch_size = max(1, int(batch_size))
        self.workers = workers or min(8, os.cpu_count() or 1)
        self._refs: dict[str, np.ndarray] = {}

    @property
    def name(self) -> str:
        return scorer_name(self.clip.spec, self.analyzer.pack.name)

    def _decode(self, path: Path) -> tuple[np.ndarray, object]:
        from ..images import load_rgb

        rgb = load_rgb(path).rgb
        return rgb, self.clip.preprocess(Image.fromarray(rgb))

    def _reference_features(self, paths: Sequence[Path], pool: ThreadPoolExecutor) -> None:
        todo = list(dict.fromkeys(str(p) for p in paths if p is not None and str(p) not in self._refs))
        if todo:
            tensors = list(pool.map(lambda p: self._decode(Path(p))[1], todo))
            self._refs.update(zip(todo, self.clip.encode_images(tensors)))

    def score(self, inputs: Sequence[ScoreInput], track: Callable | None = None) -> Iterator[list[dict]]:
        """Yield the scores of each batch (dicts with ``key``), so a caller can store them as they come."""
        check_attributes(inputs)
        batches = [list(inputs[s:s + self.batch_size]) for s in range(0, len(inputs), self.batch_size)]
        with ThreadPoolExecutor(self.workers) as pool:
            def submit(batch: list[ScoreInput]) -> list:
                return [pool.submit(self._decode, item.image_path) for item in batch]

            ahead = submit(batches[0]) if batches else []
            steps = track(range(len(batches)), total=len(batches), desc="scoring") if track else range(len(batches))
            for k in steps:
                futures, ahead = ahead, submit(batches[k + 1]) if k + 1 < len(batches) else []  # decode runs ahead
                yield self._score_batch(batches[k], [_outcome(f) for f in futures], pool)

    def _score_batch(self, batch: list[ScoreInput], decoded: list, pool: ThreadPoolExecutor) -> list[dict]:
        self._reference_features([i.reference_path for i in batch], pool)
        ok = [(item, d) for item, d in zip(batch, decoded) if not isinstance(d, Exception)]
        results = {item.key: {"key": item.key, "faces": 0, "error": f"{type(d).__name__}: {d}"}
                   for item, d in zip(batch, decoded) if isinstance(d, Exception)}
        image_feats = self.clip.encode_images([d[1] for _, d in ok])
        prompts = self.clip.encode_texts([item.prompt for item, _ in ok])
        crops: list[tuple[int, Image.Image]] = []
        for n, (item, (rgb, _)) in enumerate(ok):
            faces = self.analyzer.analyze(rgb)
            r: dict = {"key": item.key, "faces": len(faces), "attribute": item.attribute,
                       "clip_t": float(image_feats[n] @ prompts[n])}
            if item.reference_path is not None:
                r["clip_i"] = float(image_feats[n] @ self._refs[str(item.reference_path)])
            if faces:
                f = faces[0]
                if item.face_embedding is not None:
                    r["face_sim"] = cosine(item.face_embedding, f["embedding"])
                r.update(yaw=f["yaw"], pitch=f["pitch"], pose=f["pose"])
                if item.attribute in POSE_ATTRIBUTES:
                    r["attr_correct"] = f["pose"] == POSE_ATTRIBUTES[item.attribute]
                elif item.attribute in CLIP_ATTRIBUTES:
                    crops.append((n, face_crop(rgb, f["bbox"])))
            results[item.key] = r
        if crops:
            crop_feats = self.clip.encode_images(list(pool.map(self.clip.preprocess, [c for _, c in crops])))
            for (n, _), feat in zip(crops, crop_feats):
                r = results[ok[n][0].key]
                r["attr_score"] = self.attribute_probability(feat, r["attribute"])
                r["attr_correct"] = r["attr_score"] > 0.5
        return [results[item.key] for item in batch]

    def attribute_probability(self, image_feature: np.ndarray, attribute: str) -> float:
        """P(attribute) against its opposite: softmax over the mean phrasing embeddings, CLIP's logit scale."""
        pos, neg = CLIP_ATTRIBUTES[attribute]
        classes = []
        for phrasings in (pos, neg):
            mean = self.clip.encode_texts(list(phrasings)).mean(axis=0)
            classes.append(mean / (np.linalg.norm(mean) + 1e-12))
        logits = self.clip.logit_scale * (np.stack(classes) @ image_feature)
        logits -= logits.max()
        p = np.exp(logits)
        return float(p[0] / p.sum())


def _outcome(future):
    """A decoded image, or the exception that one unreadable sample raised (that sample's problem only)."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001
        return exc


def face_similarity(analyzer: FaceAnalyzer, reference_rgb: np.ndarray, generated_rgb: np.ndarray) -> float | None:
    """ArcFace cosine of the two photos' largest faces; None when either has no face."""
    a, b = analyzer.analyze(reference_rgb), analyzer.analyze(generated_rgb)
    if not a or not b:
        return None
    return cosine(a[0]["embedding"], b[0]["embedding"])
