"""Who may talk to the backend and what a request must look like: the loopback check, the token rule,
the host/token guard and the request guard (no cross-site writes, bounded bodies, standard JSON).

:class:`HostTokenGuard` and :class:`RequestGuard` are plain ASGI middleware rather than FastAPI
dependencies (``HTTPBearer``, a body-size setting) so that they cover every request, ``/openapi.json``,
``/docs`` and unknown paths included, see the body before any route reads it, and answer with our JSON
error shape. :class:`HostTokenGuard` reads the raw header bytes on purpose: with a repeated
``Authorization`` header the last one counts, and only ASCII whitespace is trimmed around the token
(``HTTPBearer`` takes the first header and trims Unicode whitespace after a latin-1 decode).

:class:`RequestGuard` stops cross-site writes from a web page in the user's browser, which can reach a
loopback backend that has no token: such a page can only send "simple" requests without a CORS
preflight (no custom headers, ``Content-Type`` ``text/plain``, a form type or none) and its browser
always names the page in ``Origin``. So every state-changing request (any method but GET, HEAD and
OPTIONS) must say ``Content-Type: application/json`` or an upload type (:data:`codec.MEDIA_TYPES`),
body-less ones included (else 415), and any request whose ``Origin`` is neither the backend's own origin
nor a loopback one is refused (403 ``cross_origin``), with or without a token. It also bounds every body
while it is read: ``Content-Length`` first (a malformed one is a 400), then the bytes received (413): JSON
bodies to :data:`MAX_JSON_BYTES`, uploads to the backend's upload limit. A JSON body is read whole
(within its limit) and checked before the route sees it: ``NaN``, ``Infinity``, numbers that overflow to
infinity and absurd nesting are refused (422), since Python's ``json`` accepts them.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, NoReturn
from urllib.parse import urlsplit

from napari_diffseg.backend import codec
from napari_diffseg.backend.handlers import ApiError, error_response
from napari_diffseg.backend.uploads import DEFAULT_MAX_UPLOAD_BYTES, DRAIN_LIMIT
from napari_diffseg.base.errors import ConfigError

__all__ = [
    "JSON",
    "LOOPBACK_HOSTS",
    "MAX_JSON_BYTES",
    "MIN_TOKEN_LENGTH",
    "SAFE_METHODS",
    "HostTokenGuard",
    "RequestGuard",
    "check_json",
    "check_token",
    "header_int",
    "is_loopback",
    "origin_allowed",
]

MIN_TOKEN_LENGTH = 16
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
MAX_JSON_BYTES = 2**20
"""Largest JSON request body (1 MiB): far above any real one (a propose job for 10,000 images is ~300 kB)."""
JSON = "application/json"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing; every other one needs a JSON or upload ``Content-Type``."""
_DIGITS = re.compile(rb"[0-9]+")
_MAX_DIGITS = 30  # a longer number is past any limit here (and SQLite's 64-bit integers): not parsed

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True if ``host`` (an address or ``localhost``) only accepts connections from this machine."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_token(token: str | None) -> str | None:
    """Validate a bearer token: at least 16 printable ASCII characters without spaces.

    Raises:
        ConfigError: A short or unprintable token.
    """
    if token is None:
        return None
    if len(token) < MIN_TOKEN_LENGTH or not all(33 <= ord(c) <= 126 for c in token):
        raise ConfigError(
            f"the token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters without spaces; make "
            'one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    return token


class HostTokenGuard:
    """ASGI middleware: bearer token on every request (when set), else only loopback Host headers.

    The Host check (without a token) stops DNS-rebinding pages in a local browser from reaching the
    backend through a name of their own.
    """

    def __init__(self, app: Any, token: str | None, allowed_hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.token = token.encode() if token is not None else None
        self.allowed_hosts = allowed_hosts

    def _problem(self, headers: dict[str, bytes]) -> tuple[int, str, str, dict[str, str]] | None:
        """``(status, detail, code, headers)`` of the refusal, or None when the request may pass."""
        if self.token is not None:
            auth = headers.get("authorization", b"")
            scheme, _, given = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not given.strip():
                return (
                    401,
                    "this backend needs a token: send the header 'Authorization: Bearer <token>' (the token "
                    "given to `diffseg serve --token`).",
                    "unauthorized",
                    {"WWW-Authenticate": "Bearer"},
                )
            if not hmac.compare_digest(given.strip(), self.token):
                return (
                    401,
                    "wrong token: use the token the backend was started with (`diffseg serve --token`).",
                    "unauthorized",
                    {"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
        elif self.allowed_hosts is not None:
            host = headers.get("host", b"").decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.allowed_hosts:
                return (
                    400,
                    f"Host {host!r} is not allowed: a backend without a token only answers requests for "
                    "localhost / 127.0.0.1. Connect through one of them, or start it with --token.",
                    "bad_host",
                    {},
                )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        problem = self._problem(headers)
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, detail, code, extra_headers = problem
        response = error_response(status, detail, code, headers=extra_headers)
        await response(scope, receive, send)


def header_int(value: str | bytes | None, name: str, maximum: int) -> int | None:
    """A header that carries a non-negative integer: None when absent or blank, else its value.

    Only ASCII digits are taken (no sign, no spaces inside, no other scripts' digits), and a value over
    ``maximum`` is refused rather than clamped, so a client never gets a silently different answer.

    Raises:
        ApiError: 400 ``invalid`` for anything else.
    """
    if value is None:
        return None
    raw = (value.encode("latin-1") if isinstance(value, str) else value).strip(b" \t")
    if not raw:
        return None
    if not _DIGITS.fullmatch(raw) or len(raw.lstrip(b"0")) > _MAX_DIGITS or int(raw) > maximum:
        shown = raw[:40].decode("latin-1")
        raise ApiError(
            400, f"invalid {name} header {shown!r}: it must be a whole number from 0 to {maximum}.", "invalid"
        )
    return int(raw)


def origin_allowed(origin: bytes, host: bytes) -> bool:
    """True when ``origin`` (an ``Origin`` header) is a loopback origin or the backend's own origin: the
    same host and port as the ``Host`` header the request was sent with. ``null`` and anything that is
    not ``http(s)://host[:port]`` is foreign."""
    try:
        parts = urlsplit(origin.decode("ascii").strip().lower())
        port = parts.port
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or "@" in parts.netloc
        ):
            return False
        if is_loopback(parts.hostname):
            return True
        own = urlsplit("//" + host.decode("latin-1").strip().lower())
        default = 443 if parts.scheme == "https" else 80
        return bool(own.hostname) and (own.hostname, own.port or default) == (parts.hostname, port or default)
    except (UnicodeDecodeError, ValueError):
        return False


class _BodyTooLarge(Exception):
    """Raised from the receive wrapper when a streamed body passes its limit (after a bounded drain)."""


class _NotStandardJson(Exception):
    """A JSON number that standard JSON (RFC 8259) does not have: ``NaN``, ``Infinity``, ``1e999``."""


def _refuse_constant(name: str) -> NoReturn:
    raise _NotStandardJson(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotStandardJson(text if len(text) <= 40 else text[:37] + "...")
    return value


def check_json(body: bytes) -> None:
    """Refuse a JSON body that Python's ``json`` would accept but standard JSON does not.

    Malformed JSON is left to the route (FastAPI answers it with a 422 naming the position).

    Raises:
        ApiError: 422 ``invalid``: ``NaN`` / ``Infinity`` / ``-Infinity``, a number that overflows to
            infinity, nesting too deep to parse, or bytes that are not UTF-8 / integers too long to read.
    """
    if not body.strip():
        return
    try:
        json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotStandardJson as exc:
        raise ApiError(
            422,
            f"the JSON body holds the number {exc}, which is not standard JSON (RFC 8259): send finite "
            "numbers only.",
            "invalid",
        ) from None
    except json.JSONDecodeError:
        return  # the route answers it, with the position
    except RecursionError:
        raise ApiError(422, "the JSON body is nested too deeply to read.", "invalid") from None
    except ValueError as exc:  # not UTF-8, or an integer with thousands of digits
        raise ApiError(422, f"the JSON body cannot be read ({exc}).", "invalid") from None


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The request's ``Content-Length`` (None without one; a number of more than 30 digits as 10**30).

    Raises:
        ApiError: 400 for a malformed value or two different ones.
    """
    values = {v.strip(b" \t") for k, v in headers if k.lower() == b"content-length"}
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, "the request has two different Content-Length headers.", "invalid")
    raw = values.pop()
    if not _DIGITS.fullmatch(raw):
        shown = raw[:40].decode("latin-1")
        raise ApiError(
            400, f"invalid Content-Length {shown!r}: it must be the body's size in bytes.", "invalid"
        )
    digits = raw.lstrip(b"0")
    return int(digits or b"0") if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


async def _drain(receive: Receive, more: bool) -> None:
    """Read and drop up to :data:`DRAIN_LIMIT` more bytes, so that the client sees the answer instead of a
    connection reset while it is still sending."""
    drained = 0
    while more and drained <= DRAIN_LIMIT:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        more = bool(message.get("more_body", False))


class RequestGuard:
    """ASGI middleware: no cross-site writes, bounded bodies, standard JSON (see the module docstring).

    Args:
        app: The wrapped ASGI app.
        max_json_bytes: Largest JSON body (and any other body that is not an upload).
        max_upload_bytes: Largest binary upload (``.npy``, TIFF, PNG).
    """

    def __init__(
        self, app: Any, max_json_bytes: int = MAX_JSON_BYTES, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    ) -> None:
        self.app = app
        self.max_json_bytes = int(max_json_bytes)
        self.max_upload_bytes = int(max_upload_bytes)

    def _too_large(self, media: str) -> ApiError:
        if media in codec.MEDIA_TYPES:
            return ApiError(
                413,
                f"the body is larger than this backend's upload limit of {self.max_upload_bytes} bytes; crop "
                "or tile the image, or start the backend with a larger --max-upload-mb.",
                "too_large",
            )
        return ApiError(
            413,
            f"the body is larger than this backend's limit of {self.max_json_bytes} bytes for a JSON body; "
            "send fewer items per request.",
            "too_large",
        )

    def _check_head(self, method: str, headers: list[tuple[bytes, bytes]]) -> tuple[str, int]:
        """The body's media type and size limit after the Origin, Content-Type and Content-Length checks.

        Raises:
            ApiError: 403 foreign Origin, 415 content type, 400 malformed length, 413 declared too large.
        """
        host = next((v for k, v in headers if k == b"host"), b"")
        for origin in (v for k, v in headers if k == b"origin"):
            if not origin_allowed(origin, host):
                shown = origin[:100].decode("latin-1")
                raise ApiError(
                    403,
                    f"cross-origin request refused (Origin {shown!r}): this backend only answers pages it "
                    "serves itself or that are served from this machine (localhost), so that a web site "
                    "cannot use your browser to change the project.",
                    "cross_origin",
                )
        raw_type = next((v for k, v in headers if k == b"content-type"), b"").decode("latin-1")
        media = raw_type.split(";", 1)[0].strip().lower()
        if method not in SAFE_METHODS and media != JSON and media not in codec.MEDIA_TYPES:
            raise ApiError(
                415,
                f"unsupported Content-Type {raw_type or '(none)'!r} for {method}: send "
                f"'Content-Type: {JSON}' (with an empty body, or '{{}}', where the endpoint takes none), or "
                f"an image or mask as {', '.join(codec.MEDIA_TYPES)}.",
                "unsupported_media_type",
            )
        limit = self.max_upload_bytes if media in codec.MEDIA_TYPES else self.max_json_bytes
        length = _content_length(headers)
        if length is not None and length > limit:
            raise self._too_large(media)
        return media, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k.lower(), v) for k, v in scope.get("headers", [])]
        body: bytes | None = None
        try:
            media, limit = self._check_head(str(scope.get("method", "GET")).upper(), headers)
            if media == JSON:
                body = await self._read_json(receive, limit, media)
                if body is None:
                    return  # the client went away
                check_json(body)
        except ApiError as exc:
            extra = {"Connection": "close"} if exc.status == 413 else None
            await error_response(exc.status, exc.detail, exc.code, headers=extra)(scope, receive, send)
            return
        if body is not None:
            await self.app(scope, _replay(body, receive), send)
        else:
            await self._counted(scope, receive, send, limit, media)

    async def _read_json(self, receive: Receive, limit: int, media: str) -> bytes | None:
        """The whole body within ``limit`` (None if the client disconnected).

        Raises:
            ApiError: 413 when it passes the limit (after a bounded drain).
        """
        buf = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            if message["type"] != "http.request":
                continue
            chunk = message.get("body", b"")
            more = bool(message.get("more_body", False))
            if len(buf) + len(chunk) > limit:
                await _drain(receive, more)
                raise self._too_large(media)
            buf += chunk
        return bytes(buf)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int, media: str) -> None:
        """Run the app on a body that is counted as the app reads it: past ``limit`` the app's read fails
        and the answer is our 413, whatever the app makes of the failure."""
        received = 0
        too_large = False
        started = False
        answered = False

        async def counting_receive() -> MutableMapping[str, Any]:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    await _drain(receive, bool(message.get("more_body", False)))
                    raise _BodyTooLarge
            return message

        async def answer_413() -> None:
            nonlocal answered
            answered = True
            error = self._too_large(media)
            response = error_response(error.status, error.detail, error.code, headers={"Connection": "close"})
            await response(scope, receive, send)

        async def guarded_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if answered:
                return
            if too_large and not started:
                await answer_413()  # the app turned the failed read into an answer of its own
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not too_large:
                raise  # not ours: the server's error handling answers it
        if too_large and not started and not answered:
            await answer_413()


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body read already, then the client's later messages."""
    pending = True

    async def replay() -> MutableMapping[str, Any]:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
