"""Image checks and re-encoding with Pillow. CPU-bound: callers run these off the event loop
(the service's picture threads, or its image worker processes). Nothing here imports discord.py or aiohttp.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from .errors import InvalidInput, OutputUnavailable
from .models import GeneratedImage

ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP"}
OUTPUT_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "MPO"}


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str
    width: int
    height: int
    mode: str


@dataclass(frozen=True, slots=True)
class SourceImage:
    """The member's picture as the API will get it: upright, 8-bit RGB, no metadata, within the
    API's size limit. ``changed`` says whether it differs from the attachment as uploaded (then
    the API must be sent these bytes rather than the attachment's URL)."""

    data: bytes
    mime: str
    width: int
    height: int
    changed: bool
    original: ImageInfo


MIN_SIDE = 64
COMPARISON_HEIGHT = 512
UPLOAD_MAX = 5 * 1024 * 1024  # the API's base64 upload limit


def _human(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB" if n >= 1024 * 1024 else f"{max(1, n // 1024)} KB"


def inspect_input(data: bytes, *, max_pixels: int, max_side: int = 16384) -> ImageInfo:
    """Check, by its bytes, that ``data`` is a still PNG, JPEG or WebP we can use.

    Raises :class:`InvalidInput` with a member-facing reason otherwise. Never trusts the file
    name or the declared content type.
    """
    return _decode_checked(data, max_pixels=max_pixels, max_side=max_side)[1]


def _decode_checked(
    data: bytes, *, max_pixels: int, max_side: int = 16384, decode: bool = True
) -> tuple[Image.Image, ImageInfo]:
    """Open ``data`` with every check of :func:`inspect_input`. With ``decode`` every pixel is decoded
    (catching truncated and corrupt files); without it only the header is read, for a caller that will
    :func:`_verify_or_load` it."""
    if not data:
        raise InvalidInput("The attachment is empty (0 bytes). Attach a PNG, JPEG or WebP picture.")
    with warnings.catch_warnings(), _input_errors():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
        fmt = (img.format or "").upper()
        if fmt not in ACCEPTED_FORMATS:
            raise InvalidInput(
                "That file is not a PNG, JPEG or WebP picture"
                + (f" (it looks like {fmt})." if fmt else ".")
                + " Attach a still image."
            )
        width, height = img.size
        if width < 1 or height < 1 or width > max_side or height > max_side:
            raise InvalidInput(f"The picture is {width}×{height} pixels, which is too large to use.")
        if width * height > max_pixels:
            raise InvalidInput(
                f"The picture is {width}×{height} pixels; the most the bot accepts is "
                f"{max_pixels / 1_000_000:.0f} megapixels. Make it smaller and try again."
            )
        if getattr(img, "n_frames", 1) > 1:
            raise InvalidInput("Animated or multi-frame pictures are not supported. Attach a still image.")
        mode = img.mode
        if decode:
            img.load()  # decodes every pixel: catches truncated and corrupt files
    return img, ImageInfo(format=fmt, width=width, height=height, mode=mode)


@contextlib.contextmanager
def _input_errors() -> Iterator[None]:
    """Pillow's many exceptions for bad input, as one member-facing :class:`InvalidInput`."""
    try:
        yield
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(
            "The picture has far too many pixels to use (it is too large). Make it smaller and try again."
        ) from None
    except UnidentifiedImageError:
        raise InvalidInput(
            "That file is not a picture the bot can read. Attach a PNG, JPEG or WebP image."
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, struct.error):
        raise InvalidInput("The picture is damaged or incomplete. Save it again and re-attach it.") from None


def prepare_output(data: bytes, *, limit_bytes: int, stem: str) -> GeneratedImage:
    """Check that a downloaded output is an image, and make it fit ``limit_bytes``.

    Small enough PNG/JPEG/WebP files are passed through untouched; anything else is re-encoded
    (PNG, then JPEG at falling quality, then downscaled) until it fits.
    """
    return finish_output(data, limit_bytes=limit_bytes, stem=stem)


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
            raise OutputUnavailable(f"output cannot be made smaller than {_human(limit_bytes)}")
        scale *= 0.75


def prepare_source(data: bytes, *, max_pixels: int, max_side: int = 1024) -> SourceImage:
    """Check the attachment (see :func:`inspect_input`) and normalise it for the API: apply the EXIF
    rotation, drop all metadata, convert CMYK, 16-bit, palette and alpha images to 8-bit RGB, and
    downscale so the long side is at most ``max_side`` with both sides multiples of 8."""
    img, info = _decode_checked(data, max_pixels=max_pixels, decode=False)
    if min(info.width, info.height) < MIN_SIDE:
        raise InvalidInput(
            f"The picture is only {info.width}×{info.height} pixels; it needs at least {MIN_SIDE} on each side."
        )
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


# --- plain PNGs, without Pillow: for a thread, with the file write --------------------------------------
# Most pictures are PNGs that need nothing done: for those, checking every chunk's CRC (what Pillow's
# verify() does) is all the work, and zlib.crc32 runs without the GIL. Anything else goes to a worker.

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks a picture may have and still be sent as it is (the rest is metadata, animation or palette).
_PLAIN_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND", b"pHYs", b"gAMA", b"sRGB", b"cHRM"})


@dataclass(frozen=True, slots=True)
class PngFacts:
    width: int
    height: int
    bit_depth: int
    color_type: int
    plain: bool  # only the chunks of _PLAIN_CHUNKS


def png_facts(data: bytes) -> PngFacts | None:
    """The header of a PNG whose every chunk is whole and has a correct CRC, ending with IEND; None
    for anything else (not a PNG, truncated, corrupt: let Pillow say what is wrong)."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    view = memoryview(data)
    pos, end = 8, len(data)
    header: tuple[int, int, int, int] | None = None
    plain = True
    while pos + 12 <= end:
        (length,) = struct.unpack_from(">I", view, pos)
        body_end = pos + 8 + length
        if body_end + 4 > end:
            return None
        kind = bytes(view[pos + 4 : pos + 8])
        (crc,) = struct.unpack_from(">I", view, body_end)
        if zlib.crc32(view[pos + 4 : body_end]) != crc:
            return None
        if kind == b"IHDR" and length == 13:
            width, height, depth, color = struct.unpack_from(">IIBB", view, pos + 8)
            header = (width, height, depth, color)
        plain = plain and kind in _PLAIN_CHUNKS
        if kind == b"IEND":
            if header is None:
                return None
            return PngFacts(*header, plain=plain)
        pos = body_end + 4
    return None


def save_plain_source(
    data: bytes, path: str, *, max_pixels: int, max_side: int = 1024
) -> tuple[str, SourceImage] | None:
    """For a thread: a PNG that can go to the API as it is (8-bit RGB, sides multiples of 8, at most
    ``max_side``, no metadata, every chunk whole) is saved at ``path`` and described; None when the
    picture needs :func:`prepare_source_file` (a worker) to check or convert it."""
    facts = png_facts(data)
    if (
        facts is None
        or not facts.plain
        or (facts.bit_depth, facts.color_type) != (8, 2)
        or facts.width % 8
        or facts.height % 8
        or min(facts.width, facts.height) < MIN_SIDE
        or max(facts.width, facts.height) > max_side
        or facts.width * facts.height > max_pixels
    ):
        return None
    write_atomically(Path(path), data)
    info = ImageInfo(format="PNG", width=facts.width, height=facts.height, mode="RGB")
    return path, SourceImage(b"", "image/png", facts.width, facts.height, False, info)


def joined(pieces: Sequence[bytes]) -> bytes:
    """A download's pieces as one ``bytes`` (for a thread: joining megabytes on the event loop, many
    downloads at a time, stalled it for tens of milliseconds)."""
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def save_fitting_png(
    pieces: Sequence[bytes], *, limit_bytes: int, stem: str, keep_as: str | None
) -> tuple[bytes, GeneratedImage | None]:
    """For a thread: a downloaded output, as received in ``pieces``, joined. An output PNG that fits
    ``limit_bytes`` and is whole is delivered as it is (kept at ``keep_as``.png if asked), and comes
    back as an image that carries no bytes (they are the first item); None: the picture needs
    :func:`finish_output_file` (a worker)."""
    data = joined(pieces)
    if len(data) > limit_bytes:
        return data, None
    facts = png_facts(data)
    if facts is None:
        return data, None
    if keep_as is not None:
        write_atomically(Path(f"{keep_as}.png"), data)
    return data, GeneratedImage(b"", f"{stem}.png", facts.width, facts.height)


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
        write_atomically(final, source.data)
        raw.unlink(missing_ok=True)
    else:
        raw.replace(final)
    return str(final), replace(source, data=b"")


def finish_output_file(path: str, *, limit_bytes: int, stem: str, keep_as: str | None) -> GeneratedImage:
    """:func:`finish_output` for an output downloaded to ``path``. With ``keep_as``, the image to
    deliver is kept at ``keep_as`` plus its extension; the download file is removed either way. An
    output delivered as it is comes back without its bytes (``data=b""``: the caller has them)."""
    src = Path(path)
    try:
        data = src.read_bytes()
        image = finish_output(data, limit_bytes=limit_bytes, stem=stem)
    except BaseException:
        src.unlink(missing_ok=True)
        raise
    as_is = image.data is data
    if keep_as is not None:
        dest = Path(f"{keep_as}.{image.filename.rsplit('.', 1)[-1]}")
        if as_is:
            src.replace(dest)
        else:
            write_atomically(dest, image.data)
    src.unlink(missing_ok=True)
    return replace(image, data=b"") if as_is else image


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


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


def finish_output(data: bytes, *, limit_bytes: int, stem: str) -> GeneratedImage:
    """Check that a downloaded output is an image and make it fit ``limit_bytes``. A PNG that fits is
    checked chunk by chunk (CRCs) and passed through untouched; anything else is decoded, and
    re-encoded (PNG, then JPEG at falling quality, then downscaled) when it does not fit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = (img.format or "").upper()
            if fmt not in OUTPUT_FORMATS:
                raise OutputUnavailable(f"output is not an image ({fmt or 'unknown'})")
            width, height = img.size
            if fmt == "PNG" and len(data) <= limit_bytes:
                img.verify()
                return GeneratedImage(data=data, filename=f"{stem}.png", width=width, height=height)
            img.load()
    except OutputUnavailable:
        raise
    except Exception as exc:  # Pillow raises many types for bad data; all mean "not an image"
        raise OutputUnavailable("output is not a readable image") from exc
    if len(data) <= limit_bytes and fmt in {"JPEG", "WEBP"}:
        ext = {"JPEG": "jpg", "WEBP": "webp"}[fmt]
        return GeneratedImage(data=data, filename=f"{stem}.{ext}", width=width, height=height)
    return _fit(img.convert("RGBA" if "A" in img.getbands() else "RGB"), limit_bytes=limit_bytes, stem=stem)


def before_after(source: bytes, result: bytes, *, limit_bytes: int, stem: str) -> GeneratedImage:
    """The source and the result side by side, labelled, as one JPEG that fits ``limit_bytes``."""
    with Image.open(io.BytesIO(source)) as a, Image.open(io.BytesIO(result)) as b:
        a.draft("RGB", (a.width * COMPARISON_HEIGHT // max(1, a.height), COMPARISON_HEIGHT))
        left = _scale_to_height(_to_rgb(ImageOps.exif_transpose(a)), COMPARISON_HEIGHT)
        right = _scale_to_height(_to_rgb(b), COMPARISON_HEIGHT)
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
    raise OutputUnavailable("comparison image too large")


def warm_up() -> None:
    """Imported and ready: called once per worker process at start-up."""
    Image.init()
