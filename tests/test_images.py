"""Input checks by the bytes, never by name or declared type; output fitting."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from cogs.depth2img.errors import InvalidInput
from cogs.depth2img.images import inspect_input, prepare_output
from tests.fakes.fake_api import make_png


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_png_jpeg_webp_are_accepted():
    img = Image.new("RGB", (64, 48), (10, 20, 30))
    for fmt in ("PNG", "JPEG", "WEBP"):
        info = inspect_input(encode(img, fmt), max_pixels=10_000_000)
        assert (info.width, info.height) == (64, 48)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"%PDF-1.4 not an image at all", "not a picture"),
        (b"<html><body>hi</body></html>", "not a picture"),
        (make_png()[:400], "damaged"),
        (encode(Image.new("RGB", (8, 8)), "GIF"), "not a PNG, JPEG or WebP"),
        (encode(Image.new("RGB", (8, 8)), "BMP"), "not a PNG, JPEG or WebP"),
    ],
)
def test_bad_bytes_are_refused(data, fragment):
    with pytest.raises(InvalidInput) as info:
        inspect_input(data, max_pixels=10_000_000)
    assert fragment in info.value.reason


def test_too_many_pixels_is_refused_before_decoding():
    big = encode(Image.new("L", (5000, 5000)), "PNG")
    with pytest.raises(InvalidInput) as info:
        inspect_input(big, max_pixels=4_000_000)
    assert "megapixels" in info.value.reason


def test_animated_webp_is_refused():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:])
    with pytest.raises(InvalidInput) as info:
        inspect_input(buf.getvalue(), max_pixels=10_000_000)
    assert "Animated" in info.value.reason


def test_small_output_passes_through_untouched():
    png = make_png(64, 64)
    out = prepare_output(png, limit_bytes=1_000_000, stem="r")
    assert out.data == png and out.filename == "r.png"
