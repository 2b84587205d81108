"""Two unmodified softphones (headless baresip 1.0, configured from conf/baresip) call each
other by alias through two gateways: each registers to its own gateway (outbound proxy),
alice dials `bob`, bob answers automatically; the tone each side sends is found in the
audio the other side decoded (sndfile dumps), and the hang-up reaches both."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.harness.baresip import Baresip, dominant_hz, rms, write_config
from tests.harness.requirements import require_binary
from tests.harness.sip import free_port


@pytest.mark.interop
async def test_two_baresip_call_by_alias_tones_cross(tmp_path: Path, gateways) -> None:
    require_binary("baresip")

    gw_a, gw_b = gateways
    write_config(tmp_path / "alice", "alice", free_port(), ctrl_a := free_port(), gw_a.port,
                 440, "manual")
    write_config(tmp_path / "bob", "bob", free_port(), ctrl_b := free_port(), gw_b.port,
                 1000, "auto")
    alice, bob = Baresip(tmp_path / "alice", ctrl_a), Baresip(tmp_path / "bob", ctrl_b)
    try:
        await alice.start()
        await bob.start()
        for _ in range(50):
            if gw_a.registrar.bindings(gw_a.now()) and gw_b.registrar.bindings(gw_b.now()):
                break
            await asyncio.sleep(0.1)
        assert gw_b.registrar.bindings(gw_b.now()), bob.log()
        await alice.command("dial", "bob")
        await alice.wait_event("CALL_ESTABLISHED", 10)
        await bob.wait_event("CALL_ESTABLISHED", 5)
        await asyncio.sleep(3)
        await alice.command("hangup")
        await alice.wait_event("CALL_CLOSED", 5)
        await bob.wait_event("CALL_CLOSED", 5)
        await asyncio.sleep(0.5)
        assert not gw_a.b2bua.calls and not gw_b.b2bua.calls
    finally:
        await alice.stop()
        await bob.stop()
    heard_by_bob = sorted((tmp_path / "bob" / "rec").glob("*dec*.wav"))
    heard_by_alice = sorted((tmp_path / "alice" / "rec").glob("*dec*.wav"))
    assert heard_by_bob and heard_by_alice, list((tmp_path / "bob" / "rec").iterdir())
    assert rms(heard_by_bob[0]) > 1000 and rms(heard_by_alice[0]) > 1000
    assert abs(dominant_hz(heard_by_bob[0]) - 440) < 30
    assert abs(dominant_hz(heard_by_alice[0]) - 1000) < 50
