"""The training data of ``train_instantid.py``: a pair manifest read into tensors.

One manifest line is a target photo i (``image_file``, ``additional_feature`` = caption, ``bbox``,
``landmarks``) and the ArcFace embedding of a *different* photo j of the same person
(``insightface_feature_file``), the layout ``python -m studio manifest`` writes and CrossFaceID's
own script reads. A line may list several faces of the person (``face_candidates``): each epoch
draws one of them, seeded, so a resumed run draws the same.

As the official trainer prepares a sample: the keypoint image is drawn on the whole photo, then
the photo and its keypoint image are resized (bilinear) so the short side is the training
resolution and cut to the same square: at random (the long side anywhere, the short side's
offset in its upper half, as there), in the centre, or around the face (the studio's default for
small runs). SDXL's size conditioning gets the photo's original size and the crop's top-left
corner. A random crop is drawn per (seed, epoch, line), so it too repeats on resume.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from studio.dataset.draw import draw_kps


class ManifestError(ValueError):
    """A manifest that cannot be trained on; the message names the lines and fields."""


CROPS = ("random", "center", "face")


@dataclass(frozen=True)
class Sample:
    image: Path
    caption: str
    bbox: tuple[float, float, float, float]
    landmarks: np.ndarray  # (5, 2)
    embedding: Path
    line: int
    candidates: tuple[Path, ...] = ()  # every face of the person this line may be trained with (empty: embedding)

    def face(self, rng: np.random.Generator | None) -> Path:
        """The face embedding of this epoch: one of the candidates, drawn with ``rng``; the fixed one without."""
        if not self.candidates or rng is None:
            return self.embedding
        return self.candidates[int(rng.integers(len(self.candidates)))]


def read_manifest(path: str | Path, root: str | Path | None = None) -> list[Sample]:
    """Every line checked before training starts: missing files or bad fields are listed by line."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    root = Path(root) if root else path.parent
    samples, problems = [], []
    with open(path, encoding="utf-8") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                d = json.loads(raw)
                image, emb = root / d["image_file"], root / d["insightface_feature_file"]
                bbox = tuple(float(v) for v in d["bbox"])
                kps = np.asarray(d["landmarks"], dtype=np.float32).reshape(5, 2)
                caption = d.get("additional_feature") or ""
                if len(bbox) != 4 or not isinstance(caption, str):
                    raise ValueError("bbox must have 4 numbers and additional_feature must be text")
                listed = d.get("face_candidates") or []
                if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
                    raise ValueError("face_candidates must be a list of embedding files")
                candidates = tuple(root / c for c in listed)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                problems.append(f"line {n}: {type(exc).__name__}: {exc}")
                continue
            for label, p in (("image_file", image), ("insightface_feature_file", emb),
                             *(("face_candidates", c) for c in candidates)):
                if not p.is_file():
                    problems.append(f"line {n}: {label} {p} does not exist")
            samples.append(Sample(image, caption, bbox, kps, emb, n, candidates))
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise ManifestError(f"manifest {path}: " + "; ".join(problems[:10]) + more)
    if not samples:
        raise ManifestError(f"manifest {path} has no lines: the split or its pairs are empty "
                            "(run `python -m studio pairs`, then `python -m studio manifest`)")
    return samples


def manifest_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def resized_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """The size after resizing the short side to ``resolution`` (the long side truncated, as torchvision's Resize)."""
    w, h = size
    if w <= h:
        return resolution, int(resolution * h / w)
    return int(resolution * w / h), resolution


