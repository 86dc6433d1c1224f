"""API plumbing shared by every app: error shape, body limits, strict input, pagination."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, ClassVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, metadata, pagination, parsers, serializers, status
from rest_framework.response import Response

from config.exceptions import AirlockError, InvalidInput, LimitExceeded

logger = logging.getLogger(__name__)


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body is too large."
    default_code = "too_large"


class LimitedJSONParser(parsers.JSONParser):
    """JSON bodies up to API_MAX_BODY_BYTES; DRF reads the stream itself, past Django's check."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        limit = settings.API_MAX_BODY_BYTES
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"Request body is larger than {limit} bytes.")
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body is larger than {limit} bytes.")
        if not body:
            return {}
        _check_depth(body)
        try:
            return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise exceptions.ParseError(f"Malformed JSON: {exc}") from exc
        except RecursionError as exc:  # deeper than the interpreter goes: never a 500
            raise exceptions.ParseError(f"JSON nested deeper than {MAX_JSON_DEPTH}.") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# No body this API takes nests nearly this deep; Python's parser and everything that walks
# the result afterwards (validation, the trail's JSON) recurse, and ~1,000 levels overflow.
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def _check_depth(body: bytes) -> None:
    """400 for a body nested deeper than MAX_JSON_DEPTH. Costs two counts (C speed) unless
    the body has that many brackets at all; then the brackets outside strings are walked."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return
    depth = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub(b"", body)):
        depth += 1 if bracket in (b"[", b"{") else -1
        if depth > MAX_JSON_DEPTH:
            raise exceptions.ParseError(f"JSON nested deeper than {MAX_JSON_DEPTH}.")


class Metadata(metadata.SimpleMetadata):
    """What OPTIONS answers on every route: its name, description, and the media types it
    renders and parses. Not DRF's `actions` (a form description built from the view's
    serializer): views here declare their input serializers per method, and the OpenAPI
    schema (/api/v1/schema/) is the description of every route."""

    def determine_metadata(self, request: Any, view: Any) -> dict[str, Any]:
        return {
            "name": view.get_view_name(),
            "description": view.get_view_description(),
            "renders": [renderer.media_type for renderer in view.renderer_classes],
            "parses": [parser.media_type for parser in view.parser_classes],
        }


def _not_a_string(field: serializers.Field[Any, Any, Any, Any], value: Any) -> bool:
    """DRF's CharField turns 123 into "123"; a strict API says the type is wrong instead."""
    if value is None or isinstance(value, str):
        return False
    if isinstance(field, serializers.CharField):
        return True
    if isinstance(field, serializers.DictField) and isinstance(value, dict):
        return isinstance(field.child, serializers.CharField) and any(
            v is not None and not isinstance(v, str) for v in value.values()
        )
    return False


class StrictSerializer(serializers.Serializer[Any]):
    """Input serializer that refuses fields it does not know instead of dropping them, and
    values of the wrong type instead of converting them."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            errors = {name: ["Unknown field."] for name in sorted(set(data) - set(self.fields))}
            for name, field in self.fields.items():
                if name in data and not field.read_only and _not_a_string(field, data[name]):
                    errors[name] = ["Not a valid string."]
            if errors:
                raise serializers.ValidationError(errors, code="invalid")
        return super().to_internal_value(data)


class CursorPagination(pagination.CursorPagination):
    ordering = "-created_at"
    page_size_query_param = "page_size"
    max_page_size = 200


def validated(serializer_class: type[serializers.Serializer[Any]], request: Any) -> dict[str, Any]:
    """The request's JSON object, checked by an input serializer (400 otherwise)."""
    if not isinstance(request.data, dict):
        raise InvalidInput("Expected a JSON object.", code="not_an_object")
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


PAGE_PARAMETERS = ("cursor", "page_size")


