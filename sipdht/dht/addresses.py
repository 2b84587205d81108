"""What an address tells before any datagram is decoded: its family, whether OpenDHT would
refuse it as a source, whether it is loopback. Cached: a busy node sees the same few
thousand addresses over and over."""

from __future__ import annotations

import functools
import ipaddress

from .messages import Addr


def family_of(addr: Addr) -> int:
    return 6 if ":" in addr[0] else 4


def is_martian(addr: Addr) -> bool:
    """Sources OpenDHT refuses outright: port 0, 0.x, multicast and above, ::, v4-mapped."""
    return addr[1] == 0 or _martian_ip(addr[0])


@functools.lru_cache(maxsize=4096)
def _martian_ip(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return True
    if ip.is_unspecified or ip.is_multicast:
        return True
    if ip.version == 4:
        return ip.packed[0] == 0 or ip.packed[0] >= 224
    return ip.ipv4_mapped is not None


@functools.lru_cache(maxsize=4096)
def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback
