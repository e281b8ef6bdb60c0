"""Burst bench: N users run /imagine at once against the real bot process and loopback fakes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
if str(ROOT) not in sys.path:  # run as a script, bench/ is sys.path[0] instead of the repo
    sys.path.insert(0, str(ROOT))

API_KEY = "AIzaSy-bench-secret-api-key-000111"
TOKEN = "MTE-bench-secret-discord-token.XYZ"
MODEL = "gemini-3.1-flash-image"
MIB = 2**20
UPLOAD_CAP = 10 * MIB
PROBE_PERIOD = 0.100
RSS_PERIOD = 0.050
IDLE_PROBES = 10
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")


# The fake Gemini, in its own process ------------------------------------------------------------


async def serve_gemini(latency: float) -> None:
    """Answer every generateContent after `latency` s with the 4K PNG until stdin closes."""
    from bot.gemini.models import OUTPUT_TOKENS_PER_IMAGE
    from tests.fakes.gemini import FakeGemini, FakeReply, FakeRequest, image_response
    from tests.fakes.gemini import realistic_4k_png as png_4k

    png = png_4k()
    document = image_response(png, output_tokens=OUTPUT_TOKENS_PER_IMAGE["4K"]).json
    reply = FakeReply(body=json.dumps(document).encode())  # serialised once, sent every time
    del document
    in_flight = peak = calls = 0
    async with FakeGemini(api_key=API_KEY, models=(MODEL,)) as fake:

        async def every_time(_: FakeRequest) -> FakeReply:
            nonlocal in_flight, peak, calls
            fake.enqueue(every_time)  # back at the head of the script: answers every request
            fake.requests.clear()  # the fake records every request; nobody reads them here
            calls += 1
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await asyncio.sleep(latency)
            finally:
                in_flight -= 1
            return reply

        fake.enqueue(every_time)
        ready = {"base_url": fake.base_url, "body_bytes": len(reply.body or b""), "png": len(png)}
        print(json.dumps(ready), flush=True)
        # A daemon thread: an executor's thread blocked on stdin would hold up interpreter exit.
        stdin_closed = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def wait_for_eof() -> None:
            sys.stdin.read()
            loop.call_soon_threadsafe(_resolve, stdin_closed)

        threading.Thread(target=wait_for_eof, daemon=True).start()
        await stdin_closed
        print(json.dumps({"calls": calls, "peak_in_flight": peak}), flush=True)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# Measuring the bot process -----------------------------------------------------------------------


@dataclass
class ProcSampler:
    """Polls /proc/PID for resident memory and CPU time every RSS_PERIOD seconds."""

    pid: int
    peak_hwm_kib: int = 0
    peak_rss_kib: int = 0
    cpu_seconds: float = 0.0
    samples: int = 0

    def sample(self) -> None:
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        self.peak_hwm_kib = max(self.peak_hwm_kib, int(line.split()[1]))
                    elif line.startswith("VmRSS:"):
                        self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
            with open(f"/proc/{self.pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            ticks = os.sysconf("SC_CLK_TCK")
            self.cpu_seconds = (int(fields[11]) + int(fields[12])) / ticks
            self.samples += 1
        except (OSError, IndexError, ValueError):
            pass  # the process is gone

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(RSS_PERIOD)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return ordered[rank]


@dataclass
class RunResult:
    label: str
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


async def _start_gemini(latency: float) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--serve-gemini",
        "--latency", str(latency),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 120)
    if not line:
        raise RuntimeError("the fake Gemini process died before it was ready")
    return process, json.loads(line)


async def _stop_gemini(process: asyncio.subprocess.Process) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    if process.returncode is None:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()
        with contextlib.suppress(TimeoutError, ValueError):
            stats = json.loads(await asyncio.wait_for(process.stdout.readline(), 10))
    await _end(process, signal.SIGTERM)
    return stats


async def _end(process: asyncio.subprocess.Process, signum: int) -> int | None:
    """Stop a child we started: the signal, then SIGKILL after 20 s."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    return process.returncode


