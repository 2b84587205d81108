"""SDP rewriting for the media relay: a line-based editor, not a full SDP model.

Only c= lines, m= ports and a few attributes change; every other line (codecs, a=crypto,
a=rtcp-mux, directions, o=, unknown lines) is kept byte for byte, so a softphone's codec and
SRTP negotiation passes through untouched. (sdp-transform corrupts values; see sip-stacks.md.)
The softphone's ICE attributes are dropped: the relay is the only media address it may use.
"""

from __future__ import annotations

from dataclasses import dataclass

ICE_ATTRIBUTES = frozenset({
    "candidate", "ice-ufrag", "ice-pwd", "ice-options", "ice-lite", "ice-mismatch",
    "remote-candidates", "end-of-candidates", "ice-pacing",
})
CONTENT_TYPE = "application/sdp"


class BadSdp(ValueError):
    """The body is not SDP we can relay."""


@dataclass
class Stream:
    """One m= line as the relay needs it."""
    index: int
    media: str
    port: int                   # 0: rejected or disabled stream
    address: str                # effective connection address (media c= over session c=)
    rtcp_port: int              # where RTCP goes (a=rtcp, else port + 1)
    rtcp_mux: bool


def _lines(body: bytes) -> list[str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadSdp("SDP is not UTF-8") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines or not lines[0].startswith("v="):
        raise BadSdp("not an SDP body (no v= line)")
    return lines


def _attribute(line: str) -> str:
    return line[2:].split(":", 1)[0].strip().lower() if line.startswith("a=") else ""


def _m_port(line: str) -> int:
    parts = line[2:].split()
    if len(parts) < 3:
        raise BadSdp("malformed m= line")
    try:
        return int(parts[1].split("/")[0])
    except ValueError:
        raise BadSdp("malformed m= port") from None


def _c_address(line: str) -> str:
    parts = line[2:].split()
    if len(parts) < 3:
        raise BadSdp("malformed c= line")
    return parts[2].split("/")[0]


def streams(body: bytes) -> list[Stream]:
    """The m= streams of an SDP body."""
    session_addr = ""
    out: list[Stream] = []
    for line in _lines(body):
        if line.startswith("m="):
            port = _m_port(line)
            out.append(Stream(len(out), line[2:].split()[0], port, session_addr, port + 1, False))
        elif line.startswith("c="):
            if out:
                out[-1].address = _c_address(line)
            else:
                session_addr = _c_address(line)
        elif out and _attribute(line) == "rtcp-mux":
            out[-1].rtcp_mux = True
        elif out and _attribute(line) == "rtcp":
            try:
                out[-1].rtcp_port = int(line.split(":", 1)[1].split()[0])
            except (IndexError, ValueError):
                raise BadSdp("malformed a=rtcp") from None
    return out


def rewrite(body: bytes, address: str, ports: list[int | None]) -> bytes:
    """Point every stream at `address`:`ports[i]` (None or a 0 port: left as is), put it in
    o= too (a softphone's LAN address is not the peer's business), drop ICE attributes and
    a=rtcp (the relay's RTCP port is the RTP port + 1, the default)."""
    out: list[str] = []
    index = -1
    family = "IP6" if ":" in address else "IP4"
    for line in _lines(body):
        if line.startswith("m="):
            index += 1
            new = ports[index] if index < len(ports) else None
            if new is not None and _m_port(line) != 0:
                parts = line[2:].split(" ")
                parts[1] = str(new)
                line = "m=" + " ".join(parts)
        elif line.startswith("c="):
            _c_address(line)
            line = f"c=IN {family} {address}"
        elif line.startswith("o="):
            parts = line[2:].split(" ")
            if len(parts) == 6:                 # the address only; ids and version stay
                parts[4:6] = [family, address]
                line = "o=" + " ".join(parts)
        elif _attribute(line) in ICE_ATTRIBUTES or _attribute(line) == "rtcp":
            continue
        out.append(line)
    return ("\r\n".join(out) + "\r\n").encode()


def is_sdp(content_type: str | None, body: bytes) -> bool:
    return bool(body) and (content_type or "").split(";")[0].strip().lower() == CONTENT_TYPE
