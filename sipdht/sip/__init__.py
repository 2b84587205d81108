"""The SIP gateway: an unmodified softphone registers to the local agent (its registrar and
outbound proxy) and calls `sip:<account id>@dht` or an alias from [contacts]; the gateway is a
back-to-back user agent between the softphone and a peer link (`sipdht.account.Link`), and
relays the media over the link's channels.

Modules, one concept each, lowest first: `message` (sipmessage behind a guard: size/header
caps, LF and folding, Content-Length and stream framing, 400 reasons), `sdp` (line-based
rewrite), `dest` (where a message goes: UDP, TCP or a link), `transport` (sockets, link
channels, the send path), `auth` (access policy, nonces, digest), `transaction` (RFC 3261
timers, sans-IO), `registrar`, `dialog` (one dialog, sans-IO), `local` (our names and addresses
per dialog), `media` (RTP/RTCP relay) and `media_map` (a call's SDP onto relays), `call` (a
call's legs and forks), `b2bua` (calls, forking, identity assertion), `gateway` (composes them
and routes new requests). The composition root builds it as

    gateway = Gateway(config.sip, config.contacts, pool, account, config.sip.domain)
    await gateway.start()          # GatewayError if [sip] listen cannot be bound
    print(gateway.softphone_settings())
    ...
    await gateway.stop()           # BYE / 503 to every call in progress
"""
