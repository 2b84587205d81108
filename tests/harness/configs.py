"""The INI file of a sipdht process a test starts on loopback.

IPv4 on 127.0.0.1, ephemeral DHT and SIP ports, no state file, no periodic stats, a 2048-bit identity
(fast to create), and always an explicit `[dht] bootstrap` (empty unless given): the built-in
default joins the public OpenDHT network, which a test must never reach.
"""

from __future__ import annotations

from pathlib import Path


def loopback_ini(path: Path, identity: str = "me", bootstrap: str = "", extra: str = "") -> Path:
    """Write the INI at ``path`` (identity relative to its folder); ``extra`` is appended."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""[identity]
path = {identity}
key_bits = 2048
[dht]
port = 0
bind4 = 127.0.0.1
ipv6 = no
bootstrap = {bootstrap}
state_file =
[sip]
listen = 127.0.0.1:0
[log]
stats_interval = 0
{extra}""")
    return path
