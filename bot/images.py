"""Pillow work on images: recognise, validate and normalise inputs, fit outputs to a byte budget."""

from __future__ import annotations

import io
import math
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyvips
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from bot.image_types import sniff_mime

MAX_INPUT_BYTES = 25 * 2**20
MAX_INPUT_PIXELS = 50_000_000
# 2048 x 2048: the model's 2K output tier, so an edit can keep every detail it is shown, while a
# JPEG of it is ~1-3 MB, so several reference images keep the request small and quick to upload.
# More pixels would cost upload time and request size for little: the model sees each image
# through a fixed per-image token budget (media_resolution) anyway.
TARGET_INPUT_PIXELS = 4096 * 4096 // 4

# What users post and what Pillow decodes with its best-fuzzed code. Other formats Pillow knows
# are identified (to name them in UnsupportedImage) but never decoded.
_INPUT_FORMATS = ("PNG", "JPEG", "GIF", "WEBP")
# Sniffed types that may be passed on as they are, with the file extension Discord shows.
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
# WebP's limit (JPEG's is 65535); a longer side only comes from a hostile or absurd image.
_MAX_SIDE = 16383
_INPUT_JPEG_QUALITY = 92
# Output ladder. Opaque images become JPEG: on this machine libjpeg-turbo encodes 16 MP in
# ~0.06 s against 0.6-1.4 s for WebP, at a similar size for photo-like images, and every viewer
# and editor opens a .jpg. WebP only where JPEG would lose the alpha channel.
_QUALITIES = (90, 85, 80, 70, 60)
_SHRINK_STEP = 0.75
_MIN_SIDE = 64
_ENCODER_OPTIONS: dict[str, dict[str, int]] = {
    # Level 3 was ~3x faster than the default 6 for ~10% more bytes on a noisy 4 MP RGBA.
    "PNG": {"compress_level": 3},
    "JPEG": {},
    # Method 0 was ~3x faster than the default 4 for ~3% more bytes on a 16 MP photo.
    "WEBP": {"method": 0},
}
# Encoded sizes are predicted from a 4 x 4 mosaic of 256-pixel tiles (1 MP, 1/16 of a 4K
# image). 256 is a multiple of the JPEG and WebP block sizes, so the seams cost nothing extra.
_PROBE_TILE = 256
_PROBE_GRID = 4
# A step predicted above budget * slack is skipped; closer calls are encoded and measured.
_PREDICTION_SLACK = 1.2

# What Pillow's decoders raise on corrupt or truncated data: the list its own fuzz tests
# accept, plus the parsing errors that Image.open() itself treats as "not this format".
_MALFORMED = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    NotImplementedError,
    OverflowError,
)
_WARNINGS_LOCK = threading.Lock()

# libvips transcodes the common output (an opaque 8-bit RGB image too large to upload) in one
# streamed pass that never holds the decoded pixels and releases the GIL throughout: ~0.27 s
# for a 4K PNG against ~0.85 s through Pillow, whose PNG decoder is the slow part. Process-wide:
# no operation cache (each image is transcoded once), one vips thread per pass (the bot runs a
# pass per core already), and only loaders that are fuzzed for untrusted input.
_VIPS_LOADERS = {
    "image/png": pyvips.Image.pngload_source,
    "image/jpeg": pyvips.Image.jpegload_source,
    "image/webp": pyvips.Image.webpload_source,
}
pyvips.cache_set_max(0)
pyvips.concurrency_set(1)
pyvips.block_untrusted_set(True)


class ImageError(Exception):
    """Base class of image errors; ``str(error)`` is a short sentence fit to show a user."""


class NotAnImage(ImageError):
    """The bytes are no image, or a corrupt or truncated one."""

    def __init__(self) -> None:
        super().__init__("That file isn't a readable image.")


class UnsupportedImage(ImageError):
    """A recognisable image in a format that is not accepted (``image_format``, e.g. "PSD")."""

    def __init__(self, image_format: str) -> None:
        self.image_format = image_format
        super().__init__(
            f"{image_format} images aren't supported; please send PNG, JPEG, GIF or WebP."
        )


