"""Our GeminiClient against google-genai's async client on 4K answers from a loopback fake."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, bench/ is sys.path[0] instead of the repo
    sys.path.insert(0, str(ROOT))

API_KEY = "bench-key"
MODEL = "gemini-3.1-flash-image"
PROMPT = "A lighthouse on a cliff at dusk, photorealistic"
TICK = 0.010  # the loop-lag probe's period
SIDES = ("ours", "sdk")
SIDE_TIMEOUT = 300

Call = Callable[[], Awaitable[bytes]]


# The fake, in its own process --------------------------------------------------------------------


async def serve_fake() -> None:
    """Serve generateContent with the realistic 4K PNG until stdin closes; print one JSON line."""
    from bot.gemini.models import OUTPUT_TOKENS_PER_IMAGE
    from tests.fakes.gemini import (
        FakeGemini,
        FakeReply,
        FakeRequest,
        image_response,
        realistic_4k_png,
    )

    png = realistic_4k_png()
    document = image_response(png, output_tokens=OUTPUT_TOKENS_PER_IMAGE["4K"]).json
    # Serialised once: the fake should spend its CPU on sending, not on json.dumps per request.
    reply = FakeReply(body=json.dumps(document).encode())
    async with FakeGemini(api_key=API_KEY, models=(MODEL,)) as fake:

        async def every_time(_: FakeRequest) -> FakeReply:
            fake.enqueue(every_time)  # stays at the head of the script: answers every request
            return reply

        fake.enqueue(every_time)
        ready = {
            "base_url": fake.base_url,
            "body_bytes": len(reply.body or b""),
            "png_bytes": len(png),
            "png_sha256": hashlib.sha256(png).hexdigest(),
        }
        print(json.dumps(ready), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# One side, in its own process --------------------------------------------------------------------


def rss_kib() -> int:
    """The current resident set size, from /proc (ru_maxrss is only the high-water mark)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return usage.ru_utime + usage.ru_stime


