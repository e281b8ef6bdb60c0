"""Time bot.images on the sizes that matter: `uv run python -m bench.bench_images`."""

from __future__ import annotations

import io
import random
import statistics
import time
from collections.abc import Callable

from PIL import Image, ImageChops

from bot.images import fit_to_budget, prepare_input

DISCORD_LIMIT = 10 * 2**20
RUNS = 5


def photo_like(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Smooth colour regions, mid-frequency texture and sensor-like grain."""
    rng = random.Random(seed)

    def layer(side: int, resample: Image.Resampling) -> Image.Image:
        tiny = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
        return tiny.resize(size, resample)

    shapes = layer(48, Image.Resampling.BICUBIC)
    texture = layer(size[0] // 8, Image.Resampling.BILINEAR)
    grain = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    image = ImageChops.blend(shapes, texture, 0.15)
    return ImageChops.add(image, grain.point(lambda v: v // 32), offset=-4)


def encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def timed(label: str, work: Callable[[], object]) -> None:
    seconds = []
    for _ in range(RUNS):
        started = time.perf_counter()
        result = work()
        seconds.append(time.perf_counter() - started)
    print(
        f"{label:<48} median {statistics.median(seconds):.3f} s"
        f"  min {min(seconds):.3f} s  -> {result}"
    )


def describe(result: object) -> str:
    data = getattr(result, "data", b"")
    width, height = getattr(result, "width", 0), getattr(result, "height", 0)
    return f"{getattr(result, 'mime_type', '?')} {width}x{height} {len(data) / 2**20:.2f} MiB"


def main() -> None:
    photo = photo_like((4096, 4096))
    png = encode(photo, "PNG")
    print(f"4096x4096 photo-like PNG: {len(png) / 2**20:.1f} MiB")

    def decode_only() -> str:
        with Image.open(io.BytesIO(png)) as image:
            image.load()
        return "decoded"

    timed("decode only (for reference)", decode_only)
    timed("fit_to_budget(png, 10 MiB)", lambda: describe(fit_to_budget(png, DISCORD_LIMIT)))
    timed("fit_to_budget(png, 1 MiB)", lambda: describe(fit_to_budget(png, 2**20)))
    timed("prepare_input(png)", lambda: describe(prepare_input(png)))

    with_alpha = photo.convert("RGBA")
    with_alpha.putalpha(Image.radial_gradient("L").resize(photo.size))
    rgba_png = encode(with_alpha, "PNG", compress_level=1)
    print(f"4096x4096 RGBA PNG: {len(rgba_png) / 2**20:.1f} MiB")
    timed(
        "fit_to_budget(rgba png, 10 MiB)", lambda: describe(fit_to_budget(rgba_png, DISCORD_LIMIT))
    )

    camera = encode(photo_like((8000, 6000), seed=1), "JPEG", quality=92)
    print(f"8000x6000 camera-like JPEG: {len(camera) / 2**20:.1f} MiB")
    timed("prepare_input(jpeg)", lambda: describe(prepare_input(camera)))


if __name__ == "__main__":
    main()
