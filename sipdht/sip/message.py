"""SIP messages: sipmessage behind a guard, plus the few builders a B2BUA needs.

sipmessage is strict (CRLF only, no folding) and parses header lines in quadratic time, so
`parse()` caps size and header count first, normalises bare LF, unfolds continuation lines,
reconciles the body with Content-Length and checks the headers every request must carry.
Every failure is a `BadMessage` whose text is the 400 reason phrase.
"""

from __future__ import annotations

import re
import secrets

from sipmessage import URI, Address, CSeq, Parameters, Request, Response, Via
from sipmessage import Message as _Parser

MAX_SIZE = 65535           # one UDP datagram / one link message
MAX_HEADERS = 128          # sipmessage's header parsing is quadratic; softphones send ~15
MAX_LINE = 8192
REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")
BRANCH_MAGIC = "z9hG4bK"
CRLF = b"\r\n"

Message = Request | Response


class BadMessage(ValueError):
    """Not acceptable SIP; str() is the reason phrase of the 400 answer."""


def _normalise(data: bytes, max_headers: int = MAX_HEADERS,
               max_line: int = MAX_LINE) -> tuple[list[bytes], bytes]:
    """Split into unfolded header lines and the raw body (LF and CRLF both accepted)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        head, found, body = data.partition(sep)
        if found:
            break
    else:
        raise BadMessage("Truncated message (no end of headers)")
    lines: list[bytes] = []
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t") and lines:
            lines[-1] += b" " + line.strip()       # RFC 3261 7.3.1 folding
        else:
            lines.append(line)
        if len(lines) > max_headers + 1:
            raise BadMessage(f"Too many headers (more than {max_headers})")
    if any(len(line) > max_line for line in lines):
        raise BadMessage("Header line too long")
    return lines, body


def _content_length(lines: list[bytes]) -> int | None:
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"content-length", b"l"):
            try:
                length = int(value.strip())
            except ValueError:
                raise BadMessage("Bad Content-Length") from None
            if length < 0:
                raise BadMessage("Bad Content-Length")
            return length
    return None


def frame_length(head: bytes) -> int:
    """The body length of a message on a stream, from its header block (up to and including
    the empty line): Content-Length is required there (RFC 3261 18.3) and capped."""
    lines, _ = _normalise(head)
    length = _content_length(lines)
    if length is None:
        raise BadMessage("Missing Content-Length on a stream")
    if length > MAX_SIZE:
        raise BadMessage("Message too large")
    return length


def record_route(message: Message) -> list[Address]:
    """The Record-Route entries in order; [] when there are none or they are malformed
    (only stored for now, so a bad one must not fail the request)."""
    try:
        return [a for value in message.headers.getlist("Record-Route")
                for a in Address.parse_many(value)]
    except ValueError:
        return []


def parse(data: bytes, *, stream: bool = False) -> Message:
    """Parse one SIP message; raise BadMessage (a ValueError) with a reason phrase.

    On a datagram a missing Content-Length means "the rest"; on a stream the caller has
    already framed the message by it.
    """
    if len(data) > MAX_SIZE:
        raise BadMessage("Message too large")
    lines, body = _normalise(data)
    length = _content_length(lines)
    if length is not None:
        if length > len(body):
            raise BadMessage("Content-Length larger than the body")
        body = body[:length]
    elif stream:
        body = b""
    try:
        message = _Parser.parse(b"\r\n".join(lines) + b"\r\n\r\n" + body) if lines else None
    except UnicodeDecodeError:
        raise BadMessage("Headers are not UTF-8") from None
    except ValueError as exc:
        raise BadMessage(f"Malformed message ({exc})") from None
    if message is None:
        raise BadMessage("Empty message")
    _check(message)
    message.content_length = len(message.body)
    return message


def _check(message: Message) -> None:
    for name in REQUIRED:
        if message.headers.get(name) is None:
            raise BadMessage(f"Missing {name} header")
    try:
        cseq = message.cseq
        vias = message.via
        _ = (message.from_address, message.to_address, message.expires)
        mf = message.max_forwards
        contacts = [v.strip() for v in message.headers.getlist("Contact")]
        if contacts == ["*"]:
            if not isinstance(message, Request) or message.method != "REGISTER":
                raise BadMessage("Contact * outside REGISTER")
        elif contacts:
            _ = message.contact
    except ValueError as exc:
        raise BadMessage(f"Malformed header ({exc})") from None
    if not vias:
        raise BadMessage("Missing Via header")
    if mf is not None and mf < 0:
        raise BadMessage("Bad Max-Forwards")
    if isinstance(message, Request):
        if cseq.method != message.method and message.method not in ("ACK", "CANCEL"):
            raise BadMessage("CSeq method does not match the request")
        if message.method in ("ACK", "CANCEL") and cseq.method not in (message.method, "INVITE"):
            raise BadMessage("CSeq method does not match the request")
    elif not 100 <= message.code <= 699:
        raise BadMessage("Bad status code")


def serialize(message: Message) -> bytes:
    """Bytes on the wire, with Content-Length always matching the body."""
    message.content_length = len(message.body)
    return bytes(message)


# --- identifiers -----------------------------------------------------------------------------


def new_branch() -> str:
    return BRANCH_MAGIC + secrets.token_hex(8)


def new_tag() -> str:
    return secrets.token_hex(6)


def new_call_id() -> str:
    return secrets.token_hex(12)


def top_via(message: Message) -> Via:
    return message.via[0]


def branch(message: Message) -> str:
    return top_via(message).parameters.get("branch") or ""


def tag_of(address: Address) -> str:
    return address.parameters.get("tag") or ""


def with_tag(address: Address, tag: str) -> Address:
    return Address(uri=address.uri, name=address.name,
                   parameters=address.parameters.replace(tag=tag))


# --- builders --------------------------------------------------------------------------------


REASONS = {
    100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 202: "Accepted",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Request Entity Too Large",
    415: "Unsupported Media Type", 420: "Bad Extension", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 491: "Request Pending",
    500: "Server Internal Error", 501: "Not Implemented", 503: "Service Unavailable",
    603: "Decline",
}


def response(request: Request, code: int, reason: str = "", *, to_tag: str = "",
              body: bytes = b"", content_type: str = "") -> Response:
    """A response copying Via, From, To, Call-ID and CSeq verbatim (RFC 3261 8.2.6.2)."""
    resp = Response(code, reason or REASONS.get(code, "Unknown"), body)
    resp.headers.setlist("Via", list(request.headers.getlist("Via")))
    for name in ("From", "To", "Call-ID", "CSeq"):
        resp.headers.set(name, request.headers[name])
    if to_tag and code != 100 and not tag_of(request.to_address):
        resp.to_address = with_tag(request.to_address, to_tag)
    if content_type:
        resp.headers.set("Content-Type", content_type)
    return resp


def request(method: str, uri: URI | str, *, via_host: str, via_port: int | None = None,
            via_transport: str = "UDP",
            from_addr: Address, to_addr: Address, call_id: str, cseq: int,
            contact: Address | None = None, body: bytes = b"", content_type: str = "",
            max_forwards: int = 70, branch_id: str = "") -> Request:
    req = Request(method, uri if isinstance(uri, URI) else URI.parse(uri), body)
    req.via = [Via(via_transport, via_host, via_port,
                   parameters=Parameters(branch=branch_id or new_branch(), rport=None))]
    req.max_forwards = max_forwards
    req.from_address = from_addr
    req.to_address = to_addr
    req.call_id = call_id
    req.cseq = CSeq(cseq, method)
    if contact is not None:
        req.contact = [contact]
    if content_type:
        req.headers.set("Content-Type", content_type)
    return req


def stamp_received(request: Request, host: str, port: int) -> None:
    """RFC 3581: record where a request came from in its top Via (received, rport)."""
    vias = request.headers.getlist("Via")
    first = Via.parse_many(vias[0])
    top = first[0]
    rport = "rport" in top.parameters
    if top.host.strip("[]") == host and not rport:
        return
    # sipmessage would percent-encode an IPv6 received=, and parses it only in brackets;
    # these two values are ours (an IP literal and a port), so they are appended as written
    kept = {k: v for k, v in top.parameters.items() if k not in ("received", "rport")}
    text = str(Via(top.transport, top.host, top.port, Parameters(**kept)))
    received = f"[{host}]" if ":" in host else host
    text += (f";rport={port}" if rport else "") + f";received={received}"
    vias[0] = ", ".join([text, *(str(v) for v in first[1:])])


def is_address_literal(host: str) -> bool:
    return bool(re.fullmatch(r"[0-9.]+|\[[0-9a-fA-F:.]+\]", host))


ECHOED = ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq")


def bad_request(data: bytes, reason: str) -> bytes | None:
    """A 400 for a request we could not parse, echoing its transaction headers as raw
    lines; None when it was not recognisably a request (then it is only counted)."""
    data = data[:MAX_SIZE]
    if b"\n\n" not in data.replace(b"\r\n", b"\n"):
        data += b"\r\n\r\n"                   # truncated: answer from what arrived
    try:
        lines, _ = _normalise(data, max_headers=MAX_SIZE, max_line=MAX_SIZE)
    except BadMessage:
        return None
    text = [line.decode("utf-8", "replace") for line in lines]
    first = text[0].split(" ")
    if len(first) != 3 or first[2] != "SIP/2.0" or first[0] in ("ACK", "SIP/2.0"):
        return None
    echoed = [line for line in text[1:]
              if line.partition(":")[0].strip().lower() in ECHOED and line.isprintable()]
    compact = {"v": "via", "f": "from", "t": "to", "i": "call-id"}
    names = {compact.get(n, n) for n in (line.partition(":")[0].strip().lower() for line in echoed)}
    if not {"via", "from", "to", "call-id", "cseq"} <= names:
        return None
    phrase = "".join(ch for ch in reason if ch.isprintable())[:120]
    head = [f"SIP/2.0 400 {phrase}", *echoed, "Content-Length: 0"]
    return ("\r\n".join(head) + "\r\n\r\n").encode()
