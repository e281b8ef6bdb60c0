"""The real GeminiClient over HTTP against the loopback FakeGemini: success, failures, retries."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pybase64
import pytest
from PIL import Image

from bot.gemini import (
    OUTPUT_TOKENS_PER_IMAGE,
    AuthenticationFailed,
    BadRequest,
    ConnectionFailed,
    ContentBlocked,
    DownloadFailed,
    GeminiClient,
    GeminiError,
    GenerationResult,
    ImageRequest,
    InputImage,
    InvalidRequest,
    MalformedResponse,
    ModelNotFound,
    NoImageReturned,
    ProviderUnavailable,
    RateLimited,
    RequestTimedOut,
)
from bot.settings import load_settings
from tests.fakes.gemini import (
    DEFAULT_CAPTION,
    DEFAULT_MODEL,
    DROP_CONNECTION,
    FakeGemini,
    FakeReply,
    Responder,
    fake_png,
    finish_refusal,
    google_error,
    image_response,
    openai_error,
    plain_error,
    prompt_blocked,
    text_only,
    url_response,
)

KEY = "AIzaSy-TEST-5ecret-k3y-0123456789"
BAD_BASE64 = {"inlineData": {"mimeType": "image/png", "data": "iVBOR%%%"}}


def jpeg(width: int = 40, height: int = 30) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "orange").save(buffer, "JPEG")
    return buffer.getvalue()


class RecordingSleep:
    """Stands in for asyncio.sleep: records the waits and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    async with FakeGemini(api_key=KEY) as fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def make_client(
    fake: FakeGemini, session: aiohttp.ClientSession, sleeps: RecordingSleep
) -> Callable[..., GeminiClient]:
    def make(**options: Any) -> GeminiClient:
        defaults: dict[str, Any] = {
            "api_key": KEY,
            "base_url": fake.base_url,
            "model": DEFAULT_MODEL,
            "timeout": 5,
            "sleep": sleeps,
        }
        return GeminiClient(session, **(defaults | options))

    return make


@pytest.fixture
def client(make_client: Callable[..., GeminiClient]) -> GeminiClient:
    return make_client()


# Success --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "ratio", "pixels"),
    [
        ("512", "1:1", (512, 512)),
        ("1K", "16:9", (1024, 576)),
        ("2K", "3:4", (1536, 2048)),
        ("4K", "21:9", (4096, 1755)),
    ],
)
async def test_generates_a_real_png_of_the_requested_size(
    client: GeminiClient, size: str, ratio: str, pixels: tuple[int, int]
) -> None:
    result = await client.generate(
        ImageRequest("a lighthouse", aspect_ratio=ratio, image_size=size)
    )

    (image,) = result.images
    assert (image.mime_type, image.extension) == ("image/png", "png")
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert (decoded.format, decoded.size) == ("PNG", pixels)
    assert result.caption == DEFAULT_CAPTION
    assert result.finish_reason == "STOP"
    assert result.usage.output_tokens == OUTPUT_TOKENS_PER_IMAGE[size]
    assert result.model_version == DEFAULT_MODEL


async def test_the_request_on_the_wire_has_the_documented_shape(
    client: GeminiClient, fake: FakeGemini
) -> None:
    photo, sketch = jpeg(), fake_png(30, 20)
    request = ImageRequest(
        "add a llama next to me",
        images=(InputImage(photo, "image/jpeg"), InputImage(sketch, "image/png")),
        aspect_ratio="4:3",
        image_size="2K",
        with_caption=False,
    )

    result = await client.generate(request)

    (sent,) = fake.requests
    assert sent.path == f"/v1beta/models/{DEFAULT_MODEL}:generateContent"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.json["generationConfig"] == {
        "responseModalities": ["IMAGE"],
        "imageConfig": {"aspectRatio": "4:3", "imageSize": "2K"},
    }
    parts = sent.json["contents"][0]["parts"]
    assert parts[0] == {"text": "add a llama next to me"}
    assert [p["inline_data"]["mime_type"] for p in parts[1:]] == ["image/jpeg", "image/png"]
    assert [pybase64.b64decode(p["inline_data"]["data"]) for p in parts[1:]] == [photo, sketch]
    assert result.caption == ""  # IMAGE-only answers carry no caption


async def test_the_key_goes_in_the_query_by_default(client: GeminiClient, fake: FakeGemini) -> None:
    await client.generate(ImageRequest("a cat"))

    (sent,) = fake.requests
    assert sent.query == {"key": KEY}
    assert "x-goog-api-key" not in sent.headers


