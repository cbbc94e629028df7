"""Image checks and re-encoding with Pillow. CPU-bound: callers run these off the event loop
(the service's picture threads, or its image worker processes). Nothing here imports discord.py or aiohttp.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from .errors import InvalidInput, OutputUnavailable
from .models import GeneratedImage, ImageInfo, SourceImage
from .pngs import MIN_SIDE, write_atomically

ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP"}
OUTPUT_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "MPO"}


COMPARISON_HEIGHT = 512
# A progressive JPEG is decoded scan by scan, each over the whole picture, and nothing in the format
# bounds their number: a crafted one holds tens of thousands of empty scans in a few MB (a 2048x2048
# one of 20 000, 340 KB, took 4.8 s to decode here; minutes at 40 MP). Encoders write about ten
# (libjpeg's progressive script: 10 for colour, 6 for grey; mozjpeg's optimised ones a few more), so
# more than this many is refused before any is decoded; at 40 MP, 500 scans decode in about 1.2 s.
# (libjpeg-turbo has such a limit, TJPARAM_SCANLIMIT / djpeg -maxscans, which Pillow does not reach.)
MAX_JPEG_SCANS = 500
UPLOAD_MAX = 5 * 1024 * 1024  # the API's base64 upload limit


def _human(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB" if n >= 1024 * 1024 else f"{max(1, n // 1024)} KB"


def _decode_checked(
    data: bytes, *, max_pixels: int, max_side: int = 16384, decode: bool = True
) -> tuple[Image.Image, ImageInfo]:
    """Check, by its bytes, that ``data`` is a still PNG, JPEG or WebP we can use (never trusting the file
    name or the declared content type), and open it; raises :class:`InvalidInput` with a member-facing
    reason otherwise. With ``decode`` every pixel is decoded
    (catching truncated and corrupt files); without it only the header is read, for a caller that will
    :func:`_verify_or_load` it."""
    if not data:
        raise InvalidInput("input.empty_file")
    with warnings.catch_warnings(), _input_errors():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
        fmt = (img.format or "").upper()
        if fmt not in ACCEPTED_FORMATS:
            raise InvalidInput(
                "input.not_a_picture_format" if fmt else "input.not_a_picture", format=fmt or ""
            )
        width, height = img.size
        if width < 1 or height < 1 or width > max_side or height > max_side:
            raise InvalidInput("input.too_large", size=f"{width}×{height}")
        if width * height > max_pixels:
            raise InvalidInput(
                "input.too_many_pixels", size=f"{width}×{height}", megapixels=round(max_pixels / 1_000_000)
            )
        if getattr(img, "n_frames", 1) > 1:
            raise InvalidInput("input.animated")
        if too_many_scans(fmt, data):
            raise InvalidInput("input.too_slow")
        mode = img.mode
        if decode:
            img.load()  # decodes every pixel: catches truncated and corrupt files
    return img, ImageInfo(format=fmt, width=width, height=height, mode=mode)


def too_many_scans(fmt: str, data: bytes) -> bool:
    """Whether a JPEG holds more than :data:`MAX_JPEG_SCANS` scans. Counted by their markers (FF DA):
    inside a scan's data an FF byte is always followed by 00 or a restart marker, so each FF DA starts
    a scan (an EXIF thumbnail's few included). About 1 ms per MB."""
    return fmt in ("JPEG", "MPO") and data.count(b"\xff\xda") > MAX_JPEG_SCANS


@contextlib.contextmanager
def _input_errors() -> Iterator[None]:
    """Pillow's many exceptions for bad input, as one member-facing :class:`InvalidInput`."""
    try:
        yield
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput("input.far_too_many_pixels") from None
    except UnidentifiedImageError:
        raise InvalidInput("input.unreadable") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, struct.error):
        raise InvalidInput("input.damaged") from None


def _fit(frame: Image.Image, *, limit_bytes: int, stem: str) -> GeneratedImage:
    buf = io.BytesIO()
    frame.save(buf, format="PNG", optimize=True)
    if buf.tell() <= limit_bytes:
        return GeneratedImage(buf.getvalue(), f"{stem}.png", frame.width, frame.height)
    rgb = frame.convert("RGB")
    scale = 1.0
    while True:
        current = (
            rgb
            if scale == 1.0
            else rgb.resize(
                (max(1, int(rgb.width * scale)), max(1, int(rgb.height * scale))), Image.Resampling.LANCZOS
            )
        )
        for quality in (92, 85, 75, 65):
            buf = io.BytesIO()
            current.save(buf, format="JPEG", quality=quality, optimize=True)
            if buf.tell() <= limit_bytes:
                return GeneratedImage(buf.getvalue(), f"{stem}.jpg", current.width, current.height)
        if current.width <= 64 or current.height <= 64:
            raise OutputUnavailable(
                f"output cannot be made smaller than {_human(limit_bytes)}", unusable=True
            )
        scale *= 0.75