class ImageTooLarge(ImageError):
    """Too many bytes or pixels; ``actual`` is None when Pillow refused it before telling."""

    def __init__(
        self, *, unit: Literal["bytes", "pixels"], limit: int, actual: int | None = None
    ) -> None:
        self.unit = unit
        self.limit = limit
        self.actual = actual
        size = "" if actual is None else f"{_describe(actual, unit)}; "
        super().__init__(f"The image is too large ({size}the limit is {_describe(limit, unit)}).")


def _describe(amount: int, unit: Literal["bytes", "pixels"]) -> str:
    if unit == "pixels":
        return f"{amount / 1e6:.1f} megapixels"
    if amount >= 2**20:
        return f"{amount / 2**20:.1f} MiB"
    return f"{amount:,} bytes"


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An input image ready for the model."""

    data: bytes
    mime_type: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class FittedImage:
    """An output image ready for a Discord upload."""

    data: bytes
    mime_type: str
    extension: str
    width: int
    height: int


def prepare_input(
    data: bytes,
    *,
    max_bytes: int = MAX_INPUT_BYTES,
    max_pixels: int = MAX_INPUT_PIXELS,
    target_pixels: int = TARGET_INPUT_PIXELS,
) -> PreparedImage:
    """Validate a user's image by its bytes and turn it into a PNG, JPEG or WebP for the model.

    The original bytes are kept when they need no change. Otherwise the first frame is taken,
    turned upright, converted to RGB (RGBA if it uses transparency), scaled down to at most
    ``target_pixels`` and re-encoded without metadata. Raises an ImageError subclass.
    """
    if len(data) > max_bytes:
        raise ImageTooLarge(unit="bytes", limit=max_bytes, actual=len(data))
    with _open(data, max_pixels) as source, _decoding():
        fitted_size = _fitted_size(source.size, target_pixels)
        mime = sniff_mime(data)
        untouched = (
            mime in _EXTENSIONS
            and fitted_size == source.size
            and source.mode in ("RGB", "RGBA")
            and "transparency" not in source.info
            and not _is_animated(source)
            and not _needs_transpose(source)
        )
        # JPEG only: libjpeg decodes straight to 1/2, 1/4 or 1/8 scale, much cheaper than
        # decoding every pixel only to throw most of them away.
        source.draft(None, fitted_size)
        source.load()
        if untouched and mime is not None:
            return PreparedImage(data, mime, source.width, source.height)
        image = _normalise(source)
    image = _downscale(image, target_pixels)
    if image.mode == "RGBA":
        return PreparedImage(_encode(image, "PNG"), "image/png", image.width, image.height)
    encoded = _encode(image, "JPEG", _INPUT_JPEG_QUALITY)
    return PreparedImage(encoded, "image/jpeg", image.width, image.height)


def fit_to_budget(data: bytes, max_bytes: int) -> FittedImage:
    """Make an image an upload of at most ``max_bytes``: as it is when it fits, else re-encoded.

    Tries a quality ladder (WebP when the image uses alpha, else JPEG), then the same at 0.75x
    the size, and so on; raises ImageTooLarge when even a tiny version does not fit.
    """
    mime = sniff_mime(data)
    if len(data) <= max_bytes and mime in _EXTENSIONS:
        with _open(data, MAX_INPUT_PIXELS) as header:
            return FittedImage(data, mime, _EXTENSIONS[mime], header.width, header.height)
    try:
        fitted = _fit_opaque(data, mime, max_bytes)
    except pyvips.Error:
        fitted = None  # corrupt: the Pillow path names what is wrong with it
    if fitted is not None:
        return fitted
    with _open(data, MAX_INPUT_PIXELS) as source, _decoding():
        source.load()
        image = _normalise(source)
    return _shrink(image, max_bytes)


def _fit_opaque(data: bytes, mime: str | None, max_bytes: int) -> FittedImage | None:
    """Fit an upright, opaque, 8-bit sRGB image with libvips' decoder; None for any other.

    The ladder's first step (JPEG, full size, top quality) is one streamed pass that never
    holds the pixels. Only an image that needs more steps is decoded whole, for `_shrink`.
    """
    image = _open_opaque(data, mime)
    if image is None:
        return None
    # keep="icc": colour profile only, no EXIF (GPS), XMP or comments; 4:2:0 as Pillow does.
    encoded = image.jpegsave_buffer(Q=_QUALITIES[0], keep="icc", subsample_mode="on")
    if len(encoded) <= max_bytes:
        return FittedImage(encoded, "image/jpeg", "jpg", image.width, image.height)
    image = _open_opaque(data, mime)  # a sequential image is read once
    assert image is not None  # the same bytes passed the same checks a moment ago
    decoded = Image.frombytes("RGB", (image.width, image.height), image.write_to_memory())
    if image.get_typeof("icc-profile-data"):
        decoded.info["icc_profile"] = image.get("icc-profile-data")
    return _shrink(decoded, max_bytes)


def _open_opaque(data: bytes, mime: str | None) -> pyvips.Image | None:
    """``data`` as a sequential libvips image if it is upright, opaque, 8-bit sRGB, else None."""
    load = _VIPS_LOADERS.get(mime or "")
    if load is None:
        return None
    # A source reads `data` where it lies; a buffer would be a GIL-held copy of it.
    image = load(pyvips.Source.new_from_memory(data), access="sequential", fail_on="error")
    if (
        image.width * image.height > MAX_INPUT_PIXELS
        or image.bands != 3
        or image.format != "uchar"
        or image.interpretation != "srgb"
        or (image.get_typeof("orientation") and image.get("orientation") != 1)
    ):
        return None
    return image


def _open(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    """Identify ``data`` by its bytes and check its pixel count, without decoding any pixels."""
    try:
        try:
            image = _identify(data, _INPUT_FORMATS)
        except UnidentifiedImageError:
            if sniff_mime(data) == "image/heic":  # Pillow has no HEIC decoder of its own
                raise UnsupportedImage("HEIC") from None
            with _identify(data, None) as other:
                raise UnsupportedImage(other.format or "This kind of") from None
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(unit="pixels", limit=max_pixels) from error
    except _MALFORMED as error:
        raise NotAnImage from error
    pixels = image.width * image.height
    if pixels > max_pixels:
        image.close()
        raise ImageTooLarge(unit="pixels", limit=max_pixels, actual=pixels)
    return image


def _identify(data: bytes, formats: tuple[str, ...] | None) -> ImageFile.ImageFile:
    # Image.open() warns about images between Pillow's own ceiling and twice it (above that it
    # raises); the caller's max_pixels check is what decides, so the warning is dropped rather
    # than printed. catch_warnings() swaps process-global state and callers run in worker
    # threads, hence the lock; it is held only while headers are parsed.
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=formats)


@contextmanager
def _decoding() -> Iterator[None]:
    """Turn what Pillow raises on corrupt or truncated pixel data into NotAnImage."""
    try:
        yield
    except _MALFORMED as error:
        raise NotAnImage from error


def _is_animated(image: ImageFile.ImageFile) -> bool:
    # An MPO is a JPEG carrying extra views (stereo pairs, HDR gain maps), not an animation.
    return image.format != "MPO" and bool(getattr(image, "is_animated", False))


def _needs_transpose(image: Image.Image) -> bool:
    return image.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9)


def _normalise(source: Image.Image) -> Image.Image:
    """Upright, RGB or RGBA (only if some pixel is see-through), no metadata but colour profile."""
    image = ImageOps.exif_transpose(source)
    if image.mode.startswith("I;16"):
        # convert() would clip every 16-bit value above 255 to white instead of scaling it.
        image = image.point(lambda value: value / 256).convert("L")
    if image.has_transparency_data:
        image = image.convert("RGBA")
        if image.getchannel("A").getextrema() == (255, 255):
            image = image.convert("RGB")
    elif image.mode != "RGB":
        image = image.convert("RGB")
    # Dropping info strips EXIF (GPS), XMP and comments from what the encoders write. An RGB
    # colour profile stays so colours survive; a CMYK or grey one would no longer match.
    icc = source.info.get("icc_profile")
    image.info = {"icc_profile": icc} if icc and icc[16:20] == b"RGB " else {}
    return image


def _fitted_size(size: tuple[int, int], max_pixels: float) -> tuple[int, int]:
    """``size`` scaled down to at most ``max_pixels`` and _MAX_SIDE, keeping its aspect."""
    width, height = size
    scale = min(1.0, math.sqrt(max_pixels / (width * height)), _MAX_SIDE / max(size))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def _downscale(image: Image.Image, max_pixels: float) -> Image.Image:
    return _resize(image, _fitted_size(image.size, max_pixels))


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if size == image.size:
        return image
    # reducing_gap: a cheap integer reduce() first, with no visible difference at 3.0.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _encode(image: Image.Image, image_format: str, quality: int | None = None) -> bytes:
    options = dict(_ENCODER_OPTIONS[image_format])
    if quality is not None:
        options["quality"] = quality
    buffer = io.BytesIO()
    image.save(buffer, image_format, icc_profile=image.info.get("icc_profile"), **options)
    return buffer.getvalue()


def _shrink(image: Image.Image, max_bytes: int) -> FittedImage:
    """Walk the quality ladder at ever smaller sizes until an encoding fits ``max_bytes``."""
    if image.mode == "RGBA":
        image_format, mime = "WEBP", "image/webp"
    else:
        image_format, mime = "JPEG", "image/jpeg"
    probe = _probe(image)
    pixels = image.width * image.height
    smallest: int | None = None
    scale = 1.0
    while True:
        size = _fitted_size(image.size, pixels * scale**2)
        # Predictions stop once the scaled probe is small enough for headers to dominate it;
        # by then the image itself is small enough to encode outright.
        sample = None
        if probe is not None and probe.width * scale >= _PROBE_TILE:
            sample = _downscale(probe, probe.width * probe.height * scale**2)
        scaled = None
        for quality in _QUALITIES:
            if sample is not None:
                sample_bytes = len(_encode(sample, image_format, quality))
                predicted = sample_bytes * size[0] * size[1] / (sample.width * sample.height)
                if predicted > max_bytes * _PREDICTION_SLACK:
                    continue
            if scaled is None:
                scaled = _resize(image, size)
            encoded = _encode(scaled, image_format, quality)
            if len(encoded) <= max_bytes:
                extension = _EXTENSIONS[mime]
                return FittedImage(encoded, mime, extension, scaled.width, scaled.height)
            smallest = len(encoded) if smallest is None else min(smallest, len(encoded))
        if max(size) <= _MIN_SIDE:
            raise ImageTooLarge(unit="bytes", limit=max_bytes, actual=smallest)
        scale *= _SHRINK_STEP


def _probe(image: Image.Image) -> Image.Image | None:
    """Tiles spread evenly over ``image``, or None when it is too small to be worth sampling."""
    side = _PROBE_TILE * _PROBE_GRID
    if min(image.size) < side or image.width * image.height < 4 * side * side:
        return None
    mosaic = Image.new(image.mode, (side, side))
    last = _PROBE_GRID - 1
    for row in range(_PROBE_GRID):
        for column in range(_PROBE_GRID):
            left = (image.width - _PROBE_TILE) * column // last
            top = (image.height - _PROBE_TILE) * row // last
            tile = image.crop((left, top, left + _PROBE_TILE, top + _PROBE_TILE))
            mosaic.paste(tile, (column * _PROBE_TILE, row * _PROBE_TILE))
    return mosaic


_SAVE_FORMATS = {
    ".png": ("PNG", "image/png"),
    ".jpg": ("JPEG", "image/jpeg"),
    ".jpeg": ("JPEG", "image/jpeg"),
    ".webp": ("WEBP", "image/webp"),
}


def save_as(data: bytes, path: Path) -> None:
    """Write image bytes to `path`, converted to the format its suffix names if they differ."""
    wanted, mime = _SAVE_FORMATS.get(path.suffix.lower(), (None, None))
    if wanted is not None and sniff_mime(data) != mime:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            converted = image.convert("RGB") if wanted == "JPEG" else image
            data = _encode(converted, wanted, _INPUT_JPEG_QUALITY if wanted == "JPEG" else None)
    path.write_bytes(data)
