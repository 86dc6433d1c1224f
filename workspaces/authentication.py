from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from workspaces.models import ApiKey
from workspaces.selectors import api_key_find
from workspaces.services import api_key_mark_used


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
        key = api_key_find(raw_key=raw_key)
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid API key.")
        if key.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This API key has been revoked.")
        if not key.created_by.is_active:
            raise exceptions.AuthenticationFailed("The user who created this key is inactive.")
        api_key_mark_used(api_key=key)
        return key.created_by, key

    def authenticate_header(self, request: Any) -> str:
        return f'{self.keyword} realm="api"'


class ApiKeyScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """Documents workspace API keys in the OpenAPI schema."""

    target_class = ApiKeyAuthentication
    name = "workspaceApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A workspace API key: `Authorization: Bearer alk_…`.",
        }
