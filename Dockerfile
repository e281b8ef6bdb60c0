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
CMD ["python", "-m", "bot"]
