"""The SIP gateway: an unmodified softphone registers to the local agent and calls
`sip:<account id>@dht`; the gateway is a back-to-back user agent between the softphone and a
peer link (`sipdht.account.Link`), relaying media over the link's channels.

Modules: `message` (guarded parse/serialize), `sdp` (line-based rewrite), `registrar`,
`transaction` (RFC 3261 timers, sans-IO), `b2bua` (call/dialog mapping), `media` (RTP relay),
`gateway` (the asyncio UDP/TCP/link adapter: `Gateway(sip_config, contacts, pool, account,
domain)`).
"""