async def _measure_upload(discord: Any, data: bytes) -> float:
    """Seconds to POST one channel message carrying `data` to the fake Discord (loopback)."""
    import aiohttp

    form = aiohttp.FormData()
    payload = {"content": "upload calibration", "attachments": [{"id": 0, "filename": "c.jpg"}]}
    form.add_field("payload_json", json.dumps(payload), content_type="application/json")
    form.add_field("files[0]", data, filename="c.jpg", content_type="application/octet-stream")
    url = f"{discord.api_base_url}/channels/{discord.channel_id}/messages"
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.post(url, data=form, headers={"Authorization": f"Bot {TOKEN}"}) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"upload calibration answered HTTP {r.status}")
        return time.monotonic() - started


def _result_at(record: Any) -> float | None:
    """When the bot's request that put images on this interaction's message was answered."""
    for event in record.events:
        # event.message is the live object; the response is the payload as answered then.
        answer = event.response if isinstance(event.response, dict) else {}
        answer = answer.get("resource", {}).get("message", answer)
        if event.status < 400 and answer.get("attachments"):
            return float(event.at)
    return None


def _settled(record: Any) -> bool:
    """Finished: the result is posted, or the response is a final text without images."""
    if _result_at(record) is not None:
        return True
    original = record.original
    if record.acked_at is None:
        return False
    if original is None or original.loading:
        return False
    return not original.content.startswith(("⏳", "🎨"))


