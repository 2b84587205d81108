import logging
from pathlib import Path

import pytest

from sipdht.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "x.ini") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_config_is_valid_and_documents_every_option(caplog):
    cfg = load_config(REPO / "conf" / "sipdht.ini")
    assert "unknown" not in caplog.text
    assert cfg.dht.port == 4222 and cfg.sip.listen == ("127.0.0.1", 5060)
    assert cfg.identity_path == (REPO / "var" / "identity").resolve()
    from dataclasses import fields
    shipped = (REPO / "conf" / "sipdht.ini").read_text()
    for section in ("identity", "dht", "ice", "sip", "policy", "log"):
        for f in fields(getattr(cfg, section)):
            assert f"\n{f.name} =" in shipped, f"[{section}] {f.name} is not documented"


def test_defaults_without_file():
    cfg = load_config(None)
    assert cfg.dht.bootstrap == [("bootstrap.jami.net", 4222)] and cfg.policy.unknown == "accept"
    assert cfg.identity_path.name == "identity"


def test_valid_values_are_typed(tmp_path):
    p = write(tmp_path, """
[dht]
port = 4333
bootstrap = 127.0.0.1:4222, [::1]:5000 localhost
network = 0x10
ipv6 = off
[ice]
stun = stun:198.51.100.2:3478
host_addresses = 10.200.1.2, ::1
timeout = 2.5
[policy]
allow = 0123456789ABCDEF0123456789abcdef01234567
unknown = Reject
[contacts]
Bob = 0123456789abcdef0123456789abcdef01234567
""")
    cfg = load_config(p)
    assert cfg.dht.port == 4333 and cfg.dht.network == 16 and cfg.dht.ipv6 is False
    assert cfg.dht.bootstrap == [("127.0.0.1", 4222), ("::1", 5000), ("localhost", 4222)]
    assert cfg.ice.stun == [("198.51.100.2", 3478)] and cfg.ice.timeout == 2.5
    assert cfg.ice.host_addresses == ["10.200.1.2", "::1"]
    assert cfg.policy.allow == ["0123456789abcdef0123456789abcdef01234567"]
    assert cfg.policy.unknown == "reject"
    assert cfg.resolve_account("Bob") == "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("section,key,value,expected", [
    ("dht", "port", "abc", "expected an integer 0-65535, got 'abc'"),
    ("dht", "port", "70000", "expected an integer 0-65535, got '70000'"),
    ("dht", "ipv4", "maybe", "expected yes/no"),
    ("dht", "bootstrap", "[::1", "expected host:port"),
    ("dht", "bootstrap", "h:0", "expected a port 1-65535"),
    ("ice", "stun", "198.51.100.2", "expected stun:HOST[:PORT]"),
    ("ice", "stun", "stun:[::1", "expected stun:HOST[:PORT] or stun:[IPV6]:PORT"),
    ("ice", "turn", "turn:h:99999", "expected turn:HOST[:PORT]"),
    ("ice", "turn", "stun:198.51.100.1", "expected turn:HOST[:PORT]"),
    ("ice", "host_addresses", "10.200.1.300", "'10.200.1.300' is not one"),
    ("ice", "timeout", "-1", "expected a number 1-300"),
    ("identity", "key_bits", "1024", "expected an integer 2048-16384"),
    ("policy", "unknown", "maybe", "expected one of accept, reject"),
    ("policy", "deny", "alice", "expected an account id"),
    ("contacts", "bob", "not-hex", "expected an account id"),
    ("log", "level", "loud", "expected one of debug"),
])
def test_bad_values_name_file_section_key(tmp_path, section, key, value, expected):
    p = write(tmp_path, f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert msg.startswith(f"{p} [{section}] {key}: "), msg
    assert expected in msg


def test_error_uses_the_path_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", "[dht]\nport = abc\n")
    with pytest.raises(ConfigError, match=r"^conf/x.ini \[dht\] port: expected an integer 0-65535, got 'abc'$"):
        load_config("conf/x.ini")


def test_unknown_keys_and_sections_warn(tmp_path, caplog):
    p = write(tmp_path, "[dht]\nprot = 1\n[dhtt]\na = 1\n")
    with caplog.at_level(logging.WARNING):
        cfg = load_config(p)
    assert f"{p} [dht] prot: unknown key ignored" in caplog.text
    assert f"{p} [dhtt]: unknown section ignored" in caplog.text
    assert cfg.dht.port == 4222


def test_relative_paths_resolve_against_the_file_folder(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    p = write(sub, "[identity]\npath = keys/me\n[dht]\nstate_file = /abs/state\n[log]\nfile = ../log.txt\n")
    monkeypatch.chdir("/")
    cfg = load_config(p)
    assert cfg.identity_path == sub / "keys" / "me"
    assert cfg.dht.state_file == Path("/abs/state")
    assert cfg.log.file == tmp_path / "log.txt"


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "missing.ini")
    with pytest.raises(ConfigError, match="not a valid INI file"):
        load_config(write(tmp_path, "port = 1\n"))


def test_unknown_alias_is_a_clear_error():
    with pytest.raises(ConfigError, match="neither an account id"):
        load_config(None).resolve_account("carol")


def test_stun_and_turn_urls_without_port_and_ipv6(tmp_path):
    """Before: `stun:HOST` without a port or any IPv6 URL crashed `sipdht run` with a
    traceback, and only the first URL was used."""
    p = write(tmp_path, """
[ice]
stun = stun:198.51.100.1, stun:[2001:db8::1]:3479, STUN:198.51.100.2:3480
turn = turn:198.51.100.1?transport=udp, turn:[2001:db8::2]
""")
    cfg = load_config(p)
    assert cfg.ice.stun == [("198.51.100.1", 3478), ("2001:db8::1", 3479), ("198.51.100.2", 3480)]
    assert cfg.ice.turn == [("198.51.100.1", 3478), ("2001:db8::2", 3478)]
