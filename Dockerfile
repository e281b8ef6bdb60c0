# syntax=docker/dockerfile:1
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH="/app/.venv/bin:$PATH"

WORKDIR /app
RUN pip install --no-cache-dir uv==0.13.9 \
    && useradd --create-home --uid 10001 banana

COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --no-install-project

COPY bot ./bot
COPY cogs ./cogs
RUN mkdir -p /app/data && chown banana:banana /app/data

USER 10001
VOLUME ["/app/data"]
# python is PID 1 and handles SIGTERM itself: the bot closes its sessions and exits 0.
STOPSIGNAL SIGTERM
# The ops endpoint (/healthz, /metrics) is on by default, on loopback, so the health check has
# something to ask; compose binds it to 0.0.0.0 for a scraper on its network. Turning it off
# (METRICS_PORT empty) needs the health check off too: `docker run --no-healthcheck`.
ENV METRICS_HOST=127.0.0.1 \
    METRICS_PORT=8080
# Python's http.client: slim images have no curl, and urllib would follow HTTP(S)_PROXY.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import http.client as h, os, sys; c = h.HTTPConnection('127.0.0.1', int(os.environ.get('METRICS_PORT') or 8080), timeout=4); c.request('GET', '/healthz'); sys.exit(c.getresponse().status != 200)"]
CMD ["python", "-m", "bot"]
