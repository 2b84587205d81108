"""Fixtures of the gateway tests: two gateways on loopback joined by an in-memory link pool
(tests/harness/memlink.py), and a call between two raw phones through them."""

from __future__ import annotations

import pytest

from tests.harness.sip import two_gateways
from tests.harness.sip_call import PhoneCall


@pytest.fixture
async def gateways():
    """(gw_a, gw_b): alice's and bob's gateways, each knowing the other by alias; stopped
    after the test."""
    gw_a, gw_b = await two_gateways()
    try:
        yield gw_a, gw_b
    finally:
        await gw_a.stop()
        await gw_b.stop()


@pytest.fixture
async def call():
    """A `PhoneCall` (not yet set up); its phones and RTP sockets are closed after the test,
    inside the test's event loop (an asyncio transport closes through it)."""
    phone_call = PhoneCall()
    yield phone_call
    phone_call.close()
