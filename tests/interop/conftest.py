"""Fixtures of the interop tests: a real dhtnode to bootstrap on, and test identities."""

from __future__ import annotations

import pytest

from sipdht import identity
from tests.harness.dhtnode import Dhtnode


@pytest.fixture(scope="module")
def idents():
    """2048-bit identities (cheap to make), once per module."""
    return {who: identity.generate(2048) for who in ("alice", "bob", "mallory", "carol")}


@pytest.fixture
def dht(dhtnode_bin):
    """One dhtnode on loopback, stopped after the test."""
    with Dhtnode() as d:
        yield d
