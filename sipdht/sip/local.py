"""This agent as the SIP it writes names it: account, domain, the addresses it listens and
relays media on, and the user's [contacts] (alias -> account id).

Over a link we are `sip:<account>@<account>.dht.invalid` (no address of ours leaks to the
peer); towards a softphone, the address it reaches us on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sipmessage import URI, Address, Parameters

from .dest import Dest, DestKind
from .dialog import LocalEnd, Side

LINK_HOST_SUFFIX = ".dht.invalid"


@dataclass
class Local:
    account: str
    domain: str
    host: str                             # the SIP listen address
    port: int                             # known once the transport is bound
    media_host: str                       # written in SDP for the relay ports
    contacts: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._aliases = {acct: alias for alias, acct in self.contacts.items()}

    @property
    def sip_host(self) -> str:
        """Our address as SIP writes it in Via and Contact ([v6] in brackets)."""
        return f"[{self.media_host}]" if ":" in self.media_host else self.media_host

    def aor(self, user: str) -> Address:
        """`sip:<user>@<domain>`, as From and To read on both sides of a call."""
        return Address(URI("sip", self.domain, user=user))

    def end(self, side: Side, dest: Dest) -> LocalEnd:
        """How we appear in a dialog on `side` that runs to `dest`."""
        if side is Side.LINK:
            host = self.account + LINK_HOST_SUFFIX
            return LocalEnd("UDP", host, None, Address(URI("sip", host, user=self.account)))
        tcp = dest.kind is DestKind.TCP
        params = Parameters(transport="tcp") if tcp else Parameters()
        contact = Address(URI("sip", self.sip_host, user=self.account, port=self.port,
                              parameters=params))
        return LocalEnd("TCP" if tcp else "UDP", self.sip_host, self.port, contact)

    def resolve(self, user: str) -> str | None:
        """Request-URI user -> account id (an alias from [contacts] or 40 hex digits)."""
        if user in self.contacts:
            return self.contacts[user]
        lowered = user.lower()
        if len(lowered) == 40 and all(c in "0123456789abcdef" for c in lowered):
            return lowered
        return None

    def alias_of(self, account: str) -> str:
        return self._aliases.get(account, "")
