#!/usr/bin/python3
"""Run with Debian's /usr/bin/python3 (python3-opendht): OpenDHT's own library gets a
key and prints, per value, the owner id *as OpenDHT computes it*.

usage: opendht_probe.py BOOTSTRAP_PORT KEY  ->  lines "<value id hex> <owner id or ->"
"""

import sys
import time

import opendht

port, key = int(sys.argv[1]), sys.argv[2]
node = opendht.DhtRunner()
node.run(port=0)
node.bootstrap("127.0.0.1", str(port))
deadline = time.monotonic() + 15
values = []
while not values and time.monotonic() < deadline:
    values = node.get(opendht.InfoHash.get(key))
    if not values:
        time.sleep(0.5)
for v in values:
    owner = v.owner.getId().toString() if v.owner else "-"
    owner = owner.decode() if isinstance(owner, bytes) else owner
    print(f"{v.id:016x} {owner}", flush=True)
node.join()
sys.exit(0 if values else 1)
