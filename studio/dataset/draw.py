"""Drawing faces on photos for the detail view."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# left eye, right eye, nose, left mouth corner, right mouth corner
KPS_COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]


def draw_faces(rgb: np.ndarray, faces, subject: int | None = 0) -> Image.Image:
    """Boxes (the subject face green, others orange) and the 5 keypoints, sized to the photo."""
    img = Image.fromarray(rgb)
    d = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 300))
    for i, f in enumerate(faces):
        x1, y1, x2, y2 = f.bbox
        d.rectangle([x1, y1, x2, y2], outline=(0, 200, 0) if f.face_index == subject else (255, 140, 0), width=width)
        r = max(2, round((x2 - x1) / 40))
        for (x, y), color in zip(f.kps, KPS_COLORS):
            d.ellipse([x - r, y - r, x + r, y + r], fill=color)
    return img


# The IdentityNet was trained on this rendering: on black, a stick from each eye and mouth corner
# to the nose (coloured like the outer point, dimmed to 60%), then a filled disc per keypoint.
# Coordinates, half-length and angle are truncated with int(), as the reference drawing does:
# rounding instead moves sticks and discs by a pixel, which the IdentityNet never saw.
KPS_STICKS = ((0, 2), (1, 2), (3, 2), (4, 2))


def draw_kps(width: int, height: int, kps, stick_width: int = 4, radius: int = 10) -> Image.Image:
    """The IdentityNet's control image for 5 keypoints (in output pixel coordinates)."""
    import math

    import cv2

    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    pts = np.asarray(kps, dtype=np.float64).reshape(5, 2)
    for a, b in KPS_STICKS:
        (xa, ya), (xb, yb) = pts[a], pts[b]
        length = math.hypot(xa - xb, ya - yb)
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        centre = (int((xa + xb) / 2), int((ya + yb) / 2))
        poly = cv2.ellipse2Poly(centre, (int(length / 2), stick_width), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, poly, KPS_COLORS[a])
    canvas = (canvas * 0.6).astype(np.uint8)
    for (x, y), color in zip(pts, KPS_COLORS):
        cv2.circle(canvas, (int(x), int(y)), radius, color, -1)
    return Image.fromarray(canvas)
