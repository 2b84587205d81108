"""INI file -> typed, validated configuration.

Every option is a dataclass field whose metadata holds its parser, so the
schema, the defaults and the error messages live in one place. Errors name the
file, section and key and say what was expected, because a user editing an INI
file by hand needs to know exactly which line to fix.
"""

from __future__ import annotations

import configparser
import ipaddress
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path("~/.local/share/sipdht")
# The public OpenDHT network's bootstrap, as used by dhtnode's examples and Jami (port 4222).
PUBLIC_BOOTSTRAP = ("bootstrap.jami.net", 4222)
ACCOUNT_ID_RE = re.compile(r"^[0-9a-f]{40}$")


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message is user-facing."""


class _Invalid(ValueError):
    """Raised by a parser with the 'expected ...' part of the message."""


Parser = Callable[[str, Path], Any]


def _opt(default: Any, parse: Parser, *, factory: bool = False):
    if factory:
        return field(default_factory=default, metadata={"parse": parse})
    return field(default=default, metadata={"parse": parse})


# --- parsers: (raw text, folder of the file) -> value, or raise _Invalid -------------------


def int_range(lo: int, hi: int) -> Parser:
    def parse(raw: str, _base: Path) -> int:
        try:
            value = int(raw, 0)
        except ValueError:
            raise _Invalid(f"an integer {lo}-{hi}") from None
        if not lo <= value <= hi:
            raise _Invalid(f"an integer {lo}-{hi}")
        return value

    return parse


def float_range(lo: float, hi: float) -> Parser:
    def parse(raw: str, _base: Path) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise _Invalid(f"a number {lo:g}-{hi:g}") from None
        if not lo <= value <= hi:
            raise _Invalid(f"a number {lo:g}-{hi:g}")
        return value

    return parse


_BOOLS = {"1": True, "yes": True, "true": True, "on": True,
          "0": False, "no": False, "false": False, "off": False}


def boolean(raw: str, _base: Path) -> bool:
    try:
        return _BOOLS[raw.strip().lower()]
    except KeyError:
        raise _Invalid("yes/no, true/false, on/off or 1/0") from None


def choice(*options: str) -> Parser:
    def parse(raw: str, _base: Path) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise _Invalid("one of " + ", ".join(options))
        return value

    return parse


def text(raw: str, _base: Path) -> str:
    return raw.strip()


def path(raw: str, base: Path) -> Path | None:
    raw = raw.strip()
    if not raw:
        return None
    p = Path(raw).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def split_list(raw: str) -> list[str]:
    return [item for item in re.split(r"[\s,]+", raw.strip()) if item]


def parse_hostport(raw: str, default_port: int | None = None,
                   any_port: bool = False) -> tuple[str, int]:
    """'host:port', '[v6]:port', or a bare host when a default port is given."""
    raw = raw.strip()
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?|([^:\s\[\]]+)(?::(\d+))?", raw)
    if not m:
        raise _Invalid("host:port or [ipv6]:port")
    host = m.group(1) or m.group(3)
    port_s = m.group(2) or m.group(4)
    if port_s is None:
        if default_port is None:
            raise _Invalid("host:port (the port is required)")
        return host, default_port
    port = int(port_s)
    if not (0 if any_port else 1) <= port <= 65535:
        raise _Invalid("a port 0-65535" if any_port else "a port 1-65535")
    return host, port


def hostport_list(default_port: int | None) -> Parser:
    def parse(raw: str, _base: Path) -> list[tuple[str, int]]:
        return [parse_hostport(item, default_port) for item in split_list(raw)]

    return parse


def hostport(default_port: int) -> Parser:
    """A local address to listen on: port 0 picks a free port."""
    def parse(raw: str, _base: Path) -> tuple[str, int]:
        return parse_hostport(raw, default_port, any_port=True)

    return parse


def ip_list(raw: str, _base: Path) -> list[str]:
    out = []
    for item in split_list(raw):
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise _Invalid(f"IP addresses separated by commas ('{item}' is not one)") from None
    return out


def account_id(raw: str) -> str:
    value = raw.strip().lower()
    if not ACCOUNT_ID_RE.match(value):
        raise _Invalid("an account id (40 hexadecimal characters)")
    return value


def account_list(raw: str, _base: Path) -> list[str]:
    return [account_id(item) for item in split_list(raw)]


def server_list(scheme: str, default_port: int) -> Parser:
    """`stun:HOST[:PORT]` / `turn:[IPV6]:PORT` URLs (RFC 7064/7065) -> [(host, port)]."""
    def parse(raw: str, _base: Path) -> list[tuple[str, int]]:
        out = []
        for item in split_list(raw):
            scheme_, _, rest = item.partition(":")
            rest = rest.split("?", 1)[0]          # ?transport=udp: UDP is all aioice uses here
            if scheme_.lower() != scheme or not rest:
                raise _Invalid(f"{scheme}:HOST[:PORT] URLs separated by commas ('{item}' is not one)")
            try:
                out.append(parse_hostport(rest, default_port))
            except _Invalid:
                raise _Invalid(f"{scheme}:HOST[:PORT] or {scheme}:[IPV6]:PORT URLs "
                               f"('{item}' is not one)") from None
        return out

    return parse


# --- sections ------------------------------------------------------------------------------


@dataclass
class IdentityConfig:
    path: Path | None = _opt(None, path)
    key_bits: int = _opt(4096, int_range(2048, 16384))
    passphrase_env: str = _opt("", text)


@dataclass
class DhtConfig:
    port: int = _opt(4222, int_range(0, 65535))
    bind4: str = _opt("0.0.0.0", text)
    bind6: str = _opt("::", text)
    ipv4: bool = _opt(True, boolean)
    ipv6: bool = _opt(True, boolean)
    bootstrap: list[tuple[str, int]] = _opt(lambda: [PUBLIC_BOOTSTRAP], hostport_list(4222),
                                            factory=True)
    network: int = _opt(0, int_range(0, 2**32 - 1))
    state_file: Path | None = _opt(None, path)
    rate_limit: bool = _opt(True, boolean)
    max_storage_mb: int = _opt(64, int_range(1, 65536))
    max_listeners_per_ip: int = _opt(256, int_range(1, 10_000_000))
    client_only: bool = _opt(False, boolean)


@dataclass
class IceConfig:
    stun: list[tuple[str, int]] = _opt(list, server_list("stun", 3478), factory=True)
    turn: list[tuple[str, int]] = _opt(list, server_list("turn", 3478), factory=True)
    turn_username: str = _opt("", text)
    turn_password: str = _opt("", text)
    host_addresses: list[str] = _opt(list, ip_list, factory=True)
    timeout: float = _opt(15.0, float_range(1, 300))
    idle_timeout: float = _opt(300.0, float_range(0, 86400))


@dataclass
class SipConfig:
    listen: tuple[str, int] = _opt(("127.0.0.1", 5060), hostport(5060))
    allow_remote: bool = _opt(False, boolean)
    domain: str = _opt("dht", text)
    username: str = _opt("", text)          # digest auth for non-loopback phones (allow_remote)
    password: str = _opt("", text)
    media_address: str = _opt("", text)     # address put in SDP for the relay ports
    rtp_port_min: int = _opt(40000, int_range(1024, 65534))
    rtp_port_max: int = _opt(49999, int_range(1025, 65535))
    publish: str = _opt("always", choice("always", "registered"))


@dataclass
class PolicyConfig:
    allow: list[str] = _opt(list, account_list, factory=True)
    deny: list[str] = _opt(list, account_list, factory=True)
    unknown: str = _opt("accept", choice("accept", "reject"))
    offer_window: float = _opt(120.0, float_range(5, 3600))


@dataclass
class LogConfig:
    level: str = _opt("info", choice("debug", "info", "warning", "error"))
    file: Path | None = _opt(None, path)
    stats_interval: float = _opt(60.0, float_range(0, 86400))


@dataclass
class Config:
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    dht: DhtConfig = field(default_factory=DhtConfig)
    ice: IceConfig = field(default_factory=IceConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    contacts: dict[str, str] = field(default_factory=dict)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: Path | None = None

    @property
    def identity_path(self) -> Path:
        """Path prefix of the identity (PREFIX.pem key, PREFIX.crt certificate)."""
        if self.identity.path is not None:
            return self.identity.path
        return (DEFAULT_DATA_DIR / "identity").expanduser()

    def resolve_account(self, name: str) -> str:
        """An alias from [contacts] or a raw account id -> account id."""
        key = name.strip()
        if key in self.contacts:
            return self.contacts[key]
        try:
            return account_id(key)
        except _Invalid:
            raise ConfigError(
                f"'{name}' is neither an account id (40 hex characters) nor an alias in [contacts]"
            ) from None


SECTIONS = ("identity", "dht", "ice", "sip", "contacts", "policy", "log")


def _where(source: Path | None, section: str, key: str | None = None) -> str:
    name = str(source) if source else "<defaults>"
    return f"{name} [{section}]" + (f" {key}" if key else "")


def _load_section(obj: Any, section: str, items: dict[str, str], source: Path) -> None:
    known = {f.name: f for f in fields(obj)}
    base = source.resolve().parent
    for key, raw in items.items():
        f = known.get(key)
        if f is None:
            log.warning("%s: unknown key ignored", _where(source, section, key))
            continue
        try:
            setattr(obj, key, f.metadata["parse"](raw, base))
        except _Invalid as exc:
            raise ConfigError(f"{_where(source, section, key)}: expected {exc}, got {raw!r}") from None


def _load_contacts(items: dict[str, str], source: Path) -> dict[str, str]:
    contacts = {}
    for alias, raw in items.items():
        try:
            contacts[alias] = account_id(raw)
        except _Invalid as exc:
            raise ConfigError(f"{_where(source, 'contacts', alias)}: expected {exc}, got {raw!r}") from None
    return contacts


class _CaseKeepingParser(configparser.ConfigParser):
    def optionxform(self, optionstr: str) -> str:
        return optionstr   # aliases in [contacts] keep their case


def load_config(source: str | Path | None) -> Config:
    """Read an INI file; None gives the embedded defaults."""
    config = Config()
    if source is None:
        return config
    source = Path(source)
    parser = _CaseKeepingParser(interpolation=None, default_section="\x00none")
    try:
        with open(source, encoding="utf-8") as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read configuration: {exc.strerror or exc}") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: not a valid INI file: {str(exc).splitlines()[0]}") from None
    config.source = source.resolve()
    for section in parser.sections():
        items = dict(parser.items(section))
        if section not in SECTIONS:
            log.warning("%s: unknown section ignored", _where(source, section))
        elif section == "contacts":
            config.contacts = _load_contacts(items, source)
        else:
            _load_section(getattr(config, section), section, items, source)
    return config