def crop_origin(size: tuple[int, int], bbox, resolution: int, crop: str,
                rng: np.random.Generator | None = None) -> tuple[int, int, int, int]:
    """(resized width, resized height, left, top) of the training square in the resized photo."""
    sw, sh = resized_size(size, resolution)
    dw, dh = sw - resolution, sh - resolution
    if crop == "center":
        return sw, sh, dw // 2, dh // 2
    if crop == "random":
        if rng is None:
            raise ValueError("a random crop needs its generator")
        top = int(rng.integers(0, dh // 2 + 1))  # the official trainer keeps the short side's offset in the upper half
        return sw, sh, int(rng.integers(0, dw + 1)), top
    if crop != "face":
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    fx, fy = sw / size[0], sh / size[1]
    cx, cy = (bbox[0] + bbox[2]) / 2 * fx, (bbox[1] + bbox[3]) / 2 * fy
    left = int(min(max(cx - resolution / 2, 0), dw))
    top = int(min(max(cy - resolution / 2, 0), dh))
    return sw, sh, left, top


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """What a line draws in an epoch (its crop, its face) depends only on these: a resumed run draws the same."""
    return np.random.default_rng([seed, epoch, index])


class PairDataset(torch.utils.data.Dataset):
    """Manifest lines as training tensors; with ``cache`` the VAE latents and text embeddings come from it.

    ``epoch`` is set by the training loop before each epoch (random crops and drawn faces follow it)."""

    def __init__(self, samples: list[Sample], resolution: int, cache: "FeatureCache | None" = None, *,
                 crop: str = "face", seed: int = 0):
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if cache is not None and crop == "random":
            raise ValueError("random crops change every epoch: encode in the loop instead of caching latents")
        self.samples, self.resolution, self.cache = samples, resolution, cache
        self.crop, self.seed, self.epoch = crop, seed, 0

    def __len__(self) -> int:
        return len(self.samples)

    def rng(self, idx: int) -> np.random.Generator:
        return sample_rng(self.seed, self.epoch, idx)

    def geometry(self, idx: int, rng: np.random.Generator | None = None) -> tuple[Image.Image, dict]:
        s = self.samples[idx]
        with Image.open(s.image) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
        sw, sh, left, top = crop_origin(im.size, s.bbox, self.resolution, self.crop,
                                        rng if rng is not None else self.rng(idx))
        return im, {"size": (sw, sh), "left": left, "top": top, "original_size": (im.height, im.width)}

    def _resize_crop(self, im: Image.Image, g: dict) -> Image.Image:
        r = self.resolution
        return im.resize(g["size"], Image.BILINEAR).crop((g["left"], g["top"], g["left"] + r, g["top"] + r))

    def pixels(self, im: Image.Image, g: dict) -> torch.Tensor:
        im = self._resize_crop(im, g)
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)

    def keypoints(self, im: Image.Image, g: dict, landmarks: np.ndarray) -> torch.Tensor:
        """Drawn on the whole photo, then resized and cropped like it (as the official trainer prepares it)."""
        full = draw_kps(im.width, im.height, landmarks)
        return torch.from_numpy(np.asarray(self._resize_crop(full, g), dtype=np.float32) / 255.0).permute(2, 0, 1)

    def __getitem__(self, idx: int) -> dict:
        s = self.samples[idx]
        rng = self.rng(idx)
        im, g = self.geometry(idx, rng)
        item = {
            "index": torch.tensor(idx),
            "kps_image": self.keypoints(im, g, s.landmarks),
            "face_embed": torch.from_numpy(np.load(s.face(rng)).astype(np.float32).reshape(-1)),
            "caption": s.caption,
            "time_ids": torch.tensor([*g["original_size"], g["top"], g["left"], self.resolution, self.resolution],
                                     dtype=torch.float32),
        }
        if self.cache is not None:
            item.update(self.cache.load(idx))
        else:
            item["pixel_values"] = self.pixels(im, g)
        return item


def collate(items: list[dict]) -> dict:
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


class FeatureCache:
    """VAE latents and text embeddings per sample on disk, so the VAE and text encoders need not stay on the GPU.

    Keyed by the image, caption and resolution, so a changed manifest line is encoded again.
    """

    def __init__(self, root: Path, samples: list[Sample], resolution: int, crop: str = "face"):
        self.root, self.samples, self.resolution, self.crop = Path(root), samples, resolution, crop
        self.root.mkdir(parents=True, exist_ok=True)
        self._keys = [self._digest(s) for s in samples]  # once: every step loads by key

    def _digest(self, s: Sample) -> Path:
        digest = hashlib.sha1(f"{s.image.resolve()}|{s.image.stat().st_size}|{s.caption}|{s.bbox}|{self.resolution}|"
                              f"{self.crop}|bilinear".encode()).hexdigest()
        return self.root / f"{digest}.pt"

    def key(self, idx: int) -> Path:
        return self._keys[idx]

    def missing(self, indices) -> list[int]:
        return [i for i in indices if not self.key(i).is_file()]

    def save(self, idx: int, tensors: dict) -> None:
        path = self.key(idx)
        tmp = path.with_suffix(".tmp")
        torch.save({k: v.detach().cpu() for k, v in tensors.items()}, tmp)
        tmp.replace(path)

    def load(self, idx: int) -> dict:
        return torch.load(self.key(idx), map_location="cpu", weights_only=True)
