"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

import logging

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from config.celery import app as celery_app

BROKER_CHECK_TIMEOUT_S = 2
logger = logging.getLogger(__name__)


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any failure means not ready; say which
        logger.warning("readyz: database unavailable: %s", exc)
        return f"unavailable ({type(exc).__name__})"
    return None


def _check_broker() -> str | None:
    try:
        # One bounded attempt: a probe that sleeps before a retry outlives its own timeout.
        with celery_app.connection_for_write(connect_timeout=BROKER_CHECK_TIMEOUT_S) as conn:
            conn.ensure_connection(max_retries=0, timeout=BROKER_CHECK_TIMEOUT_S)
    except Exception as exc:  # any failure means not ready; say which
        logger.warning("readyz: broker unavailable: %s", exc)
        return f"unavailable ({type(exc).__name__})"
    return None


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check_database(), "broker": _check_broker()}
    failed = {name: error for name, error in checks.items() if error}
    body = {
        "status": "unavailable" if failed else "ok",
        "checks": {name: (error or "ok") for name, error in checks.items()},
    }
    return JsonResponse(body, status=503 if failed else 200)
