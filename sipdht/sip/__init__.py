"""The SIP gateway: an unmodified softphone registers to the local agent (its registrar and
outbound proxy) and calls `sip:<account id>@dht` or an alias from [contacts]; the gateway is a
back-to-back user agent between the softphone and a peer link (`sipdht.account.Link`), and
relays the media over the link's channels.

Modules, one concept each: `message` (sipmessage behind a guard: size/header caps, LF and
folding, Content-Length, 400 reasons), `sdp` (line-based rewrite), `registrar`, `transaction`
(RFC 3261 timers, sans-IO), `dest` (where a message goes: UDP, TCP or a link), `b2bua`
(calls, dialogs, forking, identity assertion), `media` (RTP/RTCP relay), `gateway` (the asyncio
adapter). The composition root builds it as

    gateway = Gateway(config.sip, config.contacts, pool, account, config.sip.domain)
    await gateway.start()          # GatewayError if [sip] listen cannot be bound
    print(gateway.softphone_settings())
    ...
    await gateway.stop()           # BYE / 503 to every call in progress
"""