async def run_once(label: str, tree: Path, args: argparse.Namespace, fitted: bytes) -> RunResult:
    """One burst against the bot from `tree`, with fresh fakes."""
    from tests.fakes.discord import FakeDiscord

    result = RunResult(label)
    figures = result.figures
    gemini, ready = await _start_gemini(args.latency)
    bot: asyncio.subprocess.Process | None = None
    tasks: list[asyncio.Task[Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="burst-"))  # no .env here: only our settings count
    log_path = workdir / "bot.log"
    try:
        async with FakeDiscord(token=TOKEN, keep_files=False) as discord:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "DISCORD_"))}
            env.update(
                PYTHONPATH=str(tree),
                DISCORD_TOKEN=TOKEN,
                GEMINI_API_KEY=API_KEY,
                GEMINI_BASE_URL=ready["base_url"],
                GEMINI_MODEL=MODEL,
                GEMINI_MAX_RETRIES="0",
                DISCORD_API_BASE_URL=discord.api_base_url,
                DISCORD_GATEWAY_URL=discord.gateway_url,
                DEV_GUILD_ID=str(discord.guild_id),
                USER_RATE_LIMIT="10000/minute",
                MAX_CONCURRENT_JOBS=str(args.concurrency),
                MAX_PENDING_PER_USER="2",
                LOG_LEVEL="WARNING",
            )
            with log_path.open("wb") as log:
                bot = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bot", env=env, cwd=workdir, stdout=log, stderr=log
                )
            sampler = ProcSampler(bot.pid)
            tasks.append(asyncio.create_task(sampler.run()))
            await discord.wait_for(lambda e: e.kind == "commands", timeout=60)
            await discord.wait_ready(timeout=60)
            upload_seconds = await _measure_upload(discord, fitted)

            probe_user = discord.make_user("probe")
            users = [discord.make_user(f"user{n}") for n in range(args.n)]

            async def probe() -> Any:
                # A blank prompt is refused by check_order before admission: the cheapest path.
                return await discord.slash(probe_user, "imagine", {"prompt": " "})

            idle = [await probe() for _ in range(IDLE_PROBES)]
            await asyncio.sleep(PROBE_PERIOD)
            figures["rss_idle_mib"] = sampler.peak_rss_kib / 1024

            probes: list[Any] = []
            probing = True

            async def probe_loop() -> None:
                pending: set[asyncio.Task[Any]] = set()
                due = time.monotonic()
                while probing:
                    task = asyncio.create_task(probe())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    task.add_done_callback(
                        lambda t: (
                            None if t.cancelled() or t.exception() else probes.append(t.result())
                        )
                    )
                    due += PROBE_PERIOD
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                await asyncio.gather(*pending)

            started = time.monotonic()
            tasks.append(asyncio.create_task(probe_loop()))
            records = await asyncio.gather(
                *(
                    discord.slash(user, "imagine", {"prompt": f"a lighthouse at dusk #{n}"})
                    for n, user in enumerate(users)
                )
            )
            fired = time.monotonic() - started
            deadline = started + args.run_timeout
            # Polling, not events: a result is recognised from several kinds of request.
            while not all(_settled(r) for r in records) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            finished = time.monotonic()
            probing = False
            await asyncio.sleep(0.3)  # let the last probes be acknowledged
            sampler.sample()

            done_at = [t for r in records if (t := _result_at(r)) is not None]
            burst_acks = [r.ack_latency for r in records if r.ack_latency is not None]
            probe_acks = [p.ack_latency for p in probes if p.ack_latency is not None]
            idle_acks = [p.ack_latency for p in idle if p.ack_latency is not None]
            files = [f for m in discord.messages.values() for f in m.files]
            files = [f for f in files if f.filename != "c.jpg"]  # not the calibration upload
            rejected = [
                e for r in records for e in r.events if e.status >= 400 and e.kind != "fetch"
            ]
            valid = [
                f
                for f in files
                if f.head.startswith(IMAGE_MAGIC) or f.head[8:12] == b"WEBP"
                if f.width and f.height
            ]
            waves = math.ceil(args.n / args.concurrency)
            ideal = waves * args.latency + upload_seconds
            complete = len(done_at) == args.n
            all_done = (max(done_at) - started) if done_at and complete else math.nan
            worst = sorted(probes, key=lambda p: -(p.ack_latency or math.inf))[:5]
            figures.update(
                worst_probes=[
                    (p.dispatched_at - started, p.ack_latency or math.inf) for p in worst
                ],
                fired_s=fired,
                burst_ack=(burst_acks, args.n),
                probe_ack=(probe_acks, len(probes)),
                idle_ack=(idle_acks, len(idle)),
                results=len(done_at),
                failed=sum(_settled(r) for r in records) - len(done_at),
                all_done_s=all_done,
                last_seen_s=finished - started,
                upload_s=upload_seconds,
                ideal_s=ideal,
                ratio=all_done / ideal,
                waves=waves,
                uploads=len(files),
                largest_upload=max((f.size for f in files), default=0),
                over_cap=sum(f.size > UPLOAD_CAP for f in files),
                invalid=len(files) - len(valid),
                rejected=len(rejected),
                formats=sorted({f.filename.rpartition(".")[2] for f in files}),
                dims=sorted({(f.width, f.height) for f in files}, key=str)[:3],
                rss_peak_mib=max(sampler.peak_hwm_kib, sampler.peak_rss_kib) / 1024,
                bot_cpu_s=sampler.cpu_seconds,
                timed_out=not complete,
            )
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            tasks.clear()
            code = await _end(bot, signal.SIGTERM)
            figures["exit_code"] = code
            output = log_path.read_text(errors="replace")
            if "Traceback" in output or code != 0:
                result.notes.append(f"bot log tail ({label}):\n{output[-2000:]}")
    finally:
        for task in tasks:
            task.cancel()
        if bot is not None:
            await _end(bot, signal.SIGTERM)
        figures.update(await _stop_gemini(gemini))
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# Reporting ---------------------------------------------------------------------------------------


def _ms(values: list[float], pct: float | None) -> float:
    if not values:
        return math.nan
    return 1000 * (max(values) if pct is None else percentile(values, pct))


