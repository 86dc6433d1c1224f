"""POST auth/token/: a username and password for a personal token (`Authorization: Token …`)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle

from config.api import LimitedJSONParser, StrictQueryMixin, StrictSerializer


class TokenIn(StrictSerializer, AuthTokenSerializer):
    """AuthTokenSerializer's checks (an active user, the right password), refusing unknown
    fields like every body of the API."""


class TokenOut(serializers.Serializer[Any]):
    token = serializers.CharField(help_text="Send it as `Authorization: Token <token>`.")


class TokenView(StrictQueryMixin, ObtainAuthToken):
    # Needs no credentials (it is how you get some), takes one body type (JSON), and is rate
    # limited per client address (AUTH_THROTTLE_RATE).
    authentication_classes = ()
    parser_classes = (LimitedJSONParser,)
    serializer_class = TokenIn
    throttle_classes = (ScopedRateThrottle,)
    throttle_scope = "auth"

    @extend_schema(
        request=TokenIn,
        responses=TokenOut,
        auth=[],
        operation_id="auth_token_create",
        description="Your username and password for a personal token (the same token each "
        "time), which acts as you in all your workspaces. A wrong password or an inactive "
        "user is a 400; too many attempts a 429 with Retry-After.",
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().post(request, *args, **kwargs)
