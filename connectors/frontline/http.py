"""What every HTTP service of ours answers with: JSON that cannot fail to encode.

Starlette's ``JSONResponse`` encodes with ``ensure_ascii=False`` and then
UTF-8, so a refusal that echoes request text holding a lone surrogate (an
``event_id`` of ``"\\ud800"``) raised ``UnicodeEncodeError``: a 500 instead
of the refusal. :class:`SafeJSONResponse` writes such text as the JSON
escapes it arrived as; :func:`safe_json_app` makes it an app's default and
FastAPI's own error answers use it too.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.utils import is_body_allowed_for_status_code
from starlette.exceptions import HTTPException

from touchpoint import jsontext


class SafeJSONResponse(JSONResponse):
    """A JSON answer whose body is always valid UTF-8."""

    def render(self, content: Any) -> bytes:
        return jsontext.dumps(content, allow_nan=False, separators=(",", ":")).encode("utf-8")


async def _http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if not is_body_allowed_for_status_code(exc.status_code):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _invalid_request(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return SafeJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)


def safe_json_app(**options: Any) -> FastAPI:
    """A FastAPI app answering with :class:`SafeJSONResponse`, its error answers included."""
    app = FastAPI(default_response_class=SafeJSONResponse, **options)
    app.add_exception_handler(HTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    return app
