"""The media of one call: every SDP body crossing the B2BUA is rewritten so the media goes
through a `media.Relay` per m= line.

Towards the softphone, c= is our media address and an m= port is the relay's local port;
over the link, c= is a placeholder and an m= port is the sender's receive channel (so a peer
can only name channels, never an address of ours or of the softphone).
"""

from __future__ import annotations

from ..account import FIRST_MEDIA_CHANNEL, Link
from . import sdp
from .dialog import Side
from .media import Relay, RelayFactory

LINK_MEDIA_HOST = "sipdht.invalid"      # c= on the link: ports there are channel numbers
MAX_STREAMS = 8                         # m= lines per call that get a relay


class MediaMap:
    def __init__(self, link: Link, new_relay: RelayFactory, media_host: str) -> None:
        self.link = link
        self.media_host = media_host
        self.relays: dict[int, Relay] = {}          # m= line index -> its relay
        self._new_relay = new_relay

    def translate(self, source: Side, body: bytes, ctype: str | None) -> bytes:
        """Rewrite a body coming from `source` for the other side; BadSdp when it cannot be
        relayed (the caller answers 488 or drops the body)."""
        if not sdp.is_sdp(ctype, body):
            return body
        streams = sdp.streams(body)
        if len(streams) > MAX_STREAMS:
            raise sdp.BadSdp(f"more than {MAX_STREAMS} media streams")
        ports: list[int | None] = []
        for stream in streams:
            if stream.port == 0:
                ports.append(None)
                continue
            if source is Side.LINK and not FIRST_MEDIA_CHANNEL <= stream.port < 0xFFFF:
                raise sdp.BadSdp(f"m= port {stream.port} is not a media channel")
            relay = self._relay(stream.index)
            if source is Side.LOCAL:
                relay.set_phone(stream.address, stream.port, stream.rtcp_port, stream.rtcp_mux)
                ports.append(relay.channel)
            else:
                relay.peer_channel = stream.port
                relay.peer_mux = stream.rtcp_mux
                ports.append(relay.port)
        host = LINK_MEDIA_HOST if source is Side.LOCAL else self.media_host
        return sdp.rewrite(body, host, ports)

    def _relay(self, index: int) -> Relay:
        relay = self.relays.get(index)
        if relay is None:
            try:
                relay = self.relays[index] = self._new_relay(self.link)
            except OSError as exc:
                raise sdp.BadSdp(f"no relay port: {exc}") from None
        return relay

    def close(self) -> None:
        for relay in self.relays.values():
            relay.close()
        self.relays.clear()
