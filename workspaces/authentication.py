from __future__ import annotations

import re
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from workspaces.models import ApiKey
from workspaces.selectors import api_key_find
from workspaces.services import api_key_mark_used


def api_key_authenticate(raw_key: str) -> ApiKey:
    """The live key a caller presented (its use recorded), or AuthenticationFailed saying why
    not: the one lookup of the REST API and the MCP server."""
    key = api_key_find(raw_key=raw_key)
    if key is None:
        raise exceptions.AuthenticationFailed("Invalid API key.")
    if key.revoked_at is not None:
        raise exceptions.AuthenticationFailed("This API key has been revoked.")
    if not key.created_by.is_active:
        raise exceptions.AuthenticationFailed("The user who created this key is inactive.")
    api_key_mark_used(api_key=key)
    return key


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer alk_…` — a workspace API key, acting only inside its workspace.

    request.user is the key's creator (for `created_by`), request.auth the key: the permission
    layer always limits a key to its own workspace and role."""

    keyword = "Bearer"

    def authenticate(self, request: Any) -> tuple[Any, ApiKey] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Bearer header.")
        try:
            raw_key = header[1].decode()
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed("Malformed API key.") from exc
        key = api_key_authenticate(raw_key)
        return key.created_by, key

    def authenticate_header(self, request: Any) -> str:
        return f'{self.keyword} realm="api"'


# What rest_framework.authtoken makes: 20 random bytes in hex.
_TOKEN_KEY = re.compile(r"[0-9a-f]{40}")


class TokenAuthentication(authentication.TokenAuthentication):
    """`Authorization: Token …` from auth/token/, refusing anything not shaped like a token
    before the database sees it (PostgreSQL rejects strings holding NUL: a 500 otherwise)."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        if _TOKEN_KEY.fullmatch(key) is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        return super().authenticate_credentials(key)


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """Documents workspace API keys in the OpenAPI schema."""

    target_class = ApiKeyAuthentication
    name = "workspaceApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A workspace API key: `Authorization: Bearer alk_…`.",
        }
