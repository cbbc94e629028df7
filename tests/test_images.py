"""Input checks by the bytes, never by name or declared type; output fitting."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from cogs.depth2img.errors import InvalidInput, OutputUnavailable
from cogs.depth2img.images import before_after, finish_output, looks_blank, prepare_source
from cogs.depth2img.pngs import fitting_png, plain_source
from tests.fakes.fake_api import bomb_png, make_png


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_png_jpeg_webp_are_accepted():
    img = Image.new("RGB", (96, 64), (10, 20, 30))
    for fmt in ("PNG", "JPEG", "WEBP"):
        source = prepare_source(encode(img, fmt), max_pixels=10_000_000)
        assert (source.original.format, source.width, source.height) == (fmt, 96, 64)


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
        prepare_source(data, max_pixels=10_000_000)
    assert fragment in info.value.reason


def test_too_many_pixels_is_refused_before_decoding():
    big = encode(Image.new("L", (5000, 5000)), "PNG")
    with pytest.raises(InvalidInput) as info:
        prepare_source(big, max_pixels=4_000_000)
    assert "megapixels" in info.value.reason


def test_animated_webp_is_refused():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:])
    with pytest.raises(InvalidInput) as info:
        prepare_source(buf.getvalue(), max_pixels=10_000_000)
    assert "Animated" in info.value.reason


def test_small_output_passes_through_untouched():
    png = make_png(64, 64)
    out = finish_output(png, limit_bytes=1_000_000, max_pixels=40_000_000, stem="r")
    assert out.data == png and out.filename == "r.png"


# --- the plain-PNG fast path (no Pillow; on the spot or in a thread) must accept exactly what needs no work


def test_a_plain_png_is_kept_as_it_is():
    data = encode(Image.new("RGB", (128, 64), (1, 2, 3)), "PNG")
    source = plain_source(data, max_pixels=10_000_000)
    assert source is not None
    assert (source.width, source.height, source.mime, source.changed) == (128, 64, "image/png", False)


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(Image.new("RGBA", (128, 64)), "PNG"),  # alpha: must be flattened
        lambda: encode(Image.new("RGB", (130, 64)), "PNG"),  # sides not multiples of 8
        lambda: encode(Image.new("RGB", (2048, 64)), "PNG"),  # too large for the API
        lambda: encode(Image.new("RGB", (128, 32)), "PNG"),  # too small
        lambda: encode(Image.new("I;16", (128, 64)), "PNG"),  # 16-bit
        lambda: encode(Image.new("P", (128, 64)), "PNG"),  # palette
        lambda: _with_text(encode(Image.new("RGB", (128, 64)), "PNG")),  # metadata to strip
        lambda: encode(Image.new("RGB", (128, 64)), "PNG")[:-20],  # truncated
        lambda: _corrupt(encode(Image.new("RGB", (128, 64)), "PNG")),  # a bad CRC
        lambda: encode(Image.new("RGB", (128, 64)), "JPEG"),  # not a PNG
        lambda: encode(
            Image.new("RGB", (128, 64)),
            "PNG",
            save_all=True,
            append_images=[Image.new("RGB", (128, 64), (9, 9, 9))],
        ),  # animated (APNG)
    ],
)
def test_anything_else_goes_to_the_worker(make):
    assert plain_source(make(), max_pixels=10_000_000) is None


def test_a_whole_png_output_that_fits_passes_untouched():
    data = make_png()
    pieces = [data[:100], data[100:1000], data[1000:]]  # as downloaded
    limits = {"max_pixels": 40_000_000, "stem": "x"}
    joined, image = fitting_png(pieces, limit_bytes=len(data), **limits)
    assert joined == data
    assert image is not None and image.data == b"" and image.filename == "x.png"
    assert fitting_png([data], limit_bytes=len(data) - 1, **limits) == (data, None)
    assert fitting_png([data[:-30]], limit_bytes=len(data), **limits)[1] is None


def test_an_output_over_the_pixel_limit_is_refused_before_it_is_decoded():
    """400 megapixels in a few kilobytes: refused by the PNG's header on the fast path (which used to
    pass it untouched, as it is whole and small), and by Pillow's header read on the worker's path."""
    bomb = bomb_png()
    assert len(bomb) < 1_000_000
    with pytest.raises(OutputUnavailable, match="20000x20000"):
        fitting_png([bomb], limit_bytes=25 * 1024 * 1024, max_pixels=40_000_000, stem="x")
    with pytest.raises(OutputUnavailable):
        finish_output(bomb, limit_bytes=25 * 1024 * 1024, max_pixels=40_000_000, stem="x")
    small = bomb_png(100, 100)
    with pytest.raises(OutputUnavailable, match="100x100"):
        finish_output(small, limit_bytes=25 * 1024 * 1024, max_pixels=9_999, stem="x")


def test_a_kept_picture_is_told_blank_by_its_pixels_without_decoding_bombs():
    """Whether a kept result is blank is not kept: /depth2img-show and late posts tell it by the pixels,
    as the result's own check did (a flat colour, within a few levels), in any format it was kept in.
    A picture over the pixel limit is not decoded (bomb_png is flat black: decoded, it would count as
    blank); one that cannot be read is not called blank."""
    flat = Image.new("RGB", (512, 512), (3, 4, 5))
    for fmt in ("PNG", "JPEG", "WEBP"):
        assert looks_blank(encode(flat, fmt), max_pixels=10_000_000), fmt
    assert looks_blank(encode(Image.new("RGB", (512, 512), (200, 200, 200)), "PNG"), max_pixels=10_000_000)
    for fmt in ("PNG", "JPEG"):
        assert not looks_blank(
            encode(Image.open(io.BytesIO(make_png(512, 512, noise=True))), fmt), max_pixels=10**7
        )
    half = Image.new("RGB", (512, 512))
    half.paste((255, 255, 255), (0, 0, 256, 512))  # (compresses as well as a flat one: decoded, not blank)
    assert not looks_blank(encode(half, "PNG"), max_pixels=10_000_000)
    assert looks_blank(bomb_png(100, 100), max_pixels=10_000)
    assert not looks_blank(bomb_png(100, 100), max_pixels=9_999)
    assert not looks_blank(bomb_png(), max_pixels=40_000_000)
    for unreadable in (b"", b"not a picture", encode(flat, "PNG")[:60]):
        assert not looks_blank(unreadable, max_pixels=10_000_000)


def test_before_after_refuses_a_bomb_and_anything_unreadable():
    """Whatever is kept as a job's result (an old bot kept outputs unchecked), the comparison ends in
    OutputUnavailable, never in another exception (which left the button "thinking..." for ever)."""
    source = make_png()
    for result in (bomb_png(), bomb_png(10_000, 10_000), b"not a picture", make_png()[:200]):
        with pytest.raises(OutputUnavailable):
            before_after(source, result, limit_bytes=8 << 20, max_pixels=40_000_000, stem="c")
    assert before_after(source, make_png(), limit_bytes=8 << 20, max_pixels=40_000_000, stem="c").data


def _tiny_chunks(png: bytes, every: int = 1) -> bytes:
    """The same picture with its image data split into IDAT chunks of ``every`` bytes (a valid PNG)."""
    import struct
    import zlib

    chunks, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack_from(">I", png, pos)
        chunks.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]))
        pos += 12 + length

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    stream = b"".join(body for kind, body in chunks if kind == b"IDAT")
    idats = [chunk(b"IDAT", stream[i : i + every]) for i in range(0, len(stream), every)]
    head = [chunk(k, b) for k, b in chunks if k not in (b"IDAT", b"IEND")]
    return png[:8] + b"".join(head) + b"".join(idats) + chunk(b"IEND", b"")


def test_a_picture_of_many_tiny_chunks_is_checked_in_a_thread_not_on_the_loop():
    """Small pictures are checked where they are asked for (cheap), but a crafted one of thousands of
    tiny chunks would hold the event loop: past the chunk budget the check gives up and the caller
    sends it to a thread, where it gets the same verdict; an output keeps its joined bytes."""
    from cogs.depth2img import pngs  # (as it is now: a test of the extension's reload loads it again)

    data = _tiny_chunks(encode(Image.new("RGB", (128, 64), (1, 2, 3)), "PNG"), every=1)
    assert data.count(b"IDAT") > 50
    facts = pngs.png_facts(data)
    assert facts is not None and (facts.width, facts.height, facts.plain) == (128, 64, True)
    with pytest.raises(pngs.TooManyChunks):
        pngs.png_facts(data, max_chunks=50)
    with pytest.raises(pngs.TooManyChunks):
        pngs.plain_source(data, max_pixels=10_000_000, max_chunks=50)
    assert pngs.plain_source(data, max_pixels=10_000_000) is not None
    pieces = [data[:10], data[10:]]
    with pytest.raises(pngs.TooManyChunks):
        pngs.fitting_png(pieces, limit_bytes=len(data), max_pixels=40_000_000, stem="x", max_chunks=50)
    assert pieces == [data]  # (joined once, kept for the thread's try)


async def test_pictures_over_the_chunk_budget_get_the_same_verdict(tmp_path):
    """Through :class:`Pictures`: a member's picture and an output of more chunks than may be checked
    on the spot (small in bytes, so otherwise checked there) give up there (the test above) and are
    checked in the picture thread: the same plain picture as the ordinary encoding of the pixels."""
    import os

    from cogs.depth2img.core.pictures import CHECK_HERE_MAX_BYTES, CHECK_HERE_MAX_CHUNKS, Pictures

    noise = Image.frombytes("RGB", (128, 64), os.urandom(128 * 64 * 3))
    plain = encode(noise, "PNG")
    crafted = _tiny_chunks(plain, every=4)
    assert crafted.count(b"IDAT") > CHECK_HERE_MAX_CHUNKS and len(crafted) < CHECK_HERE_MAX_BYTES
    pics = Pictures(tmp_path, image_workers=0, picture_threads=1)
    try:
        await pics.start()
        for data in (plain, crafted):
            path, source = await pics.keep_source("j", data, max_pixels=10_000_000, max_side=1024)
            assert (source.width, source.height, source.changed) == (128, 64, False)
            assert await pics.read(path) == data
            (image,) = await pics.finish_outputs(
                "j", [[data[:7], data[7:]]], limit_bytes=len(data), max_pixels=40_000_000
            )
            assert (image.data, image.width, image.filename) == (data, 128, "depth2img-j-0.png")
    finally:
        pics.close()


@pytest.mark.parametrize("workers", [0, 1])
async def test_every_kind_of_output_comes_back_whole_and_leaves_no_file(tmp_path, workers):
    """Through :class:`Pictures`, in a picture thread or an image worker process: each kind of output
    comes back as a whole picture within the limit, byte for byte the download when it is passed on as
    it came, and no download file stays behind. (A JPEG, a WebP and a flat PNG passed on as they came
    used to come back empty from the worker: the bot had let their bytes go.)"""
    from cogs.depth2img.core.pictures import Pictures

    noise = Image.open(io.BytesIO(make_png(256, 256, noise=True)))
    flat = Image.new("RGB", (256, 256), (40, 40, 40))
    limit = 300_000
    kinds = {  # name: (output, passed on as it came)
        "png": (encode(noise, "PNG"), True),
        "flat png": (encode(flat, "PNG"), True),
        "jpeg": (encode(noise, "JPEG"), True),
        "webp": (encode(noise, "WEBP"), True),
        "gif": (encode(flat, "GIF"), False),
        "bmp": (encode(flat, "BMP"), False),
        "png over the limit": (encode(Image.open(io.BytesIO(make_png(512, 512, noise=True))), "PNG"), False),
    }
    pics = Pictures(tmp_path, image_workers=workers, picture_threads=1)
    try:
        await pics.start()
        for name, (data, untouched) in kinds.items():
            assert len(data) <= limit or not untouched, name
            (image,) = await pics.finish_outputs(
                "j", [[data[:50], data[50:]]], limit_bytes=limit, max_pixels=40_000_000
            )
            assert 0 < len(image.data) <= limit, name
            assert (image.data == data) is untouched, name
            with Image.open(io.BytesIO(image.data)) as back:
                back.load()
                assert back.size == (image.width, image.height), name
            assert image.blank is (name in ("flat png", "gif", "bmp")), name
            assert list(pics.results_dir.iterdir()) == [], name
    finally:
        pics.close()


@pytest.mark.parametrize("workers", [0, 1])
async def test_every_kind_of_member_picture_is_kept_whole_and_leaves_no_upload_file(tmp_path, workers):
    """Through :class:`Pictures`: each kind of member picture is kept as a whole picture of the size
    it reports, within the API's side, in the format it names, and nothing else stays in the folder;
    a refused one leaves nothing at all."""
    # (as they are now: a test of the extension's reload loads them again)
    from cogs.depth2img.core.pictures import Pictures
    from cogs.depth2img.errors import InvalidInput

    noise = Image.open(io.BytesIO(make_png(256, 128, noise=True)))
    kinds = {
        "plain png": encode(noise, "PNG"),
        "rgba png": encode(noise.convert("RGBA"), "PNG"),
        "16-bit png": encode(Image.new("I;16", (128, 64)), "PNG"),
        "jpeg": encode(noise, "JPEG"),
        "webp": encode(noise, "WEBP"),
        "large png": encode(Image.open(io.BytesIO(make_png(2048, 1024, noise=True))), "PNG"),
    }
    pics = Pictures(tmp_path, image_workers=workers, picture_threads=1)
    try:
        await pics.start()
        for n, (name, data) in enumerate(kinds.items()):
            path, source = await pics.keep_source(f"j{n}", data, max_pixels=10_000_000, max_side=1024)
            kept = await pics.read(path)
            with Image.open(io.BytesIO(kept)) as back:
                back.load()
                assert (back.width, back.height) == (source.width, source.height), name
                assert max(back.size) <= 1024, name
                assert Image.MIME[back.format] == source.mime, name
        names = sorted(f.name for f in pics.sources_dir.iterdir())
        assert len(names) == len(kinds) and not [x for x in names if not x.endswith((".png", ".jpg"))], names
        with pytest.raises(InvalidInput):
            await pics.keep_source("bad", kinds["jpeg"][:300], max_pixels=10_000_000, max_side=1024)
        assert not [f for f in pics.sources_dir.iterdir() if f.name.startswith("bad")]
    finally:
        pics.close()


def _with_text(png: bytes) -> bytes:
    import struct
    import zlib

    body = b"tEXt" + b"Comment\x00hello"
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:33] + chunk + png[33:]  # after the signature and IHDR


def _corrupt(png: bytes) -> bytes:
    at = len(png) // 2
    return png[:at] + bytes([png[at] ^ 0xFF]) + png[at + 1 :]


@pytest.mark.parametrize("size", [10, 300_000, 1_500_001, 4 * 1024 * 1024 + 7])
def test_pictures_are_written_whole_and_private(tmp_path, size):
    """Large pictures bypass the page cache (O_DIRECT) where the system allows it: the file must
    still hold exactly the bytes, readable by the bot's user only."""
    import os
    import stat

    from cogs.depth2img.pngs import write_atomically

    data = os.urandom(size)
    for _ in range(2):  # the second write reuses the thread's aligned buffer and replaces the file
        write_atomically(tmp_path / "p.png", data)
        assert (tmp_path / "p.png").read_bytes() == data
    assert stat.S_IMODE((tmp_path / "p.png").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


def test_a_picture_is_written_where_its_folder_was_removed(tmp_path):
    """The picture folders are made at start; one removed since (by hand, by a clean-up) is made again,
    private, for a small and a large (page-cache-bypassing) picture alike."""
    import os
    import stat

    from cogs.depth2img.pngs import write_atomically

    for size in (10, 1_500_001):
        folder = tmp_path / f"gone-{size}" / "sources"
        data = os.urandom(size)
        write_atomically(folder / "p.png", data)
        assert (folder / "p.png").read_bytes() == data
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
