"""Two unmodified softphones (headless baresip) behind symmetric NATs, each registered to
its own agent's gateway inside its namespace: alice dials bob's alias, the agents find each
other on the DHT, the link goes through TURN, and each side hears the other's tone. The same
with 5 % loss on alice's NAT (the call still sets up)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import netlab as nl
from tests.harness.baresip import dominant_hz, rms, write_config
from tests.harness.requirements import require_binary

pytestmark = [pytest.mark.netns, pytest.mark.interop, pytest.mark.slow]

TONES = {"alice": 440, "bob": 1000}


def _sipdht(*args: str) -> str:
    out = subprocess.run([nl.PYTHON, "-m", "sipdht", *args], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


class Side:
    def __init__(self, topo, tmp: Path, who: str) -> None:
        self.topo, self.who, self.dir = topo, who, tmp / who
        self.ini = nl.agent_config(tmp, who)
        _sipdht("init", "--config", str(self.ini))
        self.account = _sipdht("id", "--config", str(self.ini))
        self.agent = self.phone = None

    def start_agent(self, contacts: dict[str, str]) -> None:
        with open(self.ini, "a") as fh:
            fh.write("[sip]\nlisten = 127.0.0.1:5060\n[contacts]\n"
                     + "".join(f"{k} = {v}\n" for k, v in contacts.items()))
        self.agent = self.topo.spawn(self.who, [nl.PYTHON, "-m", "sipdht", "run",
                                                "--config", str(self.ini)], watch=True)
        nl.output(self.agent).wait_for(r"SIP gateway on 127\.0\.0\.1:5060", 30)
        nl.output(self.agent).wait_for(r"contact record of \w+ published on [1-9]", 30)

    def start_phone(self, *extra: str) -> None:
        write_config(self.dir, self.who, 5070, 4444, 5060, TONES[self.who],
                     "auto" if self.who == "bob" else "manual")
        self.phone = self.topo.spawn(self.who, ["baresip", "-f", str(self.dir), *extra],
                                     watch=True)

    def stop(self) -> None:
        for proc in (self.phone, self.agent):
            if proc is not None:
                nl.stop_process(proc)

    def log(self) -> str:
        return "\n".join(f"--- {name}\n" + nl.output(p).tail(40)
                         for name, p in (("agent", self.agent), ("baresip", self.phone)) if p)


@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_baresip_behind_symmetric_nats_call_through_turn(netlab, coturn, dht_bootstrap, set_nat, tmp_path, loss):
    require_binary("baresip")
    set_nat("symmetric", "symmetric")
    alice, bob = Side(netlab, tmp_path, "alice"), Side(netlab, tmp_path, "bob")
    rule = ["FORWARD", "-m", "statistic", "--mode", "random", "--probability", str(loss),
            "-j", "DROP"]
    try:
        if loss:
            netlab.run("natA", ["iptables", "-I", *rule], check=True)
        bob.start_agent({"alice": alice.account})
        alice.start_agent({"bob": bob.account})
        bob.start_phone()
        nl.output(bob.agent).wait_for(r"REGISTER .* 200", 15)
        alice.start_phone("-e", "/dial bob", "-t", "14")
        nl.output(alice.agent).wait_for(r"answered 200", 40)
        assert alice.phone is not None
        alice.phone.wait(timeout=30)                  # -t: alice hangs up and quits
        nl.output(bob.agent).wait_for(r"hung up by the link side", 10)
        assert re.search(r"link (to|from) \w+ up over relay", nl.output(alice.agent).text())
    except BaseException:
        print(alice.log(), bob.log())
        raise
    finally:
        if loss:
            netlab.run("natA", ["iptables", "-D", *rule])
        alice.stop()
        bob.stop()
    time.sleep(0.2)
    heard_by = {w: sorted((tmp_path / w / "rec").glob("*dec*.wav")) for w in ("alice", "bob")}
    assert heard_by["alice"] and heard_by["bob"], heard_by
    assert rms(heard_by["bob"][0]) > 1000 and rms(heard_by["alice"][0]) > 1000
    assert abs(dominant_hz(heard_by["bob"][0]) - TONES["alice"]) < 40
    assert abs(dominant_hz(heard_by["alice"][0]) - TONES["bob"]) < 60