async def ours_side(base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import aiohttp

    from bot.gemini import GeminiClient, ImageRequest

    session = aiohttp.ClientSession()
    client = GeminiClient(session, api_key=API_KEY, base_url=base_url, model=MODEL)
    request = ImageRequest(PROMPT, image_size="4K", aspect_ratio="1:1")

    async def call() -> bytes:
        result = await client.generate(request)
        return result.images[0].data

    return call, session.close


async def sdk_side(base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from google import genai
    from google.genai import types

    # With api_key and base_url the SDK posts to {base_url}/{api_version}/models/{model}:
    # generateContent with the key in x-goog-api-key; its default api_version is v1, so say v1beta.
    client = genai.Client(
        api_key=API_KEY, http_options=types.HttpOptions(base_url=base_url, api_version="v1beta")
    )
    config: Any = {
        "response_modalities": ["TEXT", "IMAGE"],
        "image_config": {"image_size": "4K", "aspect_ratio": "1:1"},
    }

    async def call() -> bytes:
        response = await client.aio.models.generate_content(
            model=MODEL, contents=PROMPT, config=config
        )
        candidates = response.candidates or []
        content = candidates[0].content if candidates else None
        for part in (content.parts if content else None) or []:
            if part.inline_data is not None and part.inline_data.data and not part.thought:
                return part.inline_data.data
        raise RuntimeError("the SDK's answer holds no final image")

    return call, client.aio.aclose


async def measure(side: str, base_url: str, count: int, concurrency: int) -> dict[str, Any]:
    """Run one side: build it, warm up once, then `count` timed requests, `concurrency` at once."""
    factory = ours_side if side == "ours" else sdk_side
    call, close = await factory(base_url)
    baseline_rss = rss_kib()
    loop = asyncio.get_running_loop()

    # Warm-up: connection, lazy imports, first allocations. Its image is checked in full here and
    # then dropped, so neither side's peak carries a reference copy.
    first = await call()
    size, digest, crc = len(first), hashlib.sha256(first).hexdigest(), zlib.crc32(first)
    del first

    lateness: list[float] = []
    running = True

    async def probe() -> None:
        while running:
            due = loop.time() + TICK
            await asyncio.sleep(TICK)
            lateness.append(loop.time() - due)

    durations: list[float] = []
    mismatches, check_cpu, remaining = 0, 0.0, count

    async def worker() -> None:
        nonlocal remaining, mismatches, check_cpu
        while remaining > 0:
            remaining -= 1
            begun = time.perf_counter()
            data = await call()
            durations.append(time.perf_counter() - begun)
            # Same length and CRC-32 as the warm-up's (~3 ms, off the clock and out of the CPU
            # figure); a SHA-256 each would cost more than our client's whole decode.
            checking = time.thread_time()
            mismatches += len(data) != size or zlib.crc32(data) != crc
            check_cpu += time.thread_time() - checking
            del data  # each answer is held until here, and no longer

    prober = asyncio.create_task(probe())
    await asyncio.sleep(TICK * 3)  # let the probe settle before the clock starts
    cpu_before, wall_before = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall_before, cpu_seconds() - cpu_before - check_cpu
    running = False
    await prober
    await close()
    return {
        "durations": durations,
        "wall": wall,
        "cpu": cpu,
        "baseline_rss_kib": baseline_rss,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "worst_stall": max(lateness, default=0.0),
        "mean_lateness": statistics.fmean(lateness) if lateness else 0.0,
        "image_bytes": size,
        "sha256": digest,
        "mismatches": mismatches,
    }


# The parent: orchestration and the table ---------------------------------------------------------

ROWS: tuple[tuple[str, Callable[[dict[str, Any]], float]], ...] = (
    ("per-request mean (ms)", lambda r: statistics.fmean(r["durations"]) * 1000),
    ("per-request p50 (ms)", lambda r: percentile(r["durations"], 50) * 1000),
    ("per-request p95 (ms)", lambda r: percentile(r["durations"], 95) * 1000),
    ("total wall (s)", lambda r: r["wall"]),
    ("throughput (req/s)", lambda r: len(r["durations"]) / r["wall"]),
    ("CPU user+sys, total (s)", lambda r: r["cpu"]),
    ("CPU per request (ms)", lambda r: r["cpu"] / len(r["durations"]) * 1000),
    ("baseline RSS (MiB)", lambda r: r["baseline_rss_kib"] / 1024),
    ("peak RSS (MiB)", lambda r: r["peak_rss_kib"] / 1024),
    ("peak - baseline (MiB)", lambda r: (r["peak_rss_kib"] - r["baseline_rss_kib"]) / 1024),
    ("worst loop stall (ms)", lambda r: r["worst_stall"] * 1000),
    ("mean loop lateness (ms)", lambda r: r["mean_lateness"] * 1000),
)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: with 20 samples, p95 is the 19th smallest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def child(role: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--role", role, *args]


def run_side(side: str, base_url: str, count: int, concurrency: int) -> dict[str, Any]:
    args = ("--base-url", base_url, "-n", str(count), "--concurrency", str(concurrency))
    done = subprocess.run(
        child(side, *args), capture_output=True, text=True, timeout=SIDE_TIMEOUT, check=False
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the {side} side failed with exit code {done.returncode}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def report(fake: dict[str, Any], runs: dict[str, list[dict[str, Any]]], args: Any) -> bool:
    """Print the table of medians over the rounds; return whether every image was the served one."""
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("aiohttp", "google-genai", "pybase64")
    )
    print(
        f"{args.n} timed requests per side, {args.concurrency} in flight, after 1 warm-up; "
        f"median of {args.rounds} rounds, each side in a fresh process"
    )
    print(f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {versions}")
    print(
        f"each answer: {fake['body_bytes'] / 2**20:.1f} MiB of JSON carrying a "
        f"{fake['png_bytes'] / 2**20:.1f} MiB 4096x4096 PNG"
    )
    width = max(len(label) for label, _ in ROWS)
    print(f"{'':<{width}}  {'ours':>8}  {'SDK':>8}  {'ours/SDK':>8}")
    for label, metric in ROWS:
        mine, theirs = (statistics.median(map(metric, runs[side])) for side in SIDES)
        ratio = f"{mine / theirs:8.2f}" if theirs else f"{'-':>8}"
        digits = 2 if "(s)" in label else 1
        print(f"{label:<{width}}  {mine:8.{digits}f}  {theirs:8.{digits}f}  {ratio}")
    results = [result for side in SIDES for result in runs[side]]
    good = all(r["sha256"] == fake["png_sha256"] and not r["mismatches"] for r in results)
    print(
        f"images: {'all identical' if good else 'NOT ALL IDENTICAL'} to the served PNG "
        f"(sha256 {fake['png_sha256'][:16]}..., {fake['png_bytes']} bytes) on both sides"
    )
    print("ratios below 1 favour ours")
    return good


def orchestrate(args: Any) -> None:
    fake_process = subprocess.Popen(
        child("fake"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    try:
        assert fake_process.stdout is not None
        line = fake_process.stdout.readline()
        if not line:
            raise SystemExit("the fake server did not start")
        fake = json.loads(line)
        for round_ in range(args.rounds):
            # Alternate who goes first, so neither side always meets a warmer fake.
            for side in SIDES if round_ % 2 == 0 else SIDES[::-1]:
                runs[side].append(run_side(side, fake["base_url"], args.n, args.concurrency))
    finally:
        assert fake_process.stdin is not None
        fake_process.stdin.close()  # the fake stops when its stdin closes
        try:
            fake_process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            fake_process.kill()
            fake_process.wait()
    if not report(fake, runs, args):
        raise SystemExit("a side did not get the served image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20, help="timed requests per side (default 20)")
    parser.add_argument("--concurrency", "-c", type=int, default=4, help="in flight (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per side (default 3)")
    parser.add_argument("--role", choices=("fake", *SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.n, args.concurrency, args.rounds) < 1:
        parser.error("-n, --concurrency and --rounds must be at least 1")
    if args.role == "fake":
        asyncio.run(serve_fake())
    elif args.role in SIDES:
        result = asyncio.run(measure(args.role, args.base_url, args.n, args.concurrency))
        print(json.dumps(result))
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
