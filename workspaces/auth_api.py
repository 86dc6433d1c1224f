from rest_framework import parsers
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.throttling import ScopedRateThrottle

from config.api import LimitedJSONParser


class TokenView(ObtainAuthToken):
    """POST username + password → {"token"}; send it as `Authorization: Token …`."""

    parser_classes = (LimitedJSONParser, parsers.FormParser)
    throttle_classes = (ScopedRateThrottle,)
    throttle_scope = "auth"
