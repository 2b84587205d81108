"""A SIP dialog as one user agent holds it (RFC 3261 12), sans-IO: identifiers, CSeq, the
remote target and route set, and the requests and responses written inside it.

The B2BUA holds two or more dialogs per call; nothing here knows about calls or links. The
route set is stored when the dialog is made (Record-Route) but requests do not carry it yet:
today every dialog runs straight to a softphone or over a link (issue 16 routes by it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from sipmessage import URI, Address, Parameters, Request, Response

from . import message
from .dest import Dest

TARGET_REFRESH = ("INVITE", "UPDATE")     # requests whose Contact moves the remote target


class Side(enum.StrEnum):
    LOCAL = "local"                       # towards a softphone on this host
    LINK = "link"                         # towards a peer over a link


@dataclass(frozen=True)
class LocalEnd:
    """How we appear in one dialog: the sent-by of our Via, and our Contact."""
    transport: str                        # "UDP" or "TCP" in the Via
    host: str
    port: int | None
    contact: Address


@dataclass(eq=False)
class Dialog:
    side: Side
    dest: Dest                            # where its requests go and must come from
    end: LocalEnd
    call_id: str
    local_tag: str
    local: Address                        # our address (From of our requests), without tag
    remote: Address
    remote_tag: str = ""                  # "" until the first response with a To tag
    target: URI | None = None             # where requests go (the remote Contact)
    route_set: list[Address] = field(default_factory=list)
    cseq: int = 0                         # of the last request we sent
    confirmed: bool = False               # a 2xx made it (RFC 3261 12: early -> confirmed)
    acks: dict[int, bytes] = field(default_factory=dict)   # our ACK per INVITE CSeq

    @classmethod
    def answering(cls, req: Request, side: Side, dest: Dest, end: LocalEnd) -> Dialog:
        """The dialog a request out of any dialog creates on our side (UAS, RFC 3261 12.1.1)."""
        contact = req.contact
        return cls(side, dest, end, req.call_id, message.new_tag(),
                   _untagged(req.to_address), _untagged(req.from_address),
                   remote_tag=message.tag_of(req.from_address),
                   target=contact[0].uri if contact else req.from_address.uri,
                   route_set=message.record_route(req))

    @classmethod
    def calling(cls, side: Side, dest: Dest, end: LocalEnd, local: Address, remote: Address,
                target: URI) -> Dialog:
        """A dialog we open with a request of our own (UAC, RFC 3261 12.1.2)."""
        return cls(side, dest, end, message.new_call_id(), message.new_tag(), local, remote,
                   target=target)

    @property
    def key(self) -> tuple[str, str]:
        """What finds this dialog when a request comes in (Call-ID, our tag)."""
        return self.call_id, self.local_tag

    # --- what comes in ---------------------------------------------------------------------

    def on_request(self, req: Request) -> None:
        """A request in this dialog: a target refresh moves where our requests go."""
        if req.contact and req.method in TARGET_REFRESH:
            self.target = req.contact[0].uri

    def establish(self, resp: Response) -> None:
        """A 1xx-2xx to the request that opened the dialog: its first tag fixes the remote
        side, and the route set with it (Record-Route reversed, RFC 3261 12.1.2)."""
        tag = message.tag_of(resp.to_address)
        if 100 < resp.code < 300 and tag and not self.remote_tag:
            self.remote_tag = tag
            self.route_set = message.record_route(resp)[::-1]

    def on_response(self, resp: Response, method: str) -> None:
        """A response to our `method` request: a 1xx-2xx to a target refresh moves the target."""
        if 100 < resp.code < 300 and resp.contact and method in TARGET_REFRESH:
            self.target = resp.contact[0].uri

    # --- what we write ----------------------------------------------------------------------

    def request(self, method: str, *, body: bytes = b"", content_type: str = "",
                max_forwards: int = 70, cseq: int | None = None) -> Request:
        """Our next request in the dialog (a new CSeq unless `cseq` is given, as for ACK)."""
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        remote = message.with_tag(self.remote, self.remote_tag) if self.remote_tag else self.remote
        return message.request(
            method, self.target or self.remote.uri, via_host=self.end.host,
            via_port=self.end.port, via_transport=self.end.transport,
            from_addr=message.with_tag(self.local, self.local_tag), to_addr=remote,
            call_id=self.call_id, cseq=cseq,
            contact=self.end.contact if method in TARGET_REFRESH else None,
            body=body, content_type=content_type, max_forwards=max_forwards)

    def ack(self, seq: int, body: bytes = b"", content_type: str = "") -> bytes:
        """The ACK of our INVITE `seq`'s 2xx, remembered to answer 2xx retransmissions."""
        ack = self.request("ACK", body=body, content_type=content_type if body else "",
                           cseq=seq)
        data = message.serialize(ack)
        self.acks[seq] = data
        return data

    def bye(self) -> Request:
        return self.request("BYE")

    def response(self, req: Request, code: int, reason: str = "", *, body: bytes = b"",
                 content_type: str = "") -> Response:
        """Our response to the remote's `req`: our tag, and our Contact where it refreshes."""
        out = message.response(req, code, reason, to_tag=self.local_tag, body=body,
                               content_type=content_type)
        if 100 < code < 300 and req.method in TARGET_REFRESH:
            out.contact = [self.end.contact]
        return out


def cancel(invite: Request) -> Request:
    """The CANCEL of our pending INVITE: its Via, From, To, Call-ID and CSeq number, so it
    matches the INVITE's transaction at the other end (RFC 3261 9.1)."""
    out = Request("CANCEL", invite.uri)
    for name in ("Via", "From", "To", "Call-ID", "Max-Forwards"):
        out.headers.set(name, invite.headers.getlist(name)[0])
    out.headers.set("CSeq", f"{invite.cseq.sequence} CANCEL")
    return out


def _untagged(address: Address) -> Address:
    params = {k: v for k, v in address.parameters.items() if k != "tag"}
    return Address(address.uri, address.name, Parameters(**params))