async def test_the_key_can_go_in_a_header_instead(
    make_client: Callable[..., GeminiClient], fake: FakeGemini
) -> None:
    await make_client(key_in="header").generate(ImageRequest("a cat"))

    (sent,) = fake.requests
    assert sent.query == {}
    assert sent.headers["x-goog-api-key"] == KEY


async def test_from_settings_uses_the_operators_configuration(
    fake: FakeGemini,
    session: aiohttp.ClientSession,
    sleeps: RecordingSleep,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("GEMINI_BASE_URL", fake.base_url)
    monkeypatch.setenv("GEMINI_KEY_IN", "header")
    monkeypatch.setenv("GEMINI_MAX_RETRIES", "0")
    settings = load_settings(None)
    client = GeminiClient.from_settings(session, settings, sleep=sleeps)

    fake.enqueue(google_error(503, "UNAVAILABLE", "The model is overloaded."))
    with pytest.raises(ProviderUnavailable):
        await client.generate(ImageRequest("a cat"))
    await client.generate(ImageRequest("a cat"))

    assert [r.headers["x-goog-api-key"] for r in fake.requests] == [KEY, KEY]
    assert sleeps.waits == []  # max_retries=0 came from the settings


async def test_jpeg_bytes_labelled_png_come_back_as_jpeg(
    client: GeminiClient, fake: FakeGemini
) -> None:
    fake.enqueue(image_response(jpeg(), mime_label="image/png"))

    (image,) = (await client.generate(ImageRequest("a cat"))).images

    assert (image.mime_type, image.extension) == ("image/jpeg", "jpg")
    assert image.data == jpeg()


async def test_a_snake_case_answer_works_like_a_camel_case_one(
    client: GeminiClient, fake: FakeGemini
) -> None:
    fake.enqueue(image_response(fake_png(64, 48), snake_case=True, output_tokens=747))

    result = await client.generate(ImageRequest("a cat"))

    assert result.images[0].data == fake_png(64, 48)
    assert result.caption == DEFAULT_CAPTION
    assert result.usage.output_tokens == 747


async def test_the_final_image_is_used_not_the_thought_draft(
    client: GeminiClient, fake: FakeGemini
) -> None:
    fake.enqueue(image_response(fake_png(300, 200)))

    (image,) = (await client.generate(ImageRequest("a cat"))).images

    assert image.data == fake_png(300, 200)  # the draft in the thoughts is 64x64


async def test_with_only_thought_images_the_last_draft_is_returned(
    client: GeminiClient, fake: FakeGemini
) -> None:
    fake.enqueue(image_response(fake_png(300, 200), only_thought_images=True))

    (image,) = (await client.generate(ImageRequest("a cat"))).images

    assert image.data == fake_png(300, 200)


# Failures that must not be retried --------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        pytest.param(google_error(400, "INVALID_ARGUMENT", "Bad."), BadRequest, id="400"),
        pytest.param(google_error(403, "PERMISSION_DENIED", "No."), AuthenticationFailed, id="403"),
        pytest.param(openai_error(401, "Bad token"), AuthenticationFailed, id="401-openai"),
        pytest.param(google_error(404, "NOT_FOUND", "Not found."), ModelNotFound, id="404"),
        pytest.param(prompt_blocked("PROHIBITED_CONTENT"), ContentBlocked, id="prompt-blocked"),
        pytest.param(finish_refusal("IMAGE_SAFETY"), ContentBlocked, id="candidate-blocked"),
        pytest.param(finish_refusal("NO_IMAGE", text="No."), NoImageReturned, id="no-image"),
        pytest.param(text_only("Which breed?"), NoImageReturned, id="text-only"),
        pytest.param(FakeReply(body=b"<html>"), MalformedResponse, id="invalid-json"),
        pytest.param(FakeReply(json=[{"candidates": []}]), MalformedResponse, id="json-list"),
        pytest.param(image_response(b"not an image"), MalformedResponse, id="not-an-image"),
        pytest.param(
            FakeReply(json={"candidates": [{"content": {"parts": [BAD_BASE64]}}]}),
            MalformedResponse,
            id="bad-base64",
        ),
    ],
)
async def test_final_failures_are_raised_at_once_without_retry(
    client: GeminiClient,
    fake: FakeGemini,
    sleeps: RecordingSleep,
    reply: FakeReply,
    kind: type[GeminiError],
) -> None:
    fake.enqueue(reply)

    with pytest.raises(kind):
        await client.generate(ImageRequest("a cat"))

    assert len(fake.requests) == 1
    assert sleeps.waits == []


