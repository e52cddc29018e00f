"""Every awkward photo becomes an upright RGB image or a clear, coded error."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from studio.images import MAX_PIXELS, ImageError, decode, load_rgb


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def obama(photos) -> Image.Image:
    return Image.open(photos["obama"]).convert("RGB")


def test_plain_jpeg(photos):
    img = load_rgb(photos["obama"])
    assert img.rgb.shape == (1137, 910, 3) and img.rgb.dtype == np.uint8
    assert img.original_mode == "RGB" and not img.exif_rotated


def test_rgba_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    img = decode(_encode(rgba, "PNG"), "x.png")
    assert img.original_mode == "RGBA"
    assert tuple(img.rgb[0, 0]) == (0, 0, 255)  # opaque pixel kept
    assert tuple(img.rgb[4, 4]) == (255, 255, 255)  # transparent pixel -> white, not black or red


def test_cmyk(obama):
    img = decode(_encode(obama.convert("CMYK"), "JPEG", quality=95), "cmyk.jpg")
    assert img.original_mode == "CMYK" and img.rgb.shape == (1137, 910, 3)
    assert np.abs(img.rgb.astype(int) - np.asarray(obama, dtype=int)).mean() < 12


def test_16bit_grayscale_scaled_not_clipped():
    arr = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    img = decode(_encode(Image.fromarray(arr), "PNG"), "deep.png")
    assert img.original_mode.startswith("I")
    assert img.rgb.shape == (64, 64, 3)
    assert img.rgb[0, 0, 0] == 0 and img.rgb[-1, -1, 0] == 255 and 100 < img.rgb[32, 0, 0] < 155


def test_grayscale(obama):
    img = decode(_encode(obama.convert("L"), "JPEG"), "gray.jpg")
    assert img.original_mode == "L" and img.rgb.shape == (1137, 910, 3)
    assert (img.rgb[..., 0] == img.rgb[..., 1]).all()


def test_exif_rotation_applied(obama):
    stored = obama.rotate(90, expand=True)  # what a phone writes: sideways pixels + Orientation=6
    exif = Image.Exif()
    exif[0x0112] = 6
    img = decode(_encode(stored, "JPEG", quality=95, exif=exif), "phone.jpg")
    assert img.exif_rotated
    assert (img.width, img.height) == obama.size
    assert np.abs(img.rgb.astype(int) - np.asarray(obama, dtype=int)).mean() < 8


@pytest.mark.parametrize("code, data", [
    ("not_an_image", b"name,person\nobama.jpg,obama\n"),
    ("not_an_image", b""),
])
def test_not_an_image(code, data):
    with pytest.raises(ImageError) as err:
        decode(data, "notes.txt")
    assert err.value.code == code and "notes.txt" in str(err.value)


def test_truncated_jpeg(photos):
    data = photos["obama"].read_bytes()
    with pytest.raises(ImageError) as err:
        decode(data[: len(data) // 2], "cut.jpg")
    assert err.value.code == "truncated"
    assert "cut.jpg" in str(err.value)


def test_decompression_bomb():
    side = int(MAX_PIXELS ** 0.5) + 100
    data = _encode(Image.new("1", (side, side)), "PNG")
    assert len(data) < 2_000_000  # tiny on disk, huge in memory
    with pytest.raises(ImageError) as err:
        decode(data, "bomb.png")
    assert err.value.code == "decompression_bomb"
    # the message quotes the studio's limit, not PIL's internal one
    assert f"exceeds the studio's limit of {MAX_PIXELS:,} pixels" in str(err.value)
    huge = _encode(Image.new("1", (3 * side, 3 * side)), "PNG")  # past PIL's own hard limit too
    with pytest.raises(ImageError, match=f"limit of {MAX_PIXELS:,} pixels"):
        decode(huge, "bigger.png")


def test_missing_file(tmp_path):
    with pytest.raises(ImageError) as err:
        load_rgb(tmp_path / "nope.jpg")
    assert err.value.code == "missing_file" and "nope.jpg" in str(err.value)


def test_draft_decode_for_thumbnails(photos):
    full = load_rgb(photos["obama3"])
    small = load_rgb(photos["obama3"], draft_side=600)
    assert (full.width, full.height) == (1434, 2333)
    assert min(small.width, small.height) >= 600 and small.width < full.width  # decoded at a reduced scale
    assert abs(small.width / small.height - full.width / full.height) < 0.01
