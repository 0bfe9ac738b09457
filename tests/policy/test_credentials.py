"""The credentials a request presents (``samtykke_gateway/policy/credentials.py``)."""

from __future__ import annotations

from samtykke_gateway.policy.credentials import CONSENT_TOKEN_REASONS
from samtykke_gateway.reasons import REASONS
from samtykke_gateway.tokens import verify


def test_every_verifier_reason_has_its_own_consent_token_reason() -> None:
    """A reason the verifier gains must get its own 403 code for an Altinn 2 consent token
    (else it falls back to the generic consent_token_invalid and loses its meaning)."""
    assert set(CONSENT_TOKEN_REASONS) == set(verify.REASONS)
    assert all(REASONS[code].status == 403 for code in CONSENT_TOKEN_REASONS.values())