async def test_block_and_refusal_details_reach_the_caller(
    client: GeminiClient, fake: FakeGemini
) -> None:
    fake.enqueue(
        prompt_blocked("SAFETY", "The prompt was blocked."),
        finish_refusal("IMAGE_SAFETY", "The image was blocked."),
        text_only("Do you want it in colour?"),
    )

    with pytest.raises(ContentBlocked) as prompt:
        await client.generate(ImageRequest("a cat"))
    with pytest.raises(ContentBlocked) as candidate:
        await client.generate(ImageRequest("a cat"))
    with pytest.raises(NoImageReturned) as question:
        await client.generate(ImageRequest("a cat"))

    assert (prompt.value.stage, prompt.value.reason) == ("prompt", "SAFETY")
    assert prompt.value.message == "The prompt was blocked."
    assert (candidate.value.stage, candidate.value.reason) == ("candidate", "IMAGE_SAFETY")
    assert candidate.value.message == "The image was blocked."
    assert (question.value.reason, question.value.text) == ("STOP", "Do you want it in colour?")


async def test_a_wrong_key_is_an_authentication_failure(
    make_client: Callable[..., GeminiClient], fake: FakeGemini
) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        await make_client(api_key="AIza-wrong").generate(ImageRequest("a cat"))

    assert caught.value.status == 400  # what Google really sends, with reason API_KEY_INVALID
    assert len(fake.requests) == 1


async def test_an_unknown_model_is_model_not_found(
    make_client: Callable[..., GeminiClient],
) -> None:
    with pytest.raises(ModelNotFound):
        await make_client(model="gemini-3.1-flash-image-preview").generate(ImageRequest("a cat"))


@pytest.mark.parametrize(
    "request_",
    [
        ImageRequest("a cat", image_size="1k"),
        ImageRequest("a cat", aspect_ratio="2:1"),
        ImageRequest("a cat", images=(InputImage(jpeg(), "image/jpeg"),) * 15),
    ],
    ids=["lowercase-k", "ratio", "15-images"],
)
async def test_invalid_requests_never_reach_the_api(
    client: GeminiClient, fake: FakeGemini, request_: ImageRequest
) -> None:
    with pytest.raises(InvalidRequest):
        await client.generate(request_)

    assert fake.requests == []


# Memory ----------------------------------------------------------------------------------------


async def test_answers_beyond_the_held_limit_wait_unread_until_a_slot_frees(
    make_client: Callable[..., GeminiClient], fake: FakeGemini
) -> None:
    client = make_client(held_answers=1)
    second_arrived = asyncio.Event()

    async def second() -> GenerationResult:
        result = await client.generate(ImageRequest("second"))
        second_arrived.set()
        return result

    async with client.generating(ImageRequest("first")) as first:
        task = asyncio.create_task(second())
        async with asyncio.timeout(5):
            while len(fake.requests) < 2:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # answered by the fake, but not read while the first is held
        assert not second_arrived.is_set()
    assert first.images
    async with asyncio.timeout(5):
        assert (await task).images


async def test_waiting_for_an_answer_slot_is_not_counted_against_the_timeout(
    make_client: Callable[..., GeminiClient], fake: FakeGemini
) -> None:
    client = make_client(held_answers=1, timeout=0.5)
    # Several MB: more than aiohttp buffers, so reading it waits on the socket.
    noisy = Image.frombytes("RGB", (1024, 1024), random.Random(1).randbytes(3 * 2**20))
    buffer = io.BytesIO()
    noisy.save(buffer, "PNG", compress_level=0)
    fake.enqueue(image_response(jpeg()), image_response(buffer.getvalue()))

    async with client.generating(ImageRequest("first")):
        task = asyncio.create_task(client.generate(ImageRequest("second")))
        await asyncio.sleep(1.0)  # twice the timeout, while its answer waits for the slot
    async with asyncio.timeout(5):
        assert (await task).images
    assert len(fake.requests) == 2, "an answer that had arrived was asked for again"


