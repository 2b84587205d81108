"""The locator: who is online under an account id, and where to reach them.

Each running agent publishes a signed contact record (owner = the account key)
on SHA1("sipdht-contact:" + account id), re-published before it expires, and a
signed "offline" record when it stops. resolve() only believes records signed
by the account itself; they also carry the public key to encrypt calls to it.

The record's value id is random per run and checked by reading the record back:
anyone can store an unsigned value under a known id first (squatting), so when our
record is not found after a publish it is published again under a fresh id. The
persistent device id inside the record lets resolvers keep only its newest record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
from cryptography.hazmat.primitives.asymmetric import rsa

from ..dht.crypto import load_public_key
from ..dht.infohash import InfoHash
from ..dht.secure import SecureDht
from ..files import write_private

log = logging.getLogger(__name__)

# Type 0 (user data) on purpose: OpenDHT storers apply the signed-edit policy (same owner,
# higher seq) only to registered types; an edit of an unknown type is refused, so a record
# of our own type could never be replaced by its newer, or its "offline", version.
CONTACT_TYPE = 0
CONTACT_UTYPE = "application/x-sipdht-contact"
CONTACT_LIFETIME = 600.0       # user data lifetime on every storer
REPUBLISH_INTERVAL = 240.0
RETRY_INTERVAL = 10.0
PROTOCOL = "sipdht/1"


def contact_key(account: str) -> InfoHash:
    return InfoHash.get("sipdht-contact:" + account)


def _random_vid() -> int:
    return int.from_bytes(os.urandom(8), "big") or 1


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
        write_private(path, (value + "\n").encode())
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
    packed: bytes = msgpack.packb({"v": 1, "dev": device, "on": online, "t": published,
                                   "proto": [PROTOCOL]}, use_bin_type=True)
    return packed


def decode_record(data: bytes) -> Device | None:
    try:
        obj = msgpack.unpackb(data, raw=False)
        published = float(obj["t"])
        if not math.isfinite(published):
            return None
        return Device(str(obj["dev"])[:64], bool(obj["on"]), published,
                      tuple(str(p) for p in obj.get("proto", [])[:8]))
    except Exception:  # anything malformed is not a record
        return None


class Locator:
    def __init__(self, secure: SecureDht, device_id: str | None = None) -> None:
        self.secure = secure
        self.device_id = device_id or new_device_id()
        self._task: asyncio.Task[None] | None = None
        self._vid = _random_vid()
        self._seq = -1                   # of our last record under _vid (a fresh id each run)
        self.stats: Counter[str] = Counter()

    @property
    def account(self) -> str:
        return self.secure.account_id

    async def publish(self, online: bool = True) -> int:
        data = encode_record(self.device_id, online, time.time())
        seq = (self._seq + 1) & 0xFFFF
        value, stored = await self.secure.put_signed(contact_key(self.account), data, CONTACT_TYPE,
                                                     CONTACT_UTYPE, vid=self._vid, seq=seq)
        self._seq = value.seq
        return stored

    async def publish_checked(self) -> int:
        """Publish, read the record back, and once more under a fresh value id when it is
        not there (someone holds our id with a value we cannot replace)."""
        stored = await self.publish()
        if stored and not await self._visible():   # storers ack (dhtnode does), keep the squatter
            self.stats["record_squatted"] += 1
            log.warning("contact record not found after publishing it (value id taken?): "
                        "publishing under a new id")
            self._vid, self._seq = _random_vid(), -1
            stored = await self.publish()
        return stored

    async def _visible(self) -> bool:
        found = await self.resolve(self.account, local=False)
        return any(d.id == self.device_id and d.online for d in found.devices)

    @property
    def publishing(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """Publish now and every REPUBLISH_INTERVAL (well within the record lifetime)."""
        self._task = asyncio.create_task(self._publish_loop())

    async def _publish_loop(self) -> None:
        while True:
            stored = 0
            try:
                stored = await self.publish_checked()
                if stored:
                    log.info("contact record of %s published on %d node(s)", self.account, stored)
                else:
                    log.info("contact record of %s not published yet: no DHT node took it "
                             "(retrying every %g s)", self.account, RETRY_INTERVAL)
            except Exception as exc:  # keep trying: the network may come back
                self.stats["publish_failed"] += 1
                log.warning("publishing the contact record failed: %s", exc)
            await asyncio.sleep(REPUBLISH_INTERVAL if stored else RETRY_INTERVAL)

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

    async def resolve(self, account: str, first_online: bool = False,
                      local: bool = True) -> Resolution:
        """The account's devices from records it signed. With `first_online`, return as soon
        as one fresh online record is in (a caller needs one device, not the full list)."""
        result = Resolution(account)
        newest: dict[str, Device] = {}
        async for sv in self.secure.get_iter(contact_key(account), owner=account, local=local):
            device = decode_record(sv.value.data)
            if device is None or sv.value.utype != CONTACT_UTYPE:
                self.secure.stats["bad_contact_record"] += 1
                continue
            if device.id in newest and newest[device.id].published >= device.published:
                continue            # an older record of the same device (an earlier run)
            newest[device.id] = device
            result.devices = list(newest.values())
            result.public_key = load_public_key(bytes(sv.value.owner or b""))
            if first_online and result.online:
                break
        result.devices.sort(key=lambda d: d.published, reverse=True)
        return result
