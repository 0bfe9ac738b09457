"""Altinn 2 consent tokens (``tokens/altinn2.py``): claims read into one :class:`Consent`."""

from __future__ import annotations


def test_authorization_code_with_or_without_dashes_is_one_consent() -> None:
    from samtykke_gateway.tokens.altinn2 import consent_from_altinn2_claims

    base = {"Services": ["4804_210607"], "OfferedBy": "01029413157", "CoveredBy": "999999999",
            "ValidToDate": 4_000_000_000}
    ids = {consent_from_altinn2_claims({**base, "AuthorizationCode": code}, issuer="altinn.no", key_id=None).consent_id
           for code in ("0A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9", "0a1b2c3d4e5f60718293a4b5c6d7e8f9")}
    assert ids == {"0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"}
