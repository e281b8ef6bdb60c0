"""Unit tests for bot.images: input validation and normalisation, output fitting."""

from __future__ import annotations

import io
import random
import struct
import warnings
import zlib
from typing import Any

import pytest
from PIL import ExifTags, Image, ImageChops, ImageCms, PngImagePlugin

from bot.image_types import sniff_mime
from bot.images import (
    FittedImage,
    ImageError,
    ImageTooLarge,
    NotAnImage,
    PreparedImage,
    UnsupportedImage,
    fit_to_budget,
    prepare_input,
)


def encode(image: Image.Image, image_format: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Incompressible pixels, so encoded sizes are large and predictable."""
    channels = len(mode)
    pixels = random.Random(seed).randbytes(size[0] * size[1] * channels)
    return Image.frombytes(mode, size, pixels)


def halves(size: tuple[int, int], first: str, second: str) -> Image.Image:
    """Left half ``first``, right half ``second``: shows rotation and scaling at a glance."""
    image = Image.new("RGB", size, first)
    image.paste(Image.new("RGB", (size[0] // 2, size[1]), second), (size[0] // 2, 0))
    return image


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A greyscale PNG declaring ``width`` x ``height`` with a few bytes of zero pixels.

    Decoding it would fail as truncated (NotAnImage), so ImageTooLarge proves that the
    refusal came from the header alone.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(bytes(64)))
        + png_chunk(b"IEND", b"")
    )


def webp_canvas_bomb(width: int, height: int) -> bytes:
    """An animated WebP of two 16-pixel frames whose declared canvas is ``width`` x ``height``."""
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue")]
    data = bytearray(encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    canvas = data.index(b"VP8X") + 12  # after the chunk header and 4 bytes of flags
    declared = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    data[canvas : canvas + 6] = declared
    return bytes(data)


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return value


# -- prepare_input: what counts as an image -----------------------------------------------------


def test_png_is_recognised_by_its_bytes_whatever_it_was_called() -> None:
    # The caller never passes a file name or content type: a PNG uploaded as "cat.jpg" with
    # content type image/jpeg is still a PNG.
    data = encode(Image.new("RGB", (32, 16), "green"), "PNG")

    prepared = prepare_input(data)

    assert prepared == PreparedImage(data, "image/png", 32, 16)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"please draw me a cat wearing a hat",
        b"GIF89a but then just text",
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        b"\xff\xd8\xff" + b"\x00" * 100,
    ],
    ids=[
        "zero-bytes",
        "text",
        "gif-magic-then-text",
        "png-magic-then-garbage",
        "jpeg-magic-then-0",
    ],
)
def test_bytes_that_are_not_an_image_are_refused(data: bytes) -> None:
    with pytest.raises(NotAnImage):
        prepare_input(data)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "GIF", "WEBP"])
def test_truncated_image_is_refused(image_format: str) -> None:
    data = encode(noise((64, 64)), image_format)

    with pytest.raises(NotAnImage):
        prepare_input(data[: len(data) // 2])


def test_valid_header_followed_by_garbage_is_refused() -> None:
    garbage = random.Random(1).randbytes(4000)
    data = encode(noise((64, 64)), "PNG")
    first_chunk_end = 8 + 25  # signature, then the IHDR chunk

    with pytest.raises(NotAnImage):
        prepare_input(data[:first_chunk_end] + garbage)


@pytest.mark.parametrize(
    ("data", "image_format"),
    [
        (encode(Image.new("RGB", (8, 8)), "BMP"), "BMP"),
        (encode(Image.new("RGB", (8, 8)), "TIFF"), "TIFF"),
        (b"\x00\x00\x00\x18ftypheic" + bytes(64), "HEIC"),
    ],
    ids=["bmp", "tiff", "heic"],
)
def test_images_in_other_formats_are_unsupported(data: bytes, image_format: str) -> None:
    with pytest.raises(UnsupportedImage) as caught:
        prepare_input(data)

    assert caught.value.image_format == image_format
    assert image_format in str(caught.value)


def test_too_many_bytes_are_refused_before_decoding() -> None:
    data = encode(Image.new("RGB", (8, 8)), "PNG")

    with pytest.raises(ImageTooLarge) as caught:
        prepare_input(data, max_bytes=len(data) - 1)

    assert (caught.value.unit, caught.value.actual, caught.value.limit) == (
        "bytes",
        len(data),
        len(data) - 1,
    )


@pytest.mark.parametrize(
    ("data", "pixels"),
    [
        (png_header_only(8_000, 8_000), 64_000_000),  # over our limit only
        (png_header_only(10_000, 10_000), 100_000_000),  # Pillow would warn
        (png_header_only(30_000, 30_000), None),  # Pillow itself refuses: size unknown
        (webp_canvas_bomb(16_000, 10_000), 160_000_000),
    ],
    ids=["png-64MP", "png-100MP", "png-900MP", "webp-160MP"],
)
def test_decompression_bomb_is_refused_from_its_header(data: bytes, pixels: int | None) -> None:
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(ImageTooLarge) as caught:
            prepare_input(data)

    assert (caught.value.unit, caught.value.actual, caught.value.limit) == (
        "pixels",
        pixels,
        50_000_000,
    )
    assert not shown, "Pillow's DecompressionBombWarning must not reach the log"


# -- prepare_input: passthrough ------------------------------------------------------------------


def mpo(*views: Image.Image) -> bytes:
    return encode(views[0], "MPO", save_all=True, append_images=views[1:])


@pytest.mark.parametrize(
    ("data", "mime_type"),
    [
        (encode(halves((40, 30), "red", "blue"), "JPEG", quality=80), "image/jpeg"),
        (encode(Image.new("RGBA", (40, 30), (0, 0, 255, 100)), "PNG"), "image/png"),
        (encode(halves((40, 30), "red", "blue"), "WEBP"), "image/webp"),
        # Phones save JPEGs with extra views (HDR gain maps, depth): an MPO, not an animation.
        (mpo(halves((40, 30), "red", "blue"), Image.new("RGB", (40, 30))), "image/jpeg"),
    ],
    ids=["jpeg", "png-rgba", "webp", "mpo"],
)
def test_image_needing_no_change_is_passed_on_byte_for_byte(data: bytes, mime_type: str) -> None:
    assert prepare_input(data) == PreparedImage(data, mime_type, 40, 30)


# -- prepare_input: normalisation ----------------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored sideways: display rotated 90 degrees clockwise
    data = encode(halves((40, 20), "red", "blue"), "JPEG", exif=exif.tobytes())

    prepared = prepare_input(data)
    upright = decode(prepared.data)

    assert (prepared.width, prepared.height) == upright.size == (20, 40)
    assert close_to(pixel(upright, (10, 5)), (255, 0, 0)), "left half should now be on top"
    assert close_to(pixel(upright, (10, 35)), (0, 0, 255))
    assert ExifTags.Base.Orientation not in upright.getexif(), "would be rotated twice"


def test_metadata_is_stripped_when_re_encoding() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 3  # forces a re-encode
    exif[ExifTags.Base.Artist] = "secret-artist"
    exif[ExifTags.IFD.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (48.0, 51.0, 24.0),
    }
    image = Image.new("RGB", (40, 20), "red")
    data = encode(image, "JPEG", exif=exif.tobytes(), comment=b"secret-comment")
    assert decode(data).getexif().get_ifd(ExifTags.IFD.GPSInfo), "the fixture must carry GPS"

    prepared = prepare_input(data)

    assert b"secret" not in prepared.data
    assert not decode(prepared.data).getexif()


def test_png_text_is_stripped_when_re_encoding() -> None:
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "secret-comment")
    data = encode(Image.new("P", (16, 16)), "PNG", pnginfo=text)  # P forces a re-encode

    prepared = prepare_input(data)

    assert b"secret" not in prepared.data


@pytest.mark.parametrize("image_format", ["GIF", "PNG", "WEBP"])
def test_animation_becomes_its_first_frame(image_format: str) -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ("red", "lime", "blue")]
    data = encode(frames[0], image_format, save_all=True, append_images=frames[1:])
    assert getattr(decode(data), "n_frames", 1) == 3, "the fixture must be animated"

    prepared = prepare_input(data)
    still = decode(prepared.data)

    assert getattr(still, "n_frames", 1) == 1
    assert close_to(pixel(still.convert("RGB"), (16, 16)), (255, 0, 0))


def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 0, 255, 0, 0])
    image.paste(0, (0, 0, 8, 16))
    image.info["transparency"] = 0
    return image


@pytest.mark.parametrize(
    ("image", "image_format", "mode", "probes"),
    [
        # CMYK (0, 255, 255, 0) is red; a model fed raw CMYK would see nonsense colours.
        (Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", "RGB", {(8, 8): (255, 0, 0)}),
        (palette_with_transparency(), "PNG", "RGBA", {(2, 2): (0,) * 4, (12, 2): (255, 0, 0, 255)}),
        (Image.new("LA", (16, 16), (200, 100)), "PNG", "RGBA", {(8, 8): (200, 200, 200, 100)}),
        # 16-bit 40000 is 156 in 8 bits; a naive convert() clips it to white.
        (Image.new("I;16", (16, 16), 40000), "PNG", "RGB", {(8, 8): (156, 156, 156)}),
        (Image.new("1", (16, 16), 1), "PNG", "RGB", {(8, 8): (255, 255, 255)}),
        (Image.new("L", (16, 16), 90), "JPEG", "RGB", {(8, 8): (90, 90, 90)}),
        (Image.new("P", (16, 16)), "GIF", "RGB", {(8, 8): (0, 0, 0)}),
    ],
    ids=["cmyk-jpeg", "p-transparent", "la", "i16", "1-bit", "l-jpeg", "p-gif"],
)
def test_odd_modes_become_rgb_or_rgba(
    image: Image.Image,
    image_format: str,
    mode: str,
    probes: dict[tuple[int, int], tuple[int, ...]],
) -> None:
    prepared = prepare_input(encode(image, image_format))
    normal = decode(prepared.data)

    assert normal.mode == mode
    assert prepared.mime_type == ("image/png" if mode == "RGBA" else "image/jpeg")
    for xy, expected in probes.items():
        assert close_to(pixel(normal, xy), expected), (xy, pixel(normal, xy))


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_oversized_image_is_scaled_down_keeping_its_aspect(image_format: str) -> None:
    data = encode(halves((3000, 1000), "red", "blue"), image_format)

    prepared = prepare_input(data, target_pixels=300_000)
    small = decode(prepared.data)

    assert small.size == (prepared.width, prepared.height)
    assert 0.95 * 300_000 < small.width * small.height <= 300_000
    assert small.width / small.height == pytest.approx(3, rel=0.01)
    assert close_to(pixel(small, (5, 5)), (255, 0, 0))
    assert close_to(pixel(small, (small.width - 5, 5)), (0, 0, 255))


def test_scaled_down_image_keeps_alpha_only_when_it_is_used() -> None:
    see_through = Image.new("RGBA", (800, 800), (255, 0, 0, 0))
    opaque = Image.new("RGBA", (800, 800), (255, 0, 0, 255))

    kept = prepare_input(encode(see_through, "PNG"), target_pixels=10_000)
    dropped = prepare_input(encode(opaque, "PNG"), target_pixels=10_000)

    assert (kept.mime_type, decode(kept.data).mode) == ("image/png", "RGBA")
    assert (dropped.mime_type, decode(dropped.data).mode) == ("image/jpeg", "RGB")


def mutations(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    found = []
    for _ in range(count):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        if rng.random() < 0.3:
            del mutated[rng.randrange(len(mutated)) :]
        found.append(bytes(mutated))
    return found


def test_corrupted_images_only_ever_raise_image_errors() -> None:
    rng = random.Random(7)
    frames = [noise((24, 24), seed=seed) for seed in range(2)]
    seeds = [encode(frames[0], image_format) for image_format in ("PNG", "JPEG", "GIF", "WEBP")]
    seeds.append(encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    seeds.append(encode(palette_with_transparency(), "PNG"))

    outcomes: set[str] = set()
    for seed in seeds:
        for data in mutations(seed, rng, 150):
            for attempt in (prepare_input, lambda data: fit_to_budget(data, 500)):
                try:
                    attempt(data)
                    outcomes.add("ok")
                except ImageError as error:
                    outcomes.add(type(error).__name__)

    assert {"ok", "NotAnImage"} <= outcomes  # the mutations hit both sides


# -- fit_to_budget --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_format", "extension"), [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")]
)
def test_image_that_fits_is_kept_byte_for_byte(image_format: str, extension: str) -> None:
    data = encode(halves((40, 30), "red", "blue"), image_format)

    fitted = fit_to_budget(data, len(data))

    assert fitted == FittedImage(data, f"image/{image_format.lower()}", extension, 40, 30)


def assert_is_upload(fitted: FittedImage, max_bytes: int) -> Image.Image:
    """What Discord gets: at most max_bytes, decodable, the extension its bytes deserve."""
    assert len(fitted.data) <= max_bytes
    assert sniff_mime(fitted.data) == fitted.mime_type
    assert {"image/jpeg": "jpg", "image/webp": "webp"}[fitted.mime_type] == fitted.extension
    image = decode(fitted.data)
    assert image.size == (fitted.width, fitted.height)
    return image


def test_noisy_image_is_squeezed_under_the_budget() -> None:
    data = encode(noise((1024, 1024)), "PNG")  # ~3 MB

    fitted = fit_to_budget(data, 200_000)

    image = assert_is_upload(fitted, 200_000)
    assert image.mode == "RGB"
    assert fitted.width / fitted.height == pytest.approx(1)


def test_alpha_survives_fitting() -> None:
    image = noise((512, 512), "RGB").convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize((512, 512)))  # top see-through
    data = encode(image, "PNG")

    fitted = fit_to_budget(data, len(data) // 4)

    squeezed = assert_is_upload(fitted, len(data) // 4)
    assert fitted.extension == "webp"
    assert squeezed.mode == "RGBA"
    assert pixel(squeezed, (10, 0))[3] < 10
    assert pixel(squeezed, (10, squeezed.height - 1))[3] > 245


def test_gif_is_re_encoded_even_when_it_fits() -> None:
    # Uploads are PNG, JPEG or WebP only, so a still GIF that fits is still converted.
    data = encode(Image.new("P", (16, 16)), "GIF")

    fitted = fit_to_budget(data, 10_000)

    assert_is_upload(fitted, 10_000)


def test_absurd_budget_raises() -> None:
    data = encode(noise((256, 256)), "PNG")

    with pytest.raises(ImageTooLarge) as caught:
        fit_to_budget(data, 50)

    assert caught.value.unit == "bytes"
    assert caught.value.limit == 50
    assert caught.value.actual is not None and caught.value.actual > 50


def test_fit_refuses_non_images() -> None:
    with pytest.raises(NotAnImage):
        fit_to_budget(b"not an image at all", 10_000)


def test_4k_photo_like_png_fits_discord_quickly() -> None:
    # The common case: the model's 4096 x 4096 PNG is too big for Discord's 10 MiB.
    rng = random.Random(3)
    size = (4096, 4096)
    shapes = Image.frombytes("RGB", (64, 64), rng.randbytes(64 * 64 * 3))
    grain = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    photo = ImageChops.add(
        shapes.resize(size, Image.Resampling.BICUBIC), grain.point(lambda v: v // 16)
    )
    data = encode(photo, "PNG", compress_level=0)
    budget = 10 * 2**20

    fitted = fit_to_budget(data, budget)

    assert_is_upload(fitted, budget)
    assert (fitted.width, fitted.height) == size, "a 4K photo fits as JPEG without shrinking"


# Half the PNG: one JPEG fits. 20 kB: only a lower quality or a smaller size does.
@pytest.mark.parametrize("budget", [0.5, 20_000], ids=["first-step", "ladder"])
def test_re_encoded_output_keeps_its_colour_profile_and_drops_other_metadata(
    budget: float,
) -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[ExifTags.Base.Artist] = "secret-artist"
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "secret-comment")
    data = encode(noise((256, 256)), "PNG", icc_profile=profile, exif=exif, pnginfo=text)
    max_bytes = int(len(data) * budget) if budget < 1 else int(budget)

    fitted = fit_to_budget(data, max_bytes)

    image = assert_is_upload(fitted, max_bytes)
    assert fitted.width / fitted.height == pytest.approx(1)
    assert image.info.get("icc_profile") == profile
    assert b"secret" not in fitted.data


def test_re_encoded_output_is_upright() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored sideways: display rotated 90 degrees clockwise
    sideways = halves((400, 200), "red", "blue")
    sideways.paste(noise((400, 40)), (0, 0))  # incompressible, so it must be re-encoded
    data = encode(sideways, "PNG", exif=exif)

    fitted = fit_to_budget(data, len(data) // 2)

    upright = assert_is_upload(fitted, len(data) // 2)
    assert upright.size == (200, 400)
    assert close_to(pixel(upright, (50, 10)), (255, 0, 0)), "left half should now be on top"
    assert close_to(pixel(upright, (50, 390)), (0, 0, 255))
