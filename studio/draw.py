"""Drawing faces on photos for the detail view."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# left eye, right eye, nose, left mouth corner, right mouth corner
KPS_COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]


def draw_faces(rgb: np.ndarray, faces) -> Image.Image:
    """Boxes (main face green, others orange) and the 5 keypoints, sized to the photo."""
    img = Image.fromarray(rgb)
    d = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 300))
    for i, f in enumerate(faces):
        x1, y1, x2, y2 = f.bbox
        d.rectangle([x1, y1, x2, y2], outline=(0, 200, 0) if i == 0 else (255, 140, 0), width=width)
        r = max(2, round((x2 - x1) / 40))
        for (x, y), color in zip(f.kps, KPS_COLORS):
            d.ellipse([x - r, y - r, x + r, y + r], fill=color)
    return img
