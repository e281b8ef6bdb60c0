"""A throwaway loopback redis-server for tests; load with `pytest_plugins = ["tests.redis_server"]`.

`redis_server` starts one server per session; `redis_url` hands each test an empty database.
A missing `redis-server` binary fails the tests that need it: CI installs it, so a skip would
only hide that the shared-state tests never ran.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

_START_TIMEOUT_SECONDS = 10.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(binary: str, directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server on a free port and wait for PING; retry if another process took the port."""
    log = directory / "redis.log"
    problems = []
    for _ in range(3):
        port = _free_port()
        command = [
            *(binary, "--bind", "127.0.0.1", "--port", str(port)),
            *("--save", "", "--appendonly", "no", "--dir", str(directory), "--logfile", str(log)),
        ]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while process.poll() is None and time.monotonic() < deadline:
            try:
                with redis.Redis.from_url(url, socket_timeout=1) as client:
                    if client.ping():
                        return process, url
            except redis.ConnectionError:
                time.sleep(0.01)
        _stop(process)
        problems.append(log.read_text() if log.exists() else f"exit status {process.returncode}")
    pytest.fail("redis-server did not start:\n" + "\n".join(problems), pytrace=False)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The URL of a redis-server on 127.0.0.1 that lives for the test session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed: the Redis tests need it on PATH "
            "(Debian/Ubuntu: apt-get install redis-server)",
            pytrace=False,
        )
    with tempfile.TemporaryDirectory(prefix="redis-test-") as directory:
        process, url = _start(binary, Path(directory))
        try:
            yield url
        finally:
            _stop(process)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's server, emptied for this test."""
    with redis.Redis.from_url(redis_server) as client:
        client.flushall()
    return redis_server
