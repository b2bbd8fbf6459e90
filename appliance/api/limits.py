"""The request body size limit (413), enforced before anything parses a body.

A declared ``Content-Length`` over the limit is refused without reading the body; a
chunked body is counted as it arrives and refused once it passes the limit, so a client
cannot make the API buffer an unbounded document (the largest legitimate body, a
config file, is a few kilobytes).
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import TooLarge, error_response

DEFAULT_MAX_BODY = 1 << 20


class BodyTooLarge(HTTPException):
    """Raised from `receive` while a handler reads the body.

    An HTTPException because FastAPI turns any other exception raised while it reads a
    body into a 400; this one passes through to the central handler as a 413.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodyLimit:
    """ASGI middleware refusing request bodies larger than `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            response = error_response(TooLarge.status, TooLarge.error,
                                      f"request body of {declared} bytes is larger than {self.max_bytes} bytes")
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
