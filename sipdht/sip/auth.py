"""Who may use the gateway: loopback clients always, others only with `[sip] allow_remote`,
and then (with `[sip] username`) only after HTTP digest authentication (RFC 2617, MD5).

Three parts, so each can grow on its own: `AccessPolicy` (which hosts are served at all),
`NonceStore` (the nonces we issued) and `DigestAuth` (challenge and verify). Issue 16 extends
them: qop=auth with nc/cnonce checks and nonce expiry in `NonceStore.valid`, rate limits in
`AccessPolicy`, and TLS as one more transport the policy admits.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import ipaddress
import secrets
from collections.abc import Mapping

from sipmessage import AuthChallenge, AuthParameters, Request, Response

from . import message

REALM = "sipdht"
MAX_NONCES = 256
REFUSAL = "Only local clients may use this gateway"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AccessPolicy:
    def __init__(self, allow_remote: bool) -> None:
        self.allow_remote = allow_remote

    def allowed(self, host: str) -> bool:
        """Whether a client at `host` (an IP literal) is served at all."""
        try:
            return ipaddress.ip_address(host).is_loopback or self.allow_remote
        except ValueError:
            return False

    def refusal(self, data: bytes) -> bytes | None:
        """The 403 for a client that is not served (None when it sent no request to answer:
        a response, an ACK, or nothing we can parse)."""
        with contextlib.suppress(message.BadMessage):
            msg = message.parse(data)
            if isinstance(msg, Request) and msg.method != "ACK":
                return message.serialize(message.response(msg, 403, REFUSAL))
        return None


class NonceStore:
    """The nonces of our recent challenges, oldest forgotten first."""

    def __init__(self, capacity: int = MAX_NONCES) -> None:
        self.capacity = capacity
        self._issued: collections.OrderedDict[str, float] = collections.OrderedDict()

    def issue(self, now: float) -> str:
        nonce = secrets.token_hex(16)
        self._issued[nonce] = now
        while len(self._issued) > self.capacity:
            self._issued.popitem(last=False)
        return nonce

    def valid(self, nonce: str) -> bool:
        return nonce in self._issued


class DigestAuth:
    """Digest for phones that are not on loopback, when a username is configured."""

    def __init__(self, username: str, password: str, nonces: NonceStore | None = None) -> None:
        self.username = username
        self.password = password
        self.nonces = nonces or NonceStore()

    def challenge(self, req: Request, host: str, now: float) -> Response | None:
        """None when `req` from `host` may proceed; else the 401 to answer it with."""
        if not self.username or is_loopback(host):
            return None
        try:
            creds = req.authorization
        except ValueError:
            creds = None
        if creds is not None and creds.parameters and self.verify(req, creds.parameters):
            return None
        resp = message.response(req, 401, to_tag=message.new_tag())
        resp.www_authenticate = AuthChallenge(
            "Digest", AuthParameters(realm=REALM, nonce=self.nonces.issue(now), algorithm="MD5"))
        return resp

    def verify(self, req: Request, params: Mapping[str, str]) -> bool:
        nonce = params.get("nonce", "")
        if params.get("username") != self.username or not self.nonces.valid(nonce):
            return False
        ha1 = _md5(f"{self.username}:{REALM}:{self.password}")
        ha2 = _md5(f"{req.method}:{params.get('uri', '')}")
        if params.get("qop"):
            expected = _md5(f"{ha1}:{nonce}:{params.get('nc', '')}:{params.get('cnonce', '')}:"
                            f"{params.get('qop')}:{ha2}")
        else:
            expected = _md5(f"{ha1}:{nonce}:{ha2}")
        return secrets.compare_digest(expected, params.get("response", ""))


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()
