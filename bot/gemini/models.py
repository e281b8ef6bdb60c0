"""Transport-free models of an image request and its result, and the API's documented limits."""

from __future__ import annotations

from dataclasses import dataclass

from bot.gemini.errors import InvalidRequest

# The seed provider documents the first five; the model accepts all of them.
ASPECT_RATIOS: tuple[str, ...] = (
    *("1:1", "4:3", "3:4", "16:9", "9:16"),
    *("2:3", "3:2", "4:5", "5:4", "21:9", "1:4", "4:1", "1:8", "8:1"),
)
IMAGE_SIZES: tuple[str, ...] = ("512", "1K", "2K", "4K")
OUTPUT_TOKENS_PER_IMAGE: dict[str, int] = {"512": 747, "1K": 1120, "2K": 1680, "4K": 2520}
MAX_REFERENCE_IMAGES = 14
INPUT_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})
# The documented inline limit is 20 MB for the whole request; keep headroom for the JSON around it.
MAX_INLINE_BYTES = 19_000_000

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
OUTPUT_MIME_TYPES = frozenset(_EXTENSIONS)


@dataclass(frozen=True, slots=True)
class InputImage:
    """A reference image sent with the prompt."""

    data: bytes
    mime_type: str


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """One generation: a prompt, optional reference images and output options."""

    prompt: str
    images: tuple[InputImage, ...] = ()
    aspect_ratio: str | None = None
    image_size: str | None = None  # None: the model's default, 1K
    with_caption: bool = True  # ask for TEXT as well as IMAGE, so the model adds a caption


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """An image the model made; `mime_type` comes from the bytes, not from the API's label."""

    data: bytes
    mime_type: str

    @property
    def extension(self) -> str:
        return _EXTENSIONS[self.mime_type]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the API reported them (absent counts stay None)."""

    prompt_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """A successful generation: at least one image, plus the model's caption and metadata."""

    images: tuple[GeneratedImage, ...]
    caption: str
    finish_reason: str | None
    usage: Usage
    model_version: str | None


def _base64_length(size: int) -> int:
    """Return the length of the padded base64 text for `size` bytes."""
    return 4 * -(-size // 3)


def validate_request(request: ImageRequest) -> None:
    """Raise InvalidRequest if the API would reject the request or it would exceed its limits."""
    if not request.prompt.strip():
        raise InvalidRequest("the prompt is empty")
    if request.aspect_ratio is not None and request.aspect_ratio not in ASPECT_RATIOS:
        raise InvalidRequest(f"unsupported aspect ratio {request.aspect_ratio!r}")
    if request.image_size is not None and request.image_size not in IMAGE_SIZES:
        raise InvalidRequest(f"unsupported image size {request.image_size!r}")
    if len(request.images) > MAX_REFERENCE_IMAGES:
        raise InvalidRequest(
            f"{len(request.images)} reference images; at most {MAX_REFERENCE_IMAGES} are allowed"
        )
    for image in request.images:
        if image.mime_type not in INPUT_MIME_TYPES:
            raise InvalidRequest(f"unsupported reference image type {image.mime_type!r}")
        if not image.data:
            raise InvalidRequest("a reference image is empty")
    inline = len(request.prompt.encode()) + sum(_base64_length(len(i.data)) for i in request.images)
    if inline > MAX_INLINE_BYTES:
        raise InvalidRequest(f"request is {inline} bytes inline; the limit is {MAX_INLINE_BYTES}")