async def test_an_answer_that_fails_gives_its_slot_back(
    make_client: Callable[..., GeminiClient], fake: FakeGemini
) -> None:
    client = make_client(held_answers=1)
    fake.enqueue(FakeReply(body=b'{"candidates": [{"content": {"parts": ['))

    with pytest.raises(MalformedResponse):
        await client.generate(ImageRequest("cut short"))
    async with asyncio.timeout(5):
        assert (await client.generate(ImageRequest("whole"))).images


# Retries --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        google_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted."),
        google_error(500, "INTERNAL", "Internal error encountered."),
        plain_error(502, "<html><title>502 Bad Gateway</title></html>"),
        google_error(503, "UNAVAILABLE", "The model is overloaded."),
        google_error(504, "DEADLINE_EXCEEDED", "Deadline exceeded."),
        FakeReply(status=408),
        DROP_CONNECTION,
    ],
    ids=["429", "500", "502-html", "503", "504", "408", "dropped-connection"],
)
async def test_a_transient_failure_is_retried_and_the_image_arrives(
    make_client: Callable[..., GeminiClient],
    fake: FakeGemini,
    sleeps: RecordingSleep,
    reply: FakeReply,
) -> None:
    retries: list[tuple[int, float, GeminiError]] = []
    client = make_client(on_retry=lambda *event: retries.append(event))
    fake.enqueue(reply)

    result = await client.generate(ImageRequest("a cat"))

    assert result.images
    assert len(fake.requests) == 2
    assert len(sleeps.waits) == 1
    assert 0 <= sleeps.waits[0] <= 1  # first backoff step with full jitter
    [(attempt, wait, error)] = retries
    assert (attempt, wait) == (1, sleeps.waits[0])
    assert isinstance(error, ConnectionFailed | RateLimited | ProviderUnavailable)


async def test_persistent_503_gives_up_after_max_retries_with_growing_backoff(
    make_client: Callable[..., GeminiClient], fake: FakeGemini, sleeps: RecordingSleep
) -> None:
    fake.enqueue(*[google_error(503, "UNAVAILABLE", "Overloaded.")] * 5)

    with pytest.raises(ProviderUnavailable) as caught:
        await make_client(max_retries=3, max_retry_wait=600).generate(ImageRequest("a cat"))

    assert caught.value.message == "Overloaded."
    assert len(fake.requests) == 4
    assert len(sleeps.waits) == 3
    assert all(0 <= wait <= 2**step for step, wait in enumerate(sleeps.waits))


async def test_the_servers_retry_delay_is_waited(
    client: GeminiClient, fake: FakeGemini, sleeps: RecordingSleep
) -> None:
    fake.enqueue(google_error(429, "RESOURCE_EXHAUSTED", "Slow down.", retry_delay=12.5))

    await client.generate(ImageRequest("a cat"))

    assert sleeps.waits == [12.5]


async def test_a_retry_after_header_is_waited(
    client: GeminiClient, fake: FakeGemini, sleeps: RecordingSleep
) -> None:
    fake.enqueue(FakeReply(status=503, headers={"Retry-After": "7"}))

    await client.generate(ImageRequest("a cat"))

    assert sleeps.waits == [7]


async def test_a_daily_quota_429_fails_fast_with_its_retry_after(
    client: GeminiClient, fake: FakeGemini, sleeps: RecordingSleep
) -> None:
    fake.enqueue(google_error(429, "RESOURCE_EXHAUSTED", "Daily quota.", retry_delay=3600))

    with pytest.raises(RateLimited) as caught:
        await client.generate(ImageRequest("a cat"))

    assert caught.value.retry_after == 3600
    assert sleeps.waits == []
    assert len(fake.requests) == 1


async def test_the_total_wait_is_capped_across_retries(
    make_client: Callable[..., GeminiClient], fake: FakeGemini, sleeps: RecordingSleep
) -> None:
    fake.enqueue(*[google_error(429, "RESOURCE_EXHAUSTED", "Slow.", retry_delay=4)] * 4)

    with pytest.raises(RateLimited):
        await make_client(max_retries=10, max_retry_wait=10).generate(ImageRequest("a cat"))

    assert sleeps.waits == [4, 4]  # a third wait would take the total to 12 s
    assert len(fake.requests) == 3


async def test_a_slow_answer_times_out_and_the_retry_succeeds(
    make_client: Callable[..., GeminiClient], fake: FakeGemini
) -> None:
    retries: list[tuple[int, float, GeminiError]] = []
    fake.enqueue(FakeReply(delay=10))
    client = make_client(timeout=0.3, on_retry=lambda *event: retries.append(event))

    started = time.monotonic()
    result = await client.generate(ImageRequest("a cat"))

    assert result.images
    assert time.monotonic() - started < 3
    assert isinstance(retries[0][2], RequestTimedOut)


