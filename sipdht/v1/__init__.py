"""Protocol v1, sipdht's own account type on OpenDHT values: signed contact records
(locator), offer/answer on the call inbox (signaling), and an aioice path carrying
AEAD-sealed, framed channels (ice, sealing, framing, link). `V1Account` ties them into
the sipdht.account.AccountType interface.
"""
