"""Fetch paging decided from one search's state alone (search.py): the (id, seq) nodes
list, which of them still need a fetch by id, from whom, and how many at once."""

from __future__ import annotations

from sipdht.dht.infohash import InfoHash
from sipdht.dht.operations import GetOp
from sipdht.dht.routing import Node
from sipdht.dht.search import FETCH_IN_FLIGHT, MAX_FETCHES, Search, SearchNode
from sipdht.dht.values import FIELD_ID, FIELD_SEQ, FieldIndex, Query, Value

T0 = 1000.0
KEY = InfoHash.get("paged")


def search_with_get(started: float = T0) -> Search:
    search = Search(KEY, 4, T0)
    search.gets.append(GetOp(1, KEY, None, started))
    return search


def node(i: int) -> SearchNode:
    n = Node(InfoHash(bytes([i]) * 20), (f"10.0.0.{i}", 4222))
    return SearchNode(n, KEY.distance(n.id))


def listing(rows: list[list]) -> FieldIndex:
    return FieldIndex((FIELD_ID, FIELD_SEQ), rows)


def test_listed_ids_are_fetched_once_each_from_a_node_that_has_them() -> None:
    search = search_with_get()
    a, b = node(1), node(2)
    assert search.listed(a, listing([[1, 0], [2, 0]])) == (0, 0)
    assert search.listed(b, listing([[2, 0], [3, 5], ["x", 0]])) == (1, 0)   # a bad row
    due = search.fetches_due(T0)
    assert [(f.vid, f.seq, sn) for f, sn in due] == [(1, 0, a), (2, 0, a), (3, 5, b)]
    for fetch, _ in due:
        fetch.pending = True
    assert search.fetches_due(T0) == []             # all out: nothing asked twice
    fetch2 = search.fetches[(2, 0)]
    fetch2.pending = False                          # its source failed to answer
    assert [(f.vid, sn) for f, sn in search.fetches_due(T0)] == [(2, b)]   # the other one


def test_values_that_came_whole_need_no_fetch_and_failed_sources_are_skipped() -> None:
    search = search_with_get()
    a, b = node(1), node(2)
    search.listed(a, listing([[1, 0], [2, 0]]))
    search.listed(b, listing([[2, 0]]))
    search.fetched([Value(id=1)], sent=T0 + 1)      # asked inline after the get started
    a.failed = True
    assert [(f.vid, sn) for f, sn in search.fetches_due(T0)] == [(2, b)]
    # whole for the gets started before that reply was asked for
    assert search.fetches[(1, 0)].fetched == T0 + 1


def test_at_most_fetch_in_flight_and_max_fetches() -> None:
    search = search_with_get()
    a = node(1)
    rows = [[i, 0] for i in range(1, MAX_FETCHES + 11)]
    assert search.listed(a, listing(rows)) == (0, 0)          # rows past MAX_FETCHES unread
    assert len(search.fetches) == MAX_FETCHES
    assert search.listed(node(2), listing([[MAX_FETCHES + 99, 0]])) == (0, 1)   # full
    due = search.fetches_due(T0)
    assert len(due) == FETCH_IN_FLIGHT
    for fetch, _ in due:
        fetch.pending = True                        # what the driver does as it sends
    assert search.fetches_due(T0) == []
    due[0][0].pending = False                       # one came back: one more goes out
    assert len(search.fetches_due(T0)) == 1


def test_common_where_only_when_every_get_shares_it() -> None:
    search = Search(KEY, 4, T0)
    where = ((FIELD_ID, 5),)
    search.gets.append(GetOp(1, KEY, Query((), where), T0))
    assert search.common_where() == where
    search.gets.append(GetOp(2, KEY, None, T0))
    assert search.common_where() == ()