def _rows(figures: dict[str, Any]) -> list[tuple[str, float | str, str]]:
    """(name, value, unit) rows; numeric values are compared across columns."""
    rows: list[tuple[str, float | str, str]] = []
    for key, name in (("burst_ack", "burst"), ("probe_ack", "probe"), ("idle_ack", "idle probe")):
        values, sent = figures[key]
        rows += [
            (f"ack {name} p50", _ms(values, 50), "ms"),
            (f"ack {name} p99", _ms(values, 99), "ms"),
            (f"ack {name} max", _ms(values, None), "ms"),
            (f"ack {name} acked/sent", f"{len(values)}/{sent}", ""),
        ]
    rows += [
        ("results posted", f"{figures['results']}", ""),
        ("failed (text, no image)", f"{figures['failed']}", ""),
        ("all results posted after", figures["all_done_s"], "s"),
        ("ideal", figures["ideal_s"], "s"),
        ("ratio to ideal", figures["ratio"], "x"),
        ("ratio to the fitting floor", figures["all_done_s"] / figures["fit_floor_s"], "x"),
        ("upload estimate (in ideal)", figures["upload_s"], "s"),
        ("API calls made", figures.get("calls", math.nan), ""),
        ("API calls in flight, peak", figures.get("peak_in_flight", math.nan), ""),
        ("bot RSS idle", figures["rss_idle_mib"], "MiB"),
        ("bot RSS peak", figures["rss_peak_mib"], "MiB"),
        ("bot CPU time", figures["bot_cpu_s"], "s"),
        ("uploads", f"{figures['uploads']}", ""),
        ("largest upload", figures["largest_upload"] / MIB, "MiB"),
        ("uploads > 10 MiB", f"{figures['over_cap']}", ""),
        ("uploads not a valid image", f"{figures['invalid']}", ""),
        ("requests refused by Discord", f"{figures['rejected']}", ""),
        ("upload formats", ",".join(figures["formats"]), ""),
        ("bot exit code", f"{figures.get('exit_code')}", ""),
    ]
    return rows


def _fmt(value: float | str, unit: str) -> str:
    if isinstance(value, str):
        return value
    if math.isnan(value):
        return "n/a"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.2f} {unit}".rstrip() if unit else f"{value:g}"


def verdicts(figures: dict[str, Any]) -> list[str]:
    burst, probe = figures["burst_ack"][0], figures["probe_ack"][0]
    acks = burst + probe
    lost = figures["burst_ack"][1] - len(burst) + figures["probe_ack"][1] - len(probe)
    checks = [
        ("ack p99 < 100 ms (burst+probes)", lost == 0 and _ms(acks, 99) < 100),
        ("ack max < 500 ms (burst+probes)", lost == 0 and _ms(acks, None) < 500),
        ("all results within 1.25x ideal", figures["ratio"] <= 1.25),
        ("bot peak RSS < 1 GiB", figures["rss_peak_mib"] < 1024),
        (
            "every upload <= 10 MiB and a valid image",
            figures["uploads"] > 0
            and figures["over_cap"] == 0
            and figures["invalid"] == 0
            and figures["rejected"] == 0,
        ),
    ]
    return [f"  {'PASS' if ok else 'FAIL'}  {name}" for name, ok in checks]


def report(results: list[RunResult], args: argparse.Namespace, fit_s: float, size: int) -> None:
    print()
    print(
        f"burst: n={args.n} users x 1 /imagine, fake Gemini latency L={args.latency:g} s, "
        f"MAX_CONCURRENT_JOBS={args.concurrency}, probe /imagine every "
        f"{PROBE_PERIOD * 1000:.0f} ms (blank prompt: refused before admission)"
    )
    print(
        f"machine: {os.cpu_count()} cores shared by the bot, the fake Discord + harness process "
        "and the fake Gemini process (not isolated: the fakes' CPU competes with the bot's)"
    )
    first = results[0].figures
    print(
        f"ideal = ceil(n/C) x L + upload = {first['waves']} x {args.latency:g} s + upload; "
        f"upload = one measured loopback POST of a {size / MIB:.2f} MiB file (what fit_to_budget "
        "makes of the 4K PNG) to the fake Discord"
    )
    print(
        f"fitting floor = n x {fit_s:.2f} s = {args.n * fit_s:.1f} s: fit_to_budget on every core "
        "at once, as the bot runs it, takes that long per 4K PNG here (it must be re-encoded: "
        "it is over 10 MiB); the ideal ignores it"
    )
    names = [r.label for r in results]
    table = [_rows(r.figures) for r in results]
    width = max(len(name) for name, _, _ in table[0]) + 2
    header = f"{'':<{width}}" + "".join(f"{n:>22}" for n in names)
    if len(results) == 2:
        header += f"{'ratio':>10}"
    print()
    print(header)
    for i, (name, _, unit) in enumerate(table[0]):
        line = f"{name:<{width}}"
        values = [t[i][1] for t in table]
        line += "".join(f"{_fmt(v, unit):>22}" for v in values)
        a, b = values[0], values[-1]
        if len(results) == 2 and not isinstance(a, str) and not isinstance(b, str) and b:
            line += f"{a / b:>9.2f}x"
        print(line)
    for r in results:
        print()
        print(f"targets ({r.label}):")
        print("\n".join(verdicts(r.figures)))
        slow = ", ".join(f"{1000 * a:.0f} ms at t={t:.1f} s" for t, a in r.figures["worst_probes"])
        print(f"  slowest probe acks (t = seconds after the burst was fired): {slow}")
        if r.figures.get("timed_out"):
            print(f"  note: stopped after --run-timeout {args.run_timeout:g} s before all results")
        for note in r.notes:
            print(note)


