"""Errors users can read: each is a type with a status and a code, answered as one JSON shape.

Body: ``{"error": {"code": ..., "message": ..., "field": ..., "details": [...]}}``; ``field`` names
what was wrong (a body field, a header, a query parameter) and ``details`` lists each bad item.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    """An error answered to the client as it is: a status, a code, a message and the field at fault."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}

    def response(self) -> JSONResponse:
        """The whole answer: status, JSON body and headers."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class InvalidParameter(ApiError):
    """A query parameter or header that cannot be used."""

    code = "invalid_parameter"


class ServiceUnavailable(ApiError):
    """JetStream cannot be reached or did not answer in time: try again after ``Retry-After``."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class ErrorDescription(BaseModel):
    """What went wrong, in the one shape every error answer has."""

    code: str = Field(description="Stable machine-readable code, such as invalid_readings or token_expired.")
    message: str = Field(description="What was wrong and what to do, for a person.")
    field: str | None = Field(default=None, description="The body field, header or query parameter at fault.")
    details: list[dict[str, Any]] | None = Field(default=None, description="Each bad item, when there are several.")


class ErrorBody(BaseModel):
    """The JSON body of every error answer."""

    error: ErrorDescription


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses: each documented with its description and the ErrorBody schema."""
    return {status: {"model": ErrorBody, "description": text} for status, text in descriptions.items()}


def location(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a dotted field name (``tags.room``)."""
    return ".".join(str(part) for part in loc)


def install_error_handlers(app: FastAPI) -> None:
    """Answer ApiError, FastAPI's parameter errors and Starlette's 404/405 in the one JSON shape."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = [{"field": location(tuple(err["loc"][1:])), "message": err["msg"]} for err in exc.errors()]
        first = details[0]
        error = InvalidParameter(f"{first['field']}: {first['message']}", field=first["field"], details=details)
        return error.response()

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else "error"
        body = {"error": {"code": code, "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
