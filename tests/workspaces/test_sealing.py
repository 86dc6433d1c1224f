"""workspaces/sealing.py: secrets kept encrypted under a key derived from SECRET_KEY."""

from __future__ import annotations

from typing import Any

import pytest

from workspaces import sealing


def test_a_sealed_value_opens_to_itself_and_does_not_show_it() -> None:
    token = sealing.seal("whsec_abc123")
    assert "abc123" not in token
    assert sealing.unseal(token) == "whsec_abc123"
    assert sealing.seal("whsec_abc123") != token  # a fresh IV each time


def test_a_fallback_key_opens_what_the_old_key_sealed(settings: Any) -> None:
    token = sealing.seal("value")
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "another-key-" + "y" * 50
    assert sealing.unseal(token) == "value"


def test_without_its_key_a_sealed_value_is_unsealable(settings: Any) -> None:
    token = sealing.seal("value")
    settings.SECRET_KEY = "another-key-" + "y" * 50
    with pytest.raises(sealing.Unsealable, match="SECRET_KEY_FALLBACKS"):
        sealing.unseal(token)


def test_a_tampered_token_is_unsealable() -> None:
    token = sealing.seal("value")
    with pytest.raises(sealing.Unsealable):
        sealing.unseal(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))
