"""The IdentityNet's keypoint image must match the reference rendering pixel for pixel."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from studio.dataset.draw import draw_kps


def reference_rendering(width, height, kps):
    """The published procedure, step by step: a float canvas, for each limb (eye/mouth corner -> nose) an
    ellipse polygon centred on the limb's midpoint with half-length and angle truncated by int(), filled with
    the outer point's colour; the canvas scaled by 0.6 and cast to uint8; then a radius-10 disc per keypoint
    at its int()-truncated position."""
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]
    kps = np.array(kps, dtype=float)
    img = np.zeros([height, width, 3])
    for outer, inner in ((0, 2), (1, 2), (3, 2), (4, 2)):
        x = kps[[outer, inner], 0]
        y = kps[[outer, inner], 1]
        half = ((x[0] - x[1]) ** 2 + (y[0] - y[1]) ** 2) ** 0.5 / 2
        angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
        poly = cv2.ellipse2Poly((int(np.mean(x)), int(np.mean(y))), (int(half), 4), int(angle), 0, 360, 1)
        img = cv2.fillConvexPoly(img.copy(), poly, colors[outer])
    img = (img * 0.6).astype(np.uint8)
    for (x, y), c in zip(kps, colors):
        img = cv2.circle(img.copy(), (int(x), int(y)), 10, c, -1)
    return img


@pytest.mark.parametrize("kps", [
    [[410.7, 380.6], [612.4, 377.9], [515.5, 495.5], [430.8, 600.7], [598.6, 604.4]],  # fractional: .5-.9 parts
    [[300.5, 300.5], [340.5, 310.5], [322.5, 340.5], [305.5, 370.5], [338.5, 372.5]],  # exact halves
    [[100.2, 90.1], [160.9, 120.8], [120.4, 140.6], [90.3, 170.2], [150.7, 190.9]],  # tilted head, negative angle
])
def test_keypoint_image_is_pixel_identical_to_the_reference(kps):
    ours = np.asarray(draw_kps(1024, 768, kps))
    ref = reference_rendering(1024, 768, kps)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    assert int(np.abs(ours.astype(int) - ref.astype(int)).sum()) == 0