async def test_a_timeout_on_every_attempt_is_raised(
    make_client: Callable[..., GeminiClient], fake: FakeGemini
) -> None:
    fake.enqueue(FakeReply(delay=10), FakeReply(delay=10))

    with pytest.raises(RequestTimedOut):
        await make_client(timeout=0.2, max_retries=1).generate(ImageRequest("a cat"))

    assert len(fake.requests) == 2


async def test_an_unreachable_host_is_a_connection_failure(
    session: aiohttp.ClientSession, sleeps: RecordingSleep
) -> None:
    client = GeminiClient(
        session,
        api_key=KEY,
        base_url=f"http://127.0.0.1:{closed_port()}",
        model=DEFAULT_MODEL,
        max_retries=2,
        sleep=sleeps,
    )

    with pytest.raises(ConnectionFailed):
        await client.generate(ImageRequest("a cat"))

    assert len(sleeps.waits) == 2


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_redirect_is_not_followed_so_the_key_goes_nowhere_else(
    make_client: Callable[..., GeminiClient], fake: FakeGemini
) -> None:
    elsewhere = fake.host_file(fake_png(8, 8))
    fake.enqueue(FakeReply(status=302, headers={"Location": elsewhere}))

    with pytest.raises(BadRequest):
        await make_client(key_in="header").generate(ImageRequest("a cat"))

    assert fake.downloads == []


# URL outputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["fileData", "text", "markdown"])
async def test_an_image_returned_as_a_url_is_downloaded_without_the_key(
    client: GeminiClient, fake: FakeGemini, where: Any
) -> None:
    png = fake_png(200, 100)
    fake.enqueue(url_response(fake.host_file(png), where=where))

    result = await client.generate(ImageRequest("a cat"))

    assert [image.data for image in result.images] == [png]
    assert result.caption == DEFAULT_CAPTION
    (download,) = fake.downloads
    assert download.query == {}
    assert KEY not in json.dumps(dict(download.headers))


async def test_a_data_url_in_text_needs_no_download(client: GeminiClient, fake: FakeGemini) -> None:
    png = fake_png(20, 10)
    fake.enqueue(
        url_response(f"data:image/png;base64,{pybase64.b64encode_as_string(png)}", where="text")
    )

    (image,) = (await client.generate(ImageRequest("a cat"))).images

    assert image.data == png
    assert fake.downloads == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "streamed"])
async def test_a_download_over_the_size_cap_is_refused(
    make_client: Callable[..., GeminiClient], fake: FakeGemini, chunked: bool
) -> None:
    huge = fake_png(16, 16) + bytes(3 * 2**20)
    fake.enqueue(url_response(fake.host_file(huge, chunked=chunked)))

    with pytest.raises(DownloadFailed, match="larger than"):
        await make_client(max_download_bytes=2**20).generate(ImageRequest("a cat"))


async def test_a_slow_download_times_out(
    make_client: Callable[..., GeminiClient], fake: FakeGemini
) -> None:
    fake.enqueue(url_response(fake.host_file(fake_png(16, 16), delay=10)))

    started = time.monotonic()
    with pytest.raises(DownloadFailed, match="no complete answer"):
        await make_client(timeout=0.3).generate(ImageRequest("a cat"))
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "url", ["ftp://example.invalid/cat.png", "file:///etc/passwd", "gs://bucket/cat.png"]
)
async def test_only_http_urls_are_fetched(client: GeminiClient, fake: FakeGemini, url: str) -> None:
    fake.enqueue(url_response(url))

    with pytest.raises(DownloadFailed, match="only http"):
        await client.generate(ImageRequest("a cat"))


async def test_a_download_that_is_not_an_image_fails(
    client: GeminiClient, fake: FakeGemini
) -> None:
    fake.enqueue(
        url_response(fake.host_file(b"<html>login</html>", "text/html")),
        url_response(f"{fake.base_url}/files/missing"),
    )

    with pytest.raises(DownloadFailed, match="not a PNG"):
        await client.generate(ImageRequest("a cat"))
    with pytest.raises(DownloadFailed, match="HTTP 404"):
        await client.generate(ImageRequest("a cat"))


# Secrets and the event loop ---------------------------------------------------------------------