# Driving ----------------------------------------------------------------------------------------


def _calibrate() -> tuple[bytes, float]:
    """One fitted upload, and seconds per image when every core fits at once, as the bot does.

    This is the floor that the mandatory re-encode sets (the 4K PNG is over 10 MiB): n images
    cannot all be posted sooner than n times this, whatever the API latency.
    """
    from concurrent.futures import ThreadPoolExecutor

    from bot import images
    from tests.fakes.gemini import realistic_4k_png

    png = realistic_4k_png()
    cores = os.cpu_count() or 1
    fitted = images.fit_to_budget(png, UPLOAD_CAP - 64 * 1024)  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(lambda _: images.fit_to_budget(png, UPLOAD_CAP), range(2 * cores)))
    return fitted.data, (time.perf_counter() - started) / (2 * cores)


async def main(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM ends the bench like ctrl-C does: cancelled, so every finally stops its children.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    fitted, fit_s = await asyncio.to_thread(_calibrate)
    results: list[RunResult] = []
    worktree: Path | None = None
    try:
        async with asyncio.timeout(args.timeout):
            results.append(await run_once("working tree", ROOT, args, fitted))
            if args.compare:
                holder = Path(tempfile.mkdtemp(prefix="burst-rev-"))
                worktree = holder / "tree"
                await asyncio.to_thread(
                    subprocess.run,
                    ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q",
                     str(worktree), args.compare],
                    check=True,
                )  # fmt: skip
                results.append(await run_once(args.compare[:20], worktree, args, fitted))
    except TimeoutError:
        print(f"error: the bench passed its --timeout of {args.timeout:g} s", file=sys.stderr)
        return 1
    finally:
        if worktree is not None:
            await asyncio.to_thread(
                subprocess.run,
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                check=False,
            )
            shutil.rmtree(worktree.parent, ignore_errors=True)
    for result in results:  # the working tree's fitting code, on this machine
        result.figures["fit_floor_s"] = args.n * fit_s
    report(results, args, fit_s, len(fitted))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100, help="users firing /imagine at once")
    parser.add_argument("--latency", type=float, default=1.0, help="fake Gemini latency (s)")
    parser.add_argument("--concurrency", type=int, default=32, help="MAX_CONCURRENT_JOBS")
    parser.add_argument("--compare", metavar="REV", help="also run the bot at this git revision")
    parser.add_argument(
        "--run-timeout", type=float, default=240, help="give up on one burst after this (s)"
    )
    parser.add_argument("--timeout", type=float, default=900, help="overall limit (s)")
    parser.add_argument("--serve-gemini", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve_gemini:
        # The harness stops this process (stdin EOF, then SIGTERM); ctrl-C is the harness's.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_gemini(arguments.latency))
        sys.exit(0)
    try:
        sys.exit(asyncio.run(main(arguments)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit(130)
