"""The local registrar: which softphones ring for incoming calls, and where they listen.

Sans-IO: REGISTER in, response (and bindings) out; expiry is checked against the `now` the
caller passes. A binding remembers the transport it came over so an incoming call can be sent
back the same way (a TCP connection, or the UDP source when the Contact is not an IP literal).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sipmessage import Address, Request, Response

from . import message
from .dest import Dest, DestKind
from .message import BadMessage

log = logging.getLogger(__name__)

DEFAULT_EXPIRES = 3600
MIN_EXPIRES = 60
MAX_EXPIRES = 86400
MAX_BINDINGS = 32


@dataclass
class Binding:
    aor: str                 # user part of the To URI
    contact: Address
    expires_at: float
    dest: Dest               # where to send requests for this contact
    call_id: str
    cseq: int

    def expires_in(self, now: float) -> int:
        return max(0, int(self.expires_at - now + 0.5))


class Registrar:
    def __init__(self, max_bindings: int = MAX_BINDINGS) -> None:
        self._bindings: dict[str, Binding] = {}      # contact URI text -> binding
        self.max_bindings = max_bindings

    def bindings(self, now: float) -> list[Binding]:
        """Live bindings, oldest first; expired ones are forgotten here."""
        for key in [k for k, b in self._bindings.items() if b.expires_at <= now]:
            del self._bindings[key]
        return list(self._bindings.values())

    def answer(self, request: Request, source: Dest, now: float) -> Response:
        """Apply a REGISTER that came from `source` and write its response (RFC 3261 10.3)."""
        dest = source
        contacts = request.contact
        if source.kind is DestKind.UDP and contacts:
            uri = contacts[0].uri
            if message.is_address_literal(uri.host):
                dest = Dest.udp((uri.host.strip("[]"), uri.port or 5060))
        code, reason, bindings = self.register(request, dest, now)
        resp = message.response(request, code, reason, to_tag=message.new_tag())
        if code == 423:
            resp.headers.set("Min-Expires", str(MIN_EXPIRES))
        if bindings:
            resp.headers.setlist("Contact", [
                str(Address(b.contact.uri, b.contact.name,
                            b.contact.parameters.replace(expires=str(b.expires_in(now)))))
                for b in bindings])
        log.info("REGISTER %s from %s: %d (%d binding(s))", request.to_address.uri,
                 source.addr, code, len(bindings))
        return resp

    def register(self, request: Request, dest: Dest, now: float) -> tuple[int, str, list[Binding]]:
        """Apply one REGISTER: (status, reason, the AOR's bindings after it)."""
        aor = request.to_address.uri.user or ""
        default = _expires_header(request)
        raw = request.headers.getlist("Contact")
        if [v.strip() for v in raw] == ["*"]:
            if default != 0:
                return 400, "Contact * needs Expires: 0", []
            self._remove(aor)
            return 200, "OK", []
        try:
            contacts = [a for v in raw for a in Address.parse_many(v)]
        except ValueError:
            raise BadMessage("Malformed Contact") from None
        for contact in contacts:
            expires = _contact_expires(contact, default)
            if 0 < expires < MIN_EXPIRES:
                return 423, "Interval Too Brief", []
            key = str(contact.uri)
            old = self._bindings.get(key)
            if old and old.call_id == request.call_id and old.cseq >= request.cseq.sequence:
                continue                                # stale retransmission
            if expires == 0:
                self._bindings.pop(key, None)
                continue
            if old is None and len(self.bindings(now)) >= self.max_bindings:
                return 503, "Too many registered contacts", []
            self._bindings[key] = Binding(aor, contact, now + min(expires, MAX_EXPIRES), dest,
                                          request.call_id, request.cseq.sequence)
        return 200, "OK", [b for b in self.bindings(now) if b.aor == aor]

    def forget(self, predicate: Callable[[Binding], bool]) -> None:
        """Drop bindings that can no longer be reached (their TCP connection closed)."""
        for key in [k for k, b in self._bindings.items() if predicate(b)]:
            del self._bindings[key]

    def _remove(self, aor: str) -> None:
        for key in [k for k, b in self._bindings.items() if b.aor == aor]:
            del self._bindings[key]


def _expires_header(request: Request) -> int:
    try:
        value = request.expires
    except ValueError:
        raise BadMessage("Bad Expires") from None
    return DEFAULT_EXPIRES if value is None else value


def _contact_expires(contact: Address, default: int) -> int:
    raw = contact.parameters.get("expires")
    if raw is None:
        return default
    try:
        return max(0, int(raw))
    except ValueError:
        raise BadMessage("Bad Contact expires") from None
