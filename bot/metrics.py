"""Operations: Prometheus metrics in a registry of our own, and the /healthz + /metrics server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

log = logging.getLogger(__name__)

NAMESPACE = "banana"
JOB_OUTCOMES = ("done", "failed", "cancelled", "refused", "interrupted")
# Image calls take seconds to minutes; the sub-second buckets catch fast refusals and errors.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180)

HealthCheck = Callable[[], Awaitable[bool]]


class Metrics:
    """The bot's metrics, in a registry of their own so that instances (and tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Memory and file descriptors: the first things to look at when images pile up.
        ProcessCollector(namespace=NAMESPACE, registry=self.registry)
        self.jobs = Counter(
            "jobs",
            "Image jobs by how they ended (done, failed, cancelled, refused, interrupted).",
            ["outcome", "kind"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.images = Counter(
            "images", "Images delivered.", namespace=NAMESPACE, registry=self.registry
        )
        self.estimated_spend_usd = Counter(
            "estimated_spend_usd",
            "Estimated API spend in US dollars.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "queue_depth",
            "API calls waiting to start.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "in_flight", "API calls running.", namespace=NAMESPACE, registry=self.registry
        )
        self.api_latency_seconds = Histogram(
            "api_latency_seconds",
            "Seconds one image API attempt took, retries counted separately.",
            namespace=NAMESPACE,
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.api_retries = Counter(
            "api_retries",
            "API attempts retried, by the error's class name.",
            ["reason"],
            namespace=NAMESPACE,
            registry=self.registry,
        )

    def track_queue(self, depth: Callable[[], int], in_flight: Callable[[], int]) -> None:
        """Read the queue's depth and running count from these callbacks at each scrape."""
        self.queue_depth.set_function(depth)
        self.in_flight.set_function(in_flight)

    def on_retry(self, attempt: int, delay: float, error: BaseException) -> None:
        """Count a retry; fits `GeminiClient(on_retry=...)`."""
        self.api_retries.labels(reason=type(error).__name__).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class OpsServer:
    """Serves GET /healthz and GET /metrics; binds loopback unless told otherwise."""

    def __init__(
        self,
        metrics: Metrics,
        checks: Mapping[str, HealthCheck],
        *,
        host: str = "127.0.0.1",
        port: int,
        check_timeout: float = 2.0,
    ) -> None:
        self._metrics = metrics
        self._checks = dict(checks)
        self._host = host
        self._port = port
        self._check_timeout = check_timeout
        # Checks that overran: held until their cancellation lands so none is collected pending.
        self._stragglers: set[asyncio.Task[bool]] = set()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def host(self) -> str:
        """The address listened on (the asked one until started)."""
        if self._runner is not None and self._runner.addresses:
            return str(self._runner.addresses[0][0])
        return self._host

    @property
    def port(self) -> int:
        """The port listened on, the OS's choice when 0 was asked (the asked one until started)."""
        return self._site.port if self._site is not None else self._port

    async def start(self) -> None:
        """Start listening; raise `OSError` if the address is taken."""
        if self._runner is not None:
            raise RuntimeError("the ops server is already running")
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._serve_metrics)
        # No access log: a scraper and a health probe would write a line every few seconds.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._site = runner, site
        log.info("ops endpoint on http://%s:%d (/healthz, /metrics)", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and cancel any check still running; safe to call twice."""
        runner, self._runner, self._site = self._runner, None, None
        if runner is not None:
            await runner.cleanup()
        stragglers = list(self._stragglers)
        for task in stragglers:
            task.cancel()
        if stragglers:
            await asyncio.wait(stragglers, timeout=self._check_timeout)

    async def _healthz(self, request: web.Request) -> web.Response:
        checks = await self._run_checks()
        healthy = all(checks.values())
        return web.json_response(
            {"status": "ok" if healthy else "failing", "checks": checks},
            status=200 if healthy else 503,
            headers={"Cache-Control": "no-store"},
        )

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        # On the loop, not in a thread: the gauges' callbacks read loop-owned state.
        body, content_type = self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _run_checks(self) -> dict[str, bool]:
        """Run every check at once; each passes only by returning True within the timeout."""
        tasks = {
            name: asyncio.create_task(_call(check), name=f"healthz {name}")
            for name, check in self._checks.items()
        }
        if tasks:
            # wait() rather than wait_for(): a check that ignores cancellation can't hold us up.
            await asyncio.wait(tasks.values(), timeout=self._check_timeout)
        results: dict[str, bool] = {}
        for name, task in tasks.items():
            results[name] = False
            if not task.done():
                log.warning("health check %r gave no answer in %g s", name, self._check_timeout)
                task.cancel()
                self._stragglers.add(task)
                task.add_done_callback(self._forget)
            elif task.cancelled():
                log.warning("health check %r was cancelled", name)
            elif (error := task.exception()) is not None:
                # The class name only: an exception's text may carry a URL with credentials.
                log.warning("health check %r raised %s", name, type(error).__name__)
            else:
                results[name] = task.result() is True
        return results

    def _forget(self, task: asyncio.Task[bool]) -> None:
        self._stragglers.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio doesn't report it as never retrieved


async def _call(check: HealthCheck) -> bool:
    # Inside the task, so a check that raises before returning its awaitable is still contained.
    return await check()
