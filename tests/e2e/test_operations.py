"""The ops endpoint of the real bot process: health once connected, metrics after a job."""

from __future__ import annotations

import asyncio
import socket

import aiohttp

from tests.e2e.conftest import BotWorld


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_healthz_and_metrics(world: BotWorld) -> None:
    port = free_port()
    await world.start(METRICS_PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    record = await world.discord.slash(world.user("alice"), "imagine", {"prompt": "a heron"})
    await world.result_of(record)
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(20):
            while True:  # on_ready follows the guilds by a moment
                async with http.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        health = await response.json()
                        break
                await asyncio.sleep(0.2)
        async with asyncio.timeout(10):
            while True:  # the job's record is written just after its result is posted
                async with http.get(f"{base}/metrics") as response:
                    text = await response.text()
                if 'banana_jobs_total{kind="imagine",outcome="done"} 1.0' in text:
                    break
                await asyncio.sleep(0.2)
    assert health["checks"] == {"gateway": True, "store": True}
    assert "banana_images_total 1.0" in text
    assert "banana_api_latency_seconds_count 1.0" in text
