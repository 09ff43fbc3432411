"""Who may talk to the backend: the loopback check, the token rule and the host/token guard.

:class:`HostTokenGuard` is plain ASGI middleware rather than a FastAPI security dependency
(``HTTPBearer``) so that it covers every request, ``/openapi.json``, ``/docs`` and unknown paths
included, and answers with our JSON error shape. It reads the raw header bytes on purpose: with a
repeated ``Authorization`` header the last one counts, and only ASCII whitespace is trimmed around the
token (``HTTPBearer`` takes the first header and trims Unicode whitespace after a latin-1 decode).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from napari_diffseg.backend.handlers import error_response
from napari_diffseg.base.errors import ConfigError

__all__ = ["LOOPBACK_HOSTS", "MIN_TOKEN_LENGTH", "HostTokenGuard", "check_token", "is_loopback"]

MIN_TOKEN_LENGTH = 16
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")

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
