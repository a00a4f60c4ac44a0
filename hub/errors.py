"""ARM-shaped errors: `{"error": {"code": ..., "message": ...}}` with a 4xx that names the problem."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

M = TypeVar("M", bound=BaseModel)
MAX_BODY = 4 * 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def not_found(what: str) -> ApiError:
    return ApiError(404, "ResourceNotFound", f"{what} was not found")


def forbidden(message: str) -> ApiError:
    return ApiError(403, "AuthorizationFailed", message)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "AuthenticationFailed", message)


def bad_request(message: str, code: str = "InvalidRequestContent") -> ApiError:
    return ApiError(400, code, message)


async def api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if exc.status == 401 else None
    return JSONResponse(
        {"error": {"code": exc.code, "message": exc.message}}, status_code=exc.status, headers=headers
    )


async def read_json(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ApiError(413, "RequestTooLarge", f"request body exceeds {MAX_BODY} bytes")
    if not body:
        raise bad_request("request body is empty; a JSON object was expected")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None


async def read_model(request: Request, model: type[M]) -> M:
    """Parse and validate a JSON body; the 400 names every bad field."""
    data = await read_json(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
        )
        raise bad_request(f"invalid request body: {problems}") from None
