"""The locator: who is online under an account id, and where to reach them.

Each running agent publishes a signed contact record (owner = the account key)
on SHA1("sipdht-contact:" + account id), re-published before it expires, and a
signed "offline" record when it stops. resolve() only believes records signed
by the account itself; they also carry the public key to encrypt calls to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
from cryptography.hazmat.primitives.asymmetric import rsa

from .dht.crypto import load_public_key
from .dht.infohash import InfoHash
from .dht.secure import SecureDht, SecureListen

log = logging.getLogger(__name__)

# Type 0 (user data) on purpose: OpenDHT storers apply the signed-edit policy (same owner,
# higher seq) only to registered types; an edit of an unknown type is refused, so a record
# of our own type could never be replaced by its newer, or its "offline", version.
CONTACT_TYPE = 0
CONTACT_UTYPE = "application/x-sipdht-contact"
CONTACT_LIFETIME = 600.0       # user data lifetime on every storer
REPUBLISH_INTERVAL = 240.0
PROTOCOL = "sipdht/1"


def contact_key(account: str) -> InfoHash:
    return InfoHash.get("sipdht-contact:" + account)


def new_device_id() -> str:
    return os.urandom(8).hex()


def device_id_for(path: Path) -> str:
    """This installation's device id, kept beside the identity so a restart (even after a
    crash) re-publishes the same record instead of leaving a stale "online" one behind."""
    try:
        value = path.read_text().strip()
        if len(value) == 16 and int(value, 16) >= 0:
            return value
    except (OSError, ValueError):
        pass
    value = new_device_id()
    with contextlib.suppress(OSError):
        path.write_text(value + "\n")
    return value


@dataclass(frozen=True)
class Device:
    id: str
    online: bool
    published: float          # wall-clock time of the record
    protocols: tuple[str, ...]

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.published)


@dataclass
class Resolution:
    account: str
    devices: list[Device] = field(default_factory=list)
    public_key: rsa.RSAPublicKey | None = None

    @property
    def online_devices(self) -> list[Device]:
        return [d for d in self.devices if d.online and d.age < CONTACT_LIFETIME]

    @property
    def online(self) -> bool:
        return bool(self.online_devices) and self.public_key is not None

    @property
    def record_age(self) -> float | None:
        ages = [d.age for d in self.devices]
        return min(ages) if ages else None


def encode_record(device: str, online: bool, published: float) -> bytes:
    return msgpack.packb({"v": 1, "dev": device, "on": online, "t": published,
                          "proto": [PROTOCOL]}, use_bin_type=True)


def decode_record(data: bytes) -> Device | None:
    try:
        obj = msgpack.unpackb(data, raw=False)
        return Device(str(obj["dev"])[:64], bool(obj["on"]), float(obj["t"]),
                      tuple(str(p) for p in obj.get("proto", [])[:8]))
    except Exception:  # anything malformed is not a record
        return None


class Locator:
    def __init__(self, secure: SecureDht, device_id: str | None = None) -> None:
        self.secure = secure
        self.device_id = device_id or new_device_id()
        self._task: asyncio.Task | None = None
        self._seq: int | None = None     # of our last record; looked up once after a restart

    @property
    def account(self) -> str:
        return self.secure.account_id

    def _value_id(self) -> int:
        return int(self.device_id[:16], 16) or 1

    async def publish(self, online: bool = True) -> int:
        data = encode_record(self.device_id, online, time.time())
        seq = None if self._seq is None else (self._seq + 1) & 0xFFFF
        value, stored = await self.secure.put_signed(contact_key(self.account), data, CONTACT_TYPE,
                                                     CONTACT_UTYPE, vid=self._value_id(), seq=seq)
        self._seq = value.seq
        return stored

    def start(self) -> None:
        """Publish now and every REPUBLISH_INTERVAL (well within the record lifetime)."""
        self._task = asyncio.create_task(self._publish_loop())

    async def _publish_loop(self) -> None:
        while True:
            try:
                stored = await self.publish()
                log.info("contact record of %s published on %d node(s)", self.account, stored)
            except Exception as exc:  # keep trying: the network may come back
                log.warning("publishing the contact record failed: %s", exc)
            await asyncio.sleep(REPUBLISH_INTERVAL if stored else 10.0)

    async def stop(self, timeout: float = 1.5) -> None:
        """Say we are offline (best effort) so callers fail fast instead of timing out."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if not self.secure.node.connected:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.publish(online=False), timeout)

    async def resolve(self, account: str, first_online: bool = False) -> Resolution:
        """The account's devices from records it signed. With `first_online`, return as soon
        as one fresh online record is in (a caller needs one device, not the full list)."""
        result = Resolution(account)
        async for sv in self.secure.get_iter(contact_key(account), owner=account):
            device = decode_record(sv.value.data)
            if device is None or sv.value.utype != CONTACT_UTYPE:
                self.secure.stats["bad_contact_record"] += 1
                continue
            result.devices.append(device)
            result.public_key = load_public_key(bytes(sv.value.owner))
            if first_online and result.online:
                break
        result.devices.sort(key=lambda d: d.published, reverse=True)
        return result

    def inbox(self) -> SecureListen:
        from .signaling import inbox_key
        return self.secure.listen(inbox_key(self.account))
