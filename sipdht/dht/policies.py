"""The store policies a composition root picks for its node's storage.

`secure_policy` is OpenDHT SecureDht's: signed values must verify, a certificate (type 8)
must hash to the key it is stored at. Its checks import `cryptography` on first use, so a
node that never receives a signed value or a certificate never loads it.
"""

from __future__ import annotations

from .storage import EditPolicy
from .values import Value


def plain_policy() -> EditPolicy:
    """No signature or certificate checks (a plain OpenDHT node); no crypto at all."""
    return EditPolicy()


def secure_policy() -> EditPolicy:
    return EditPolicy(verify=_verify, certificate_keys=_certificate_keys)


def _verify(value: Value) -> bool:
    from .crypto import verify_value
    return verify_value(value)


def _certificate_keys(data: bytes) -> tuple[bytes, ...]:
    from .crypto import certificate_key_hashes
    return certificate_key_hashes(data)
