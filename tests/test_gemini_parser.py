"""Unit tests of the pure Gemini wire code: payloads, responses, errors and request limits."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pybase64
import pytest

from bot.gemini import (
    ASPECT_RATIOS,
    AuthenticationFailed,
    BadRequest,
    ContentBlocked,
    ImageRequest,
    InputImage,
    InvalidRequest,
    MalformedResponse,
    ModelNotFound,
    NoImageReturned,
    ProviderUnavailable,
    RateLimited,
    Usage,
    build_payload,
    parse_error,
    parse_response,
    validate_request,
)
from bot.gemini.parser import (
    InlineDataSplitter,
    InlineSource,
    ParsedResponse,
    URLSource,
    parse_body,
)
from tests.fakes.gemini import fake_png, image_response, text_only

FINAL = pybase64.b64encode_as_string(b"\x89PNG\r\n\x1a\n final image")
DRAFT = pybase64.b64encode_as_string(b"\x89PNG\r\n\x1a\n draft")
CDN = "https://cdn.example.com/out/abc123.png"

# The shape generateContent returns for this model (camelCase), trimmed of long base64.
RECORDED = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "**Framing the shot**\n\nI'm centring the llama.", "thought": True},
                    {"inlineData": {"mimeType": "image/png", "data": DRAFT}, "thought": True},
                    {
                        "inlineData": {"mimeType": "image/png", "data": FINAL},
                        "thoughtSignature": "c2lnbmF0dXJl",
                    },
                    {"text": "Here is the llama next to you."},
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 270,
        "candidatesTokenCount": 1120,
        "totalTokenCount": 1390,
        "thoughtsTokenCount": 180,
    },
    "modelVersion": "gemini-3.1-flash-image",
    "responseId": "r-1",
}

# The seed provider's documented spelling.
RECORDED_SNAKE = {
    "candidates": [
        {
            "content": {
                "parts": [
                    {"inline_data": {"mime_type": "image/png", "data": FINAL}},
                    {"text": "A sunset over mountains."},
                ]
            },
            "finish_reason": "STOP",
        }
    ],
    "usage_metadata": {
        "prompt_token_count": 9,
        "candidates_token_count": 1680,
        "total_token_count": 1689,
    },
    "model_version": "gemini-3.1-flash-image",
}


def answer(*parts: dict[str, Any], finish: str | None = "STOP", **candidate: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}, **candidate}
    if finish is not None:
        fields["finishReason"] = finish
    return {"candidates": [fields]}


def image_part(data: str = FINAL, **extra: Any) -> dict[str, Any]:
    return {"inlineData": {"mimeType": "image/png", "data": data}, **extra}


# build_payload ---------------------------------------------------------------------------------


def test_payload_puts_the_prompt_first_then_each_reference_as_inline_data() -> None:
    jpeg, png = b"\xff\xd8\xff jpeg bytes", b"\x89PNG\r\n\x1a\n png bytes"
    request = ImageRequest(
        "put a llama next to me",
        images=(InputImage(jpeg, "image/jpeg"), InputImage(png, "image/png")),
        aspect_ratio="16:9",
        image_size="2K",
    )

    payload = build_payload(request)

    parts = payload["contents"][0]["parts"]
    assert payload["contents"][0]["role"] == "user"
    assert parts[0] == {"text": "put a llama next to me"}
    assert [p["inline_data"]["mime_type"] for p in parts[1:]] == ["image/jpeg", "image/png"]
    assert [pybase64.b64decode(p["inline_data"]["data"]) for p in parts[1:]] == [jpeg, png]
    assert payload["generationConfig"] == {
        "responseModalities": ["TEXT", "IMAGE"],
        "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"},
    }
    json.dumps(payload)  # the payload is sent as JSON: it must serialise as it is


def test_payload_without_caption_or_options_asks_for_image_only_and_model_defaults() -> None:
    payload = build_payload(ImageRequest("a fox", with_caption=False))

    assert payload["generationConfig"] == {"responseModalities": ["IMAGE"]}
    assert payload["contents"][0]["parts"] == [{"text": "a fox"}]


def test_payload_sends_only_the_image_options_that_were_set() -> None:
    payload = build_payload(ImageRequest("a fox", image_size="512"))

    assert payload["generationConfig"]["imageConfig"] == {"imageSize": "512"}


# validate_request ------------------------------------------------------------------------------


def test_a_request_within_every_limit_is_accepted() -> None:
    images = tuple(InputImage(b"\x89PNG\r\n\x1a\n", "image/png") for _ in range(14))
    for ratio in ASPECT_RATIOS:
        validate_request(ImageRequest("a cat", images=images, aspect_ratio=ratio, image_size="4K"))


@pytest.mark.parametrize(
    ("request_", "complaint"),
    [
        (ImageRequest(""), "prompt"),
        (ImageRequest("   \n"), "prompt"),
        (ImageRequest("a cat", image_size="1k"), "size"),
        (ImageRequest("a cat", image_size="8K"), "size"),
        (ImageRequest("a cat", aspect_ratio="7:5"), "aspect ratio"),
        (ImageRequest("a cat", aspect_ratio="16x9"), "aspect ratio"),
        (ImageRequest("a cat", images=(InputImage(b"x", "image/png"),) * 15), "at most 14"),
        (ImageRequest("a cat", images=(InputImage(b"GIF89a", "image/gif"),)), "image/gif"),
        (ImageRequest("a cat", images=(InputImage(b"", "image/png"),)), "empty"),
    ],
)
def test_requests_the_api_would_reject_are_refused_before_sending(
    request_: ImageRequest, complaint: str
) -> None:
    with pytest.raises(InvalidRequest, match=complaint):
        validate_request(request_)


def test_references_whose_base64_exceeds_the_inline_limit_are_refused() -> None:
    # 7 MB twice is 14 MB raw but ~18.7 MB as base64, plus a third image: over the ~19 MB limit.
    big = InputImage(b"\0" * 7_000_000, "image/jpeg")
    validate_request(ImageRequest("a cat", images=(big, big)))
    with pytest.raises(InvalidRequest, match="limit"):
        validate_request(ImageRequest("a cat", images=(big, big, big)))


# parse_response: images, caption, metadata ------------------------------------------------------


def test_recorded_camel_case_answer_yields_final_image_caption_and_usage() -> None:
    parsed = parse_response(RECORDED)

    assert parsed.images == (InlineSource(FINAL),)
    assert parsed.caption == "Here is the llama next to you."
    assert parsed.finish_reason == "STOP"
    assert parsed.usage == Usage(prompt_tokens=270, output_tokens=1120, total_tokens=1390)
    assert parsed.model_version == "gemini-3.1-flash-image"


def test_recorded_snake_case_answer_is_read_the_same_way() -> None:
    parsed = parse_response(RECORDED_SNAKE)

    assert parsed.images == (InlineSource(FINAL),)
    assert parsed.caption == "A sunset over mountains."
    assert parsed.finish_reason == "STOP"
    assert parsed.usage == Usage(prompt_tokens=9, output_tokens=1680, total_tokens=1689)
    assert parsed.model_version == "gemini-3.1-flash-image"


def test_thought_text_never_reaches_the_caption() -> None:
    body = answer(
        {"text": "thinking about it", "thought": True},
        image_part(),
        {"text": "First line."},
        {"text": "Second line.\n"},
    )

    assert parse_response(body).caption == "First line.\nSecond line."


def test_when_only_thought_images_arrive_the_last_one_is_used() -> None:
    body = answer(
        {"text": "drafting", "thought": True},
        image_part(DRAFT, thought=True),
        image_part(FINAL, thought=True),
    )

    assert parse_response(body).images == (InlineSource(FINAL),)


def test_the_mime_label_is_not_trusted_or_required() -> None:
    # Bytes are sniffed later by the client; a wrong or missing label must not drop the image.
    body = answer({"inlineData": {"mimeType": "text/plain", "data": FINAL}}, {"inline_data": {}})

    assert parse_response(body).images == (InlineSource(FINAL),)


def test_missing_usage_and_model_version_are_none() -> None:
    parsed = parse_response(answer(image_part(), finish=None))

    assert parsed.usage == Usage(None, None, None)
    assert parsed.model_version is None
    assert parsed.finish_reason is None


@pytest.mark.parametrize("finish", ["MAX_TOKENS", "SAFETY", "IMAGE_OTHER", "WHATEVER_NEXT"])
def test_an_image_wins_whatever_the_finish_reason(finish: str) -> None:
    assert parse_response(answer(image_part(), finish=finish)).images == (InlineSource(FINAL),)


# parse_response: URL outputs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "part",
    [
        {"fileData": {"mimeType": "image/png", "fileUri": CDN}},
        {"file_data": {"mime_type": "image/png", "file_uri": CDN}},
        {"text": CDN},
        {"text": f"  {CDN}\n"},
        {"text": f"![image]({CDN})"},
    ],
    ids=["fileData", "file_data", "bare-link", "padded-link", "markdown"],
)
def test_an_image_url_is_found_wherever_the_provider_puts_it(part: dict[str, Any]) -> None:
    parsed = parse_response(answer(part, {"text": "Your sunset."}))

    assert parsed.images == (URLSource(CDN),)
    assert parsed.caption == "Your sunset."


def test_markdown_image_inside_a_caption_is_cut_out_of_the_caption() -> None:
    parsed = parse_response(answer({"text": f"Here you go:\n\n![sunset]({CDN})\n\nEnjoy!"}))

    assert parsed.images == (URLSource(CDN),)
    assert parsed.caption == "Here you go:\n\n\n\nEnjoy!"


def test_a_link_on_its_own_line_after_the_caption_is_the_image() -> None:
    parsed = parse_response(answer({"text": f"A red fox.\n{CDN}"}))

    assert parsed.images == (URLSource(CDN),)
    assert parsed.caption == "A red fox."


@pytest.mark.parametrize(
    "text",
    [f"data:image/png;base64,{FINAL}", f"![x](data:image/png;base64,{FINAL})"],
    ids=["bare", "markdown"],
)
def test_a_base64_data_url_in_text_is_an_inline_image(text: str) -> None:
    assert parse_response(answer({"text": text})).images == (InlineSource(FINAL),)


def test_a_data_url_file_uri_is_an_inline_image() -> None:
    part = {"fileData": {"fileUri": f"data:image/jpeg;base64,{FINAL}"}}

    assert parse_response(answer(part)).images == (InlineSource(FINAL),)


def test_a_link_inside_prose_is_caption_text_not_an_image() -> None:
    text = "I can't create that. See https://policies.google.com/terms for details."

    with pytest.raises(NoImageReturned) as caught:
        parse_response(answer({"text": text}))

    assert caught.value.text == text


def test_inline_images_win_over_links_in_text() -> None:
    parsed = parse_response(answer({"text": CDN}, image_part()))

    assert parsed.images == (InlineSource(FINAL),)
    assert parsed.caption == ""


# parse_response: blocks and refusals -----------------------------------------------------------


@pytest.mark.parametrize(
    "reason", ["SAFETY", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "IMAGE_SAFETY"]
)
def test_a_blocked_prompt_reports_its_reason(reason: str) -> None:
    body = {"promptFeedback": {"blockReason": reason, "blockReasonMessage": "not allowed"}}

    with pytest.raises(ContentBlocked) as caught:
        parse_response(body)

    assert (caught.value.stage, caught.value.reason) == ("prompt", reason)
    assert caught.value.message == "not allowed"


def test_a_blocked_prompt_in_snake_case_without_message() -> None:
    with pytest.raises(ContentBlocked) as caught:
        parse_response({"prompt_feedback": {"block_reason": "SAFETY"}, "candidates": []})

    assert (caught.value.stage, caught.value.reason, caught.value.message) == (
        "prompt",
        "SAFETY",
        None,
    )


@pytest.mark.parametrize(
    "reason",
    [
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_RECITATION",
    ],
)
def test_a_safety_finish_without_an_image_is_a_candidate_block(reason: str) -> None:
    body = {"candidates": [{"finishReason": reason, "finishMessage": "Blocked for safety."}]}

    with pytest.raises(ContentBlocked) as caught:
        parse_response(body)

    assert (caught.value.stage, caught.value.reason) == ("candidate", reason)
    assert caught.value.message == "Blocked for safety."


@pytest.mark.parametrize(
    "reason",
    [
        "NO_IMAGE",
        "IMAGE_OTHER",
        "OTHER",
        "MALFORMED_RESPONSE",
        "MISSING_THOUGHT_SIGNATURE",
        "IMAGE_TOO_DREAMY_2027",
    ],
)
def test_other_finishes_without_an_image_keep_the_raw_reason_and_text(reason: str) -> None:
    body = answer(
        {"text": "hmm", "thought": True}, {"text": "I could not draw that."}, finish=reason
    )

    with pytest.raises(NoImageReturned) as caught:
        parse_response(body)

    assert caught.value.reason == reason
    assert caught.value.text == "I could not draw that."


def test_stop_with_text_only_is_no_image_with_the_models_words() -> None:
    body = answer({"text": "Which style would you like: watercolour or photo?"})

    with pytest.raises(NoImageReturned) as caught:
        parse_response(body)

    assert caught.value.reason == "STOP"
    assert caught.value.text == "Which style would you like: watercolour or photo?"


@pytest.mark.parametrize(
    "body",
    [{}, {"candidates": []}, {"candidates": ["nonsense"]}, {"promptFeedback": {}}],
    ids=["empty", "no-candidates", "bad-candidate", "feedback-without-block"],
)
def test_an_answer_without_candidates_or_block_is_malformed(body: dict[str, Any]) -> None:
    with pytest.raises(MalformedResponse):
        parse_response(body)


@pytest.mark.parametrize("raw", [b"", b"<html>oops</html>", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_a_2xx_body_that_is_not_a_json_object_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedResponse):
        parse_body(raw)


def test_parse_body_reads_a_real_answer() -> None:
    decoded = pybase64.b64decode(FINAL)
    assert parse_body(json.dumps(RECORDED).encode()).images == (InlineSource(decoded),)


def _streamed(body: bytes, sizes: list[int], rng: random.Random) -> ParsedResponse:
    splitter = InlineDataSplitter(len(body))
    start = 0
    while start < len(body):
        step = rng.choice(sizes)
        splitter.feed(body[start : start + step])
        start += step
    return splitter.finish()


def _images(parsed: ParsedResponse) -> list[bytes | str]:
    return [
        pybase64.b64decode(s.data) if isinstance(s, InlineSource) and isinstance(s.data, str)
        else s.data if isinstance(s, InlineSource) else s.url
        for s in parsed.images
    ]  # fmt: skip


_PNG = fake_png(120, 80)
_B64 = pybase64.b64encode_as_string(_PNG)
_DOCUMENT = json.dumps(image_response(_PNG).json)
STREAM_SHAPES = {
    "camel": _DOCUMENT,
    "snake": json.dumps(image_response(_PNG, snake_case=True).json),
    "indented": json.dumps(image_response(_PNG).json, indent=2),
    "thoughts only": json.dumps(image_response(_PNG, only_thought_images=True).json),
    "data URL in text": json.dumps(text_only(f"![i](data:image/png;base64,{_B64})").json),
    "escaped slashes": _DOCUMENT.replace("/", "\\/"),
    "newline in base64": _DOCUMENT.replace(_B64[:76], _B64[:76] + "\\n"),
    "space around colon": _DOCUMENT.replace('"data": "', '"data"  \n :\t "'),
    "quoted key in caption": json.dumps(
        image_response(_PNG, caption='she wrote "data": "AAAA" here').json
    ),
}


@pytest.mark.parametrize("shape", STREAM_SHAPES)
def test_streamed_decoding_matches_whole_body_parsing_however_it_is_chunked(shape: str) -> None:
    body = STREAM_SHAPES[shape].encode()
    whole = parse_response(json.loads(body))
    rng = random.Random(shape)
    for sizes in ([1], [1, 2, 3], [7], [4096], [1, 300, 5000], [len(body)]):
        streamed = _streamed(body, sizes, rng)
        assert _images(streamed) == _images(whole)
        assert (streamed.caption, streamed.usage) == (whole.caption, whole.usage)


def test_streamed_images_arrive_decoded() -> None:
    (source,) = parse_body(_DOCUMENT.encode()).images
    assert isinstance(source, InlineSource) and source.data == _PNG


def test_bad_base64_is_left_for_the_strict_decoder() -> None:
    body = _DOCUMENT.replace(_B64[:8], _B64[:7] + "!").encode()
    (source,) = parse_body(body).images
    assert isinstance(source, InlineSource) and isinstance(source.data, str)


def test_an_oversized_body_is_refused_while_streaming() -> None:
    splitter = InlineDataSplitter(1000)
    with pytest.raises(MalformedResponse, match="larger than 1000"):
        splitter.feed(b"x" * 1001)


# parse_error -----------------------------------------------------------------------------------


def google(status: int, code: str, message: str, *details: dict[str, Any]) -> bytes:
    error = {"code": status, "message": message, "status": code, "details": list(details)}
    return json.dumps({"error": error}).encode()


def retry_info(delay: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


def test_google_quota_error_carries_code_message_and_retry_delay() -> None:
    body = google(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota.",
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
        retry_info("57.2s"),
    )

    error = parse_error(429, {}, body)

    assert isinstance(error, RateLimited)
    assert (error.status, error.code) == (429, "RESOURCE_EXHAUSTED")
    assert error.message == "You exceeded your current quota."
    assert error.retry_after == pytest.approx(57.2)


@pytest.mark.parametrize(("delay", "seconds"), [("57.2s", 57.2), ("1.5s", 1.5), ("3600s", 3600)])
def test_retry_info_durations(delay: str, seconds: float) -> None:
    body = google(429, "RESOURCE_EXHAUSTED", "slow down", retry_info(delay))

    assert parse_error(429, {}, body).retry_after == pytest.approx(seconds)


def test_openai_style_error_uses_its_type_as_code() -> None:
    body = json.dumps(
        {"error": {"message": "imageSize is invalid", "type": "invalid_request_error"}}
    )

    error = parse_error(400, {}, body.encode())

    assert isinstance(error, BadRequest)
    assert (error.code, error.message) == ("invalid_request_error", "imageSize is invalid")


def test_openai_style_error_prefers_its_code() -> None:
    body = {"error": {"message": "Quota exceeded", "type": "requests", "code": "quota_exceeded"}}

    error = parse_error(429, {}, json.dumps(body).encode())

    assert isinstance(error, RateLimited)
    assert error.code == "quota_exceeded"


def test_a_bare_json_message_without_an_error_member_is_used() -> None:
    error = parse_error(429, {}, b'{"message": "Too many requests, slow down"}')

    assert isinstance(error, RateLimited)
    assert error.message == "Too many requests, slow down"


def test_proxy_wrapping_googles_error_json_in_its_message_is_unwrapped() -> None:
    inner = google(
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"},
    )
    body = {"error": {"message": inner.decode(), "code": 400, "status": "Bad Request"}}

    error = parse_error(400, {}, json.dumps(body).encode())

    assert isinstance(error, AuthenticationFailed)
    assert error.code == "INVALID_ARGUMENT"
    assert error.message == "API key not valid. Please pass a valid API key."


def test_html_error_page_becomes_its_text() -> None:
    page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1>"

    error = parse_error(502, {"Content-Type": "text/html"}, page)

    assert isinstance(error, ProviderUnavailable)
    assert error.message == "502 Bad Gateway 502 Bad Gateway"
    assert error.code is None


@pytest.mark.parametrize("body", [b"", b"{}", b'{"error": {}}', b"   "])
def test_an_empty_error_falls_back_to_the_status_phrase(body: bytes) -> None:
    assert parse_error(503, {}, body).message == "Service Unavailable"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequest),
        (401, AuthenticationFailed),
        (403, AuthenticationFailed),
        (404, ModelNotFound),
        (408, ProviderUnavailable),
        (409, BadRequest),
        (422, BadRequest),
        (429, RateLimited),
        (500, ProviderUnavailable),
        (502, ProviderUnavailable),
        (503, ProviderUnavailable),
        (504, ProviderUnavailable),
    ],
)
def test_status_decides_the_error_class(status: int, kind: type[Exception]) -> None:
    error = parse_error(status, {}, b"{}")

    assert type(error) is kind
    assert error.status == status


def test_googles_invalid_key_answer_is_an_authentication_failure_despite_status_400() -> None:
    body = google(
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"},
    )

    assert isinstance(parse_error(400, {}, body), AuthenticationFailed)


@pytest.mark.parametrize("name", ["Retry-After", "retry-after"])
def test_retry_after_in_seconds(name: str) -> None:
    assert parse_error(503, {name: "7"}, b"").retry_after == 7


def test_retry_after_as_an_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)

    assert parse_error(503, {"Retry-After": when}, b"").retry_after == pytest.approx(120, abs=2)


def test_retry_after_in_the_past_means_now_and_garbage_means_no_hint() -> None:
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)

    assert parse_error(503, {"Retry-After": past}, b"").retry_after == 0
    assert parse_error(503, {"Retry-After": "soon"}, b"").retry_after is None
    assert parse_error(503, {}, b"").retry_after is None


def test_the_longer_of_retry_info_and_retry_after_wins() -> None:
    body = google(429, "RESOURCE_EXHAUSTED", "slow down", retry_info("3s"))

    assert parse_error(429, {"Retry-After": "10"}, body).retry_after == 10
    assert parse_error(429, {"Retry-After": "1"}, body).retry_after == 3


def test_error_text_never_keeps_a_url_query_or_the_secret() -> None:
    secret = "AIzaSy-very-secret"
    echoed = (
        f"Bad request to https://www.anyfast.ai/v1beta/models/m:generateContent?key={secret}"
        f" (key {secret})"
    )

    error = parse_error(400, {}, google(400, "INVALID_ARGUMENT", echoed), secret=secret)

    assert secret not in str(error)
    assert "?key=" not in str(error)
    assert "https://www.anyfast.ai/v1beta/models/m:generateContent" in error.message
