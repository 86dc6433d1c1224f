"""Secrets Airlock must read again later — webhook signing secrets, which signing needs in
clear — are kept **sealed** in the database: encrypted and authenticated with Fernet
(`cryptography`: AES-128-CBC with HMAC-SHA256) under a key derived from `SECRET_KEY` with
HKDF. A database dump or backup alone does not give them away.

Rotation: put the old key in `SECRET_KEY_FALLBACKS` when `SECRET_KEY` changes; sealed values
stay readable (MultiFernet tries every key) and are sealed under the new key when re-sealed.
Without the old key they cannot be opened: `unseal` raises `Unsealable`.

    token = seal("whsec_…")
    unseal(token)  # "whsec_…"
"""

from __future__ import annotations

import base64
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

_PURPOSE = b"airlock sealed secrets v1"


class Unsealable(Exception):
    """A sealed value that no configured key opens (SECRET_KEY changed without a fallback)."""


@cache
def _fernet(secret_key: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE).derive(
        secret_key.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


def _keys() -> MultiFernet:
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return MultiFernet([_fernet(key) for key in keys])


def seal(value: str) -> str:
    """`value` encrypted under the current SECRET_KEY."""
    return _keys().encrypt(value.encode()).decode("ascii")


def unseal(token: str) -> str:
    """The value `seal` sealed, with the current key or a fallback."""
    try:
        return _keys().decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeError) as error:
        raise Unsealable(
            "A sealed secret cannot be opened with SECRET_KEY or SECRET_KEY_FALLBACKS "
            "(was SECRET_KEY changed without keeping the old one as a fallback?)."
        ) from error