class StrictQueryMixin:
    """Every route refuses query parameters it does not know: a 400 naming them, as unknown
    body fields are. A handler that takes parameters declares them per method in `query`
    (a StrictSerializer, which also checks their values: `self.query_data`); a list (a view
    with `pagination_class`) also takes `cursor`, `page_size` and its FilterSet's fields."""

    query: ClassVar[dict[str, type[serializers.Serializer[Any]]]] = {}
    query_data: dict[str, Any]

    def initial(self, request: Any, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]  # a mixin of APIView
        method = request.method or "GET"
        known = set(self.list_parameters()) if method == "GET" else set()
        query_class = self.query.get(method)
        if query_class is not None:
            known |= set(query_class().fields)
        override = settings.REST_FRAMEWORK.get("URL_FORMAT_OVERRIDE", "format")
        unknown = sorted(set(request.query_params) - known - {override})
        if unknown:
            raise exceptions.ValidationError(
                {name: ["Unknown query parameter."] for name in unknown}
            )
        self.query_data = {}
        if query_class is not None:
            fields = query_class().fields
            params = {k: v for k, v in request.query_params.dict().items() if k in fields}
            serializer = query_class(data=params)
            serializer.is_valid(raise_exception=True)
            self.query_data = dict(serializer.validated_data)

    def list_parameters(self) -> list[str]:
        if getattr(self, "pagination_class", None) is None:
            return []
        filterset = getattr(self, "filterset_class", None)
        return [*PAGE_PARAMETERS, *(filterset.base_filters if filterset else ())]


class CommaSeparatedChoices(serializers.CharField):
    """`a,b,c` in a query parameter: each one of `choices` (400 naming the others)."""

    def __init__(self, *, choices: list[str], **kwargs: Any):
        self.choices = choices
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Any:
        items = [item.strip() for item in str(super().to_internal_value(data)).split(",")]
        items = [item for item in items if item]
        unknown = sorted(set(items) - set(self.choices))
        if unknown:
            raise serializers.ValidationError(
                f"Unknown: {', '.join(unknown)}; one or more of {', '.join(self.choices)}."
            )
        return items


def paginate(view: Any, request: Any, queryset: Any, serializer: Any, ordering: str) -> Response:
    """One cursor-paginated page of `queryset`, newest first unless `ordering` says otherwise."""
    paginator = CursorPagination()
    paginator.ordering = ordering
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer(page, many=True).data)


def paginate_rows(
    view: Any, request: Any, queryset: Any, to_row: Callable[[Any], Any], ordering: str
) -> Response:
    """`paginate` for a `values()` queryset whose rows `to_row` writes out, for lists too long
    or too often read to build a model instance and a serializer per row."""
    paginator = CursorPagination()
    paginator.ordering = ordering
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response([to_row(row) for row in page or []])


def served_chunks(request: Any, chunks: Iterable[bytes]) -> Iterable[bytes] | AsyncIterator[bytes]:
    """A streamed body as the server running the request can stream it. Under ASGI Django
    reads a synchronous iterator into memory whole before sending any of it (and under WSGI
    an asynchronous one): a file download there is read chunk by chunk on a worker thread."""
    if not isinstance(getattr(request, "_request", request), ASGIRequest):
        return chunks

    iterator = iter(chunks)

    def read() -> bytes | None:
        return next(iterator, None)

    async def chunked() -> AsyncIterator[bytes]:
        while (chunk := await sync_to_async(read, thread_sensitive=False)()) is not None:
            yield chunk

    return chunked()


def _error(detail: str, code: str, status_code: int, **extra: Any) -> Response:
    return Response({"detail": detail, "code": code, **extra}, status=status_code)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every error leaves as {"detail", "code"} (plus "errors" for field errors)."""
    if isinstance(exc, AirlockError):
        error = _error(exc.detail, exc.code, exc.status_code)
        if isinstance(exc, LimitExceeded):
            error["Retry-After"] = str(exc.retry_after_s)
        return error
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()

    # Imported here: rest_framework.views reads the DRF settings, which name this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    response: Response | None = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        response.data = {"detail": "Invalid input.", "code": "invalid", "errors": errors}
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        response.data = {
            "detail": str(exc.detail),
            "code": codes if isinstance(codes, str) else exc.default_code,
        }
    return response


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def json_404(request: HttpRequest, exception: Exception | None = None) -> Any:
    if _is_api(request):
        return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Http404())


def json_500(request: HttpRequest) -> Any:
    if _is_api(request):
        return JsonResponse({"detail": "Server error.", "code": "server_error"}, status=500)
    from django.views.defaults import server_error

    return server_error(request)
