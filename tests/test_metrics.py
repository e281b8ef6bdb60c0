"""The ops endpoint on loopback: /healthz under failing, raising and hanging checks; /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.gemini import GeminiError, RateLimited, RequestTimedOut
from bot.metrics import HealthCheck, Metrics, OpsServer

SECRET = "redis://:hunter2-s3cret@redis:6379/0"
CHECK_TIMEOUT = 0.2

Serve = Callable[..., Awaitable[str]]


def passing() -> HealthCheck:
    async def check() -> bool:
        return True

    return check


def failing() -> HealthCheck:
    async def check() -> bool:
        return False

    return check


def raising() -> HealthCheck:
    async def check() -> bool:
        raise ConnectionError(f"cannot reach {SECRET}")

    return check


def raising_before_awaitable() -> HealthCheck:
    def check() -> Awaitable[bool]:
        raise RuntimeError(f"no client for {SECRET}")

    return check


def hanging() -> HealthCheck:
    async def check() -> bool:
        await asyncio.Event().wait()
        return True

    return check


def stubborn() -> HealthCheck:
    """Swallows the first cancellation and answers late: the response must not wait for it."""

    async def check() -> bool:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(2)
        return True

    return check


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[OpsServer] = []

    async def start(
        checks: Mapping[str, HealthCheck], metrics: Metrics | None = None, **options: Any
    ) -> str:
        options.setdefault("check_timeout", CHECK_TIMEOUT)
        server = OpsServer(metrics or Metrics(), checks, port=0, **options)
        await server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.stop()


async def test_healthz_is_200_when_every_check_passes(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    url = await serve({"gateway": passing(), "store": passing()})

    async with http.get(f"{url}/healthz") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == {
            "status": "ok",
            "checks": {"gateway": True, "store": True},
        }


@pytest.mark.parametrize(
    "store",
    [failing, raising, raising_before_awaitable, hanging, stubborn],
    ids=lambda f: f.__name__,
)
async def test_healthz_is_503_naming_the_failing_check(
    serve: Serve, http: aiohttp.ClientSession, store: Callable[[], HealthCheck]
) -> None:
    url = await serve({"gateway": passing(), "store": store()})

    started = time.monotonic()
    async with http.get(f"{url}/healthz") as response:
        text = await response.text()
        assert response.status == 503
        assert await response.json() == {
            "status": "failing",
            "checks": {"gateway": True, "store": False},
        }
    assert time.monotonic() - started < CHECK_TIMEOUT + 0.6
    for leak in ("hunter2", "redis://", "Error", "Traceback"):
        assert leak not in text


async def test_a_failing_check_is_logged_by_class_name_only(
    serve: Serve, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    url = await serve({"store": raising()})

    async with http.get(f"{url}/healthz") as response:
        assert response.status == 503
    assert "ConnectionError" in caplog.text
    assert "hunter2" not in caplog.text


async def test_healthz_with_no_checks_is_ok(serve: Serve, http: aiohttp.ClientSession) -> None:
    url = await serve({})

    async with http.get(f"{url}/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok", "checks": {}}


async def test_metrics_exposes_every_family_with_its_labels(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    metrics = Metrics()
    metrics.jobs.labels(outcome="done", kind="imagine").inc(2)
    metrics.jobs.labels(outcome="refused", kind="edit").inc()
    metrics.images.inc(3)
    metrics.estimated_spend_usd.inc(0.117)
    metrics.api_latency_seconds.observe(0.4)
    metrics.api_latency_seconds.observe(14.0)
    # The signature GeminiClient takes for its on_retry callback.
    on_retry: Callable[[int, float, GeminiError], None] = metrics.on_retry
    on_retry(1, 0.5, RateLimited(429, "quota", retry_after=2))
    on_retry(2, 1.0, RateLimited(429, "quota"))
    on_retry(1, 0.5, RequestTimedOut("no answer"))
    queue = {"depth": 5, "running": 4}
    metrics.track_queue(lambda: queue["depth"], lambda: queue["running"])
    queue["depth"] = 7  # read at scrape time, not when tracked
    url = await serve({}, metrics)

    async with http.get(f"{url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()

    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families.values()
        for sample in family.samples
    }
    assert families["banana_jobs"].type == "counter"
    assert samples["banana_jobs_total", (("kind", "imagine"), ("outcome", "done"))] == 2
    assert samples["banana_jobs_total", (("kind", "edit"), ("outcome", "refused"))] == 1
    assert samples["banana_images_total", ()] == 3
    assert samples["banana_estimated_spend_usd_total", ()] == pytest.approx(0.117)
    assert families["banana_queue_depth"].type == "gauge"
    assert samples["banana_queue_depth", ()] == 7
    assert samples["banana_in_flight", ()] == 4
    assert families["banana_api_latency_seconds"].type == "histogram"
    assert samples["banana_api_latency_seconds_count", ()] == 2
    assert samples["banana_api_latency_seconds_bucket", (("le", "0.5"),)] == 1
    assert samples["banana_api_latency_seconds_bucket", (("le", "15.0"),)] == 2
    assert samples["banana_api_latency_seconds_bucket", (("le", "120.0"),)] == 2
    assert samples["banana_api_retries_total", (("reason", "RateLimited"),)] == 2
    assert samples["banana_api_retries_total", (("reason", "RequestTimedOut"),)] == 1


def test_instances_have_their_own_registries() -> None:
    first, second = Metrics(), Metrics()
    first.images.inc()

    assert b"banana_images_total 1.0" in first.render()[0]
    assert b"banana_images_total 0.0" in second.render()[0]


async def test_the_server_binds_loopback_by_default_and_reports_the_chosen_port() -> None:
    server = OpsServer(Metrics(), {}, port=0)
    await server.start()
    try:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        with pytest.raises(RuntimeError):
            await server.start()
    finally:
        await server.stop()
    await server.stop()  # a second stop is harmless


async def test_only_get_on_the_two_paths_is_served(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    url = await serve({"gateway": passing()})

    async with http.post(f"{url}/healthz") as response:
        assert response.status == 405
    async with http.get(f"{url}/") as response:
        assert response.status == 404