def prepare_source(data: bytes, *, max_pixels: int, max_side: int = 1024) -> SourceImage:
    """Check the attachment (see :func:`_decode_checked`) and normalise it for the API: apply the EXIF
    rotation, drop all metadata, convert CMYK, 16-bit, palette and alpha images to 8-bit RGB, and
    downscale so the long side is at most ``max_side`` with both sides multiples of 8."""
    img, info = _decode_checked(data, max_pixels=max_pixels, decode=False)
    if min(info.width, info.height) < MIN_SIDE:
        raise InvalidInput("input.too_small", size=f"{info.width}×{info.height}", min=MIN_SIDE)
    plain = (
        info.format == "PNG"
        and info.mode == "RGB"
        and info.width % 8 == 0
        and info.height % 8 == 0
        and max(info.width, info.height) <= max_side
        and not img.info.keys() - {"dpi", "gamma", "srgb", "aspect", "chromaticity"}  # no text, exif, icc
    )
    if plain:
        # Nothing to change: check every chunk's CRC (truncation and corruption) without decoding.
        with _input_errors():
            img.verify()
        return SourceImage(data, "image/png", info.width, info.height, False, info)
    with _input_errors():
        img.load()
    exif = img.getexif()
    has_meta = bool(img.info.get("exif")) or bool(getattr(img, "text", None)) or bool(exif)
    rotated = exif.get(0x0112, 1) not in (1, None)
    upright = ImageOps.exif_transpose(img) if rotated else img
    rgb = _to_rgb(upright)
    changed = has_meta or rotated or info.mode != "RGB" or info.format not in ("PNG", "JPEG")
    width, height = rgb.size
    scale = min(1.0, max_side / max(width, height))
    new_w = max(8, int(width * scale) // 8 * 8)
    new_h = max(8, int(height * scale) // 8 * 8)
    if (new_w, new_h) != (width, height):
        rgb = rgb.resize((new_w, new_h), Image.Resampling.LANCZOS)
        changed = True
    if not changed:
        mime = "image/png" if info.format == "PNG" else "image/jpeg"
        return SourceImage(data, mime, width, height, False, info)
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    mime = "image/png"
    if buf.tell() > UPLOAD_MAX * 0.9:
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=92)
        mime = "image/jpeg"
    return SourceImage(buf.getvalue(), mime, rgb.width, rgb.height, True, info)


# --- the same, for image worker processes: pictures travel as files, not through the process pipe ---
# (Copying a 1.5 MB picture to a worker process and back through the pool's pipe cost the bot ~7 ms of
# CPU per picture; writing a file it keeps anyway and passing its path costs ~0.5 ms.)


def prepare_source_file(path: str, *, max_pixels: int, max_side: int = 1024) -> tuple[str, SourceImage]:
    """:func:`prepare_source` for an attachment saved at ``path`` (``<stem>.upload``). The picture to
    send ends up in ``<stem>.png`` or ``<stem>.jpg``, whose path is returned with the image's facts;
    the returned image carries no bytes (they stay on disk). A refused picture's file is removed."""
    raw = Path(path)
    try:
        source = prepare_source(raw.read_bytes(), max_pixels=max_pixels, max_side=max_side)
    except BaseException:
        raw.unlink(missing_ok=True)
        raise
    final = raw.with_suffix(".png" if source.mime == "image/png" else ".jpg")
    if source.changed:
        try:
            write_atomically(final, source.data)
        finally:  # (written or not, as on a full disk: the upload is not left behind)
            raw.unlink(missing_ok=True)
    else:
        raw.replace(final)
    return str(final), replace(source, data=b"")


def finish_output_file(path: str, *, limit_bytes: int, max_pixels: int, stem: str) -> GeneratedImage:
    """:func:`finish_output` for an output downloaded to ``path``. An output delivered as it is stays
    there and comes back without its bytes (``data=b""``: the caller reads them from the file, rather
    than have them sent back); otherwise the file is removed."""
    src = Path(path)
    untouched = False
    try:
        data = src.read_bytes()
        image = finish_output(data, limit_bytes=limit_bytes, max_pixels=max_pixels, stem=stem)
        untouched = image.data is data
    finally:
        if not untouched:
            src.unlink(missing_ok=True)
    return replace(image, data=b"") if untouched else image


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        img = img.convert("I").point(lambda v: v / 256).convert("L")
    elif img.mode == "F":
        img = img.convert("L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("RGB") if img.mode != "RGB" else img.copy()


def _scale_to_height(img: Image.Image, height: int) -> Image.Image:
    width = max(1, img.width * height // img.height)
    return img.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)


def finish_output(data: bytes, *, limit_bytes: int, max_pixels: int, stem: str) -> GeneratedImage:
    """Check that a downloaded output is an image of at most ``max_pixels`` (by its header, before a
    pixel is decoded) and make it fit ``limit_bytes``. A PNG that fits is checked chunk by chunk (CRCs)
    and passed through untouched; anything else is decoded, and re-encoded (PNG, then JPEG at falling
    quality, then downscaled) when it does not fit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = (img.format or "").upper()
            if fmt not in OUTPUT_FORMATS:
                raise OutputUnavailable(f"output is not an image ({fmt or 'unknown'})", unusable=True)
            width, height = img.size
            if width * height > max_pixels:
                raise OutputUnavailable(f"output of {width}x{height} pixels, over the limit", unusable=True)
            if too_many_scans(fmt, data):
                raise OutputUnavailable(f"output of more than {MAX_JPEG_SCANS} JPEG scans", unusable=True)
            if fmt == "PNG" and len(data) <= limit_bytes and not _maybe_blank(data, width, height):
                img.verify()
                return GeneratedImage(data=data, filename=f"{stem}.png", width=width, height=height)
            img.load()
            blank = _is_blank(img)
            if fmt == "PNG" and len(data) <= limit_bytes:
                return GeneratedImage(
                    data=data, filename=f"{stem}.png", width=width, height=height, blank=blank
                )
    except OutputUnavailable:
        raise
    except Exception as exc:  # Pillow raises many types for bad data; all mean "not an image"
        raise OutputUnavailable("output is not a readable image", unusable=True) from exc
    if len(data) <= limit_bytes and fmt in {"JPEG", "WEBP"}:
        ext = {"JPEG": "jpg", "WEBP": "webp"}[fmt]
        return GeneratedImage(data=data, filename=f"{stem}.{ext}", width=width, height=height, blank=blank)
    fitted = _fit(img.convert("RGBA" if "A" in img.getbands() else "RGB"), limit_bytes=limit_bytes, stem=stem)
    return replace(fitted, blank=blank)


def _maybe_blank(data: bytes, width: int, height: int) -> bool:
    """Whether a PNG is small enough for its pixels to be one flat colour (a picture compresses to
    far more than a byte per 50 pixels): only those are decoded to be sure; the rest pass untouched."""
    return len(data) * 50 < width * height


def looks_blank(data: bytes, *, max_pixels: int) -> bool:
    """Whether a kept picture (a result brought back or posted late: whether it was blank is not
    kept) is one flat colour, as :func:`finish_output` found it. Decoded only when its size leaves that
    possible (see :func:`_maybe_blank`), and never when it is over ``max_pixels`` by its header; a
    picture that cannot be read is not called blank."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > max_pixels or not _maybe_blank(data, width, height):
                    return False
                img.draft("RGB", (64, 64))  # (a JPEG is decoded at a fraction of its size)
                return _is_blank(img)
    except Exception:  # Pillow raises many types for bad data
        return False


def _is_blank(img: Image.Image) -> bool:
    """One flat colour (every channel within a few levels): a safety checker's replacement."""
    small = img.convert("RGB")
    small.thumbnail((64, 64))
    extrema: Any = small.getextrema()  # ((low, high) per channel) for an RGB picture
    return all(high - low <= 6 for low, high in extrema)


def before_after(
    source: bytes, result: bytes, *, limit_bytes: int, max_pixels: int, stem: str
) -> GeneratedImage:
    """The source and the result side by side, labelled, as one JPEG that fits ``limit_bytes``. Either
    picture over ``max_pixels`` (by its header: a result kept before outputs were checked may be one),
    or unreadable, raises :class:`OutputUnavailable` (before anything is decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source)) as a, Image.open(io.BytesIO(result)) as b:
                if a.width * a.height > max_pixels or b.width * b.height > max_pixels:
                    raise OutputUnavailable(
                        "a picture of the comparison is over the pixel limit", unusable=True
                    )
                a.draft("RGB", (a.width * COMPARISON_HEIGHT // max(1, a.height), COMPARISON_HEIGHT))
                left = _scale_to_height(_to_rgb(ImageOps.exif_transpose(a)), COMPARISON_HEIGHT)
                right = _scale_to_height(_to_rgb(b), COMPARISON_HEIGHT)
    except OutputUnavailable:
        raise
    except Exception as exc:  # Pillow raises many types for bad data (a bomb, a truncated file, ...)
        raise OutputUnavailable("the comparison could not be made", unusable=True) from exc
    return _side_by_side(left, right, limit_bytes=limit_bytes, stem=stem)


def _side_by_side(left: Image.Image, right: Image.Image, *, limit_bytes: int, stem: str) -> GeneratedImage:
    gap, bar = 8, 26
    canvas = Image.new("RGB", (left.width + gap + right.width, left.height + bar), (24, 24, 28))
    canvas.paste(left, (0, bar))
    canvas.paste(right, (left.width + gap, bar))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 7), "BEFORE", fill=(230, 230, 230))
    draw.text((left.width + gap + 8, 7), "AFTER", fill=(230, 230, 230))
    for quality in (85, 70, 55):
        buf = io.BytesIO()
        canvas.save(buf, format="JPEG", quality=quality)
        if buf.tell() <= limit_bytes:
            return GeneratedImage(buf.getvalue(), f"{stem}.jpg", canvas.width, canvas.height)
    raise OutputUnavailable("comparison image too large", unusable=True)


def warm_up() -> None:
    """Imported and ready: called once per worker process at start-up."""
    Image.init()