def _texts(error: BaseException) -> list[str]:
    """str and repr of the error and of everything chained to it."""
    texts, seen, todo = [], set(), [error]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
    return texts


@pytest.mark.parametrize("key_in", ["query", "header"])
@pytest.mark.parametrize(
    "scenario",
    ["echoing-400", "echoing-openai", "html-500", "timeout", "dropped", "unreachable", "download"],
)
async def test_the_key_never_appears_in_errors_or_logs(
    fake: FakeGemini,
    session: aiohttp.ClientSession,
    sleeps: RecordingSleep,
    caplog: pytest.LogCaptureFixture,
    scenario: str,
    key_in: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    base_url = fake.base_url
    echo = f"POST {fake.base_url}/v1beta/models/x:generateContent?key={KEY} with key {KEY}"
    replies: dict[str, Responder] = {
        "echoing-400": google_error(400, "INVALID_ARGUMENT", echo),
        "echoing-openai": openai_error(429, echo, "rate_limit", KEY),
        "html-500": plain_error(500, f"<html><body>{echo}</body></html>"),
        "timeout": FakeReply(delay=10),
        "dropped": DROP_CONNECTION,
        "download": url_response(f"{fake.base_url}/files/missing?key={KEY}"),
    }
    if scenario == "unreachable":
        base_url = f"http://127.0.0.1:{closed_port()}"
    else:
        fake.enqueue(*[replies[scenario]] * 3)
    client = GeminiClient(
        session,
        api_key=KEY,
        base_url=base_url,
        model=DEFAULT_MODEL,
        key_in=key_in,  # type: ignore[arg-type]
        timeout=0.3,
        max_retries=2,
        sleep=sleeps,
    )

    with pytest.raises(GeminiError) as caught:
        await client.generate(ImageRequest("a cat"))

    for text in _texts(caught.value):
        assert KEY not in text
    assert caplog.records, "the attempts should have been logged"
    for record in caplog.records:
        assert KEY not in record.getMessage()
        assert KEY not in (logging.Formatter().format(record))


# The fake itself: other suites rely on it answering as Google does ------------------------------


def endpoint(fake: FakeGemini) -> str:
    return f"{fake.base_url}/v1beta/models/{DEFAULT_MODEL}:generateContent"


def raw_payload(**config: Any) -> dict[str, Any]:
    return {
        "contents": [{"role": "user", "parts": [{"text": "a cat"}]}],
        "generationConfig": {"responseModalities": ["IMAGE"], **config},
    }


@pytest.mark.parametrize(
    ("payload", "query", "status", "code"),
    [
        pytest.param(raw_payload(), {"key": KEY}, 200, None, id="valid"),
        pytest.param(raw_payload(), {}, 403, "PERMISSION_DENIED", id="no-key"),
        pytest.param(raw_payload(), {"key": "nope"}, 400, "INVALID_ARGUMENT", id="wrong-key"),
        pytest.param(
            raw_payload(imageConfig={"imageSize": "1k"}),
            {"key": KEY},
            400,
            "INVALID_ARGUMENT",
            id="lowercase-k",
        ),
        pytest.param(
            raw_payload(imageConfig={"aspectRatio": "2:1"}),
            {"key": KEY},
            400,
            "INVALID_ARGUMENT",
            id="ratio",
        ),
        pytest.param(
            raw_payload(candidateCount=2), {"key": KEY}, 400, "INVALID_ARGUMENT", id="candidates"
        ),
    ],
)
async def test_the_fake_answers_as_google_does(
    fake: FakeGemini,
    session: aiohttp.ClientSession,
    payload: dict[str, Any],
    query: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    async with session.post(endpoint(fake), params=query, json=payload) as response:
        body = await response.json()

    assert response.status == status
    assert body.get("error", {}).get("status") == code


async def test_the_fake_rejects_too_many_or_broken_reference_images(
    fake: FakeGemini, session: aiohttp.ClientSession
) -> None:
    png = {
        "inline_data": {
            "mime_type": "image/png",
            "data": pybase64.b64encode_as_string(fake_png(8, 8)),
        }
    }
    broken = {"inline_data": {"mime_type": "image/png", "data": "aGVsbG8="}}

    for parts in ([png] * 15, [broken]):
        payload = {"contents": [{"parts": [{"text": "a cat"}, *parts]}]}
        async with session.post(endpoint(fake), params={"key": KEY}, json=payload) as response:
            assert response.status == 400
