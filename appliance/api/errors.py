"""The control plane's error tree and the handlers that turn it into JSON.

Handlers and services raise an :class:`ApiError` subclass, which carries its HTTP
status; the central handlers here render every error, FastAPI's own validation errors
and Starlette's HTTP exceptions included, as one body shape (:class:`ErrorBody`), so a
script has one thing to parse and the OpenAPI document one thing to describe.
Validation problems carry a JSON path and a reason, as ``flowenricher validate`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class Problem(BaseModel):
    """One thing wrong with a request: where (a JSON path, or ``query.NAME``) and why."""

    path: str
    reason: str


class ErrorBody(BaseModel):
    """Every error response: a short machine-readable `error`, a sentence, and the problems."""

    error: str
    detail: str
    problems: list[Problem] = []


class ApiError(Exception):
    """Base class: `status` is the HTTP status, `error` the short code in the body."""

    status = 500
    error = "error"

    def __init__(self, detail: str, problems: Sequence[Problem] = (), headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.problems = list(problems)
        self.headers = headers


class Unauthorized(ApiError):
    """Missing or unknown token.  The detail never says which, so nothing is learnt by probing."""

    status = 401
    error = "unauthorized"


class Forbidden(ApiError):
    status = 403
    error = "forbidden"


class NotFound(ApiError):
    status = 404
    error = "not_found"


class Conflict(ApiError):
    """The request is well formed but cannot be done now (a safety rule, no file to write)."""

    status = 409
    error = "conflict"


class Refused(Conflict):
    """The blackhole safety policy refused an announcement; the detail names the rule."""

    error = "refused"


class Invalid(ApiError):
    status = 422
    error = "invalid"


class TooLarge(ApiError):
    status = 413
    error = "too_large"


class TooMany(ApiError):
    """A bounded resource is in use (as many backtests as allowed are running): try later."""

    status = 429
    error = "too_many"


class Unavailable(ApiError):
    """A source the API depends on (the flow store, a lookup) is down or not configured."""

    status = 503
    error = "unavailable"


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The body cannot be read at all (not UTF-8 text)"},
    401: {"model": ErrorBody, "description": "Missing or unknown token"},
    403: {"model": ErrorBody, "description": "The token's scope does not allow this call"},
    413: {"model": ErrorBody, "description": "Request body larger than the limit"},
    422: {"model": ErrorBody, "description": "Invalid request: one problem per JSON path"},
}
"""Responses every authenticated route may give; routers add them to the OpenAPI document."""


def error_response(status: int, error: str, detail: str, problems: Iterable[Problem] = (),
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=error, detail=detail, problems=list(problems))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def location(loc: Sequence[int | str]) -> str:
    """FastAPI's error location as the path an operator reads: ``$.a[0].b`` in the body,
    ``query.limit`` for parameters."""
    if not loc:
        return "$"
    where, *rest = loc
    if where == "body":
        text = "$"
        for element in rest:
            text += f"[{element}]" if isinstance(element, int) else f".{element}"
        return text
    return ".".join(str(part) for part in loc)


def _validation_problems(err: RequestValidationError) -> list[Problem]:
    problems = []
    for item in err.errors():
        reason = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(Problem(path=location(item.get("loc", ())), reason=reason))
    return problems


def install_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the ErrorBody shape."""

    async def on_api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.error, exc.detail, exc.problems, exc.headers)

    async def on_validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, Invalid.error, "the request is not valid", _validation_problems(exc))

    async def on_http(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        code = codes.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
