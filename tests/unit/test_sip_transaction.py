"""RFC 3261 transaction timers on an unreliable transport, with synthetic time."""

from sipdht.sip import message as m
from sipdht.sip.transaction import T1, T2, Timeout, TransactionLayer


def invite(branch="z9hG4bKinv", method="INVITE"):
    return m.parse((f"{method} sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n"
                    f"From: <sip:alice@dht>;tag=a\r\nTo: <sip:bob@dht>\r\nCall-ID: x\r\n"
                    f"CSeq: 1 {method}\r\nMax-Forwards: 70\r\n\r\n").encode())


def run_until(layer, end, step=0.01):
    sent, now = [], 0.0
    while now <= end:
        layer.handle_timer(now)
        sent += [(now, o) for o in layer.datagrams_to_send()]
        now = round(now + step, 6)
    return sent


def test_invite_client_timer_a_doubles_and_b_times_out():
    layer = TransactionLayer()
    tx = layer.send_request(invite(), "peer", False, 0.0)
    sent = run_until(layer, 33.0, 0.05)
    times = [round(t, 1) for t, _ in sent]
    assert times[:6] == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5]       # A: T1, 2T1, 4T1 ... no T2 cap
    event = layer.next_event()
    assert isinstance(event, Timeout) and event.transaction is tx and len(layer) == 0


def test_non_invite_client_timer_e_capped_at_t2_and_f():
    layer = TransactionLayer()
    layer.send_request(invite(method="OPTIONS"), "peer", False, 0.0)
    times = [round(t, 2) for t, _ in run_until(layer, 33.0, 0.05)]
    gaps = [round(b - a, 2) for a, b in zip(times, times[1:], strict=False)]
    assert gaps[:4] == [T1, 2 * T1, 4 * T1, T2] and max(gaps) == T2
    assert isinstance(layer.next_event(), Timeout)


def test_reliable_transport_sends_once():
    layer = TransactionLayer()
    layer.send_request(invite(), "peer", True, 0.0)
    assert len(run_until(layer, 10.0, 0.1)) == 1


def test_provisional_stops_a_and_error_final_is_acked_and_absorbed():
    layer = TransactionLayer()
    req = invite()
    tx = layer.send_request(req, "peer", False, 0.0)
    layer.datagrams_to_send()
    assert layer.receive_response(m.response(req, 180, to_tag="b"), 0.1) is tx
    assert run_until(layer, 5.0) == []
    busy = m.response(req, 486, to_tag="b")
    assert layer.receive_response(busy, 6.0) is tx
    ack = m.parse(layer.datagrams_to_send()[0].data)
    assert ack.method == "ACK" and m.branch(ack) == "z9hG4bKinv" and ack.to_address.parameters["tag"] == "b"
    assert layer.receive_response(busy, 6.5) is None          # retransmitted 486: ACK again only
    assert m.parse(layer.datagrams_to_send()[0].data).method == "ACK"


def test_2xx_retransmissions_reach_the_user():
    layer = TransactionLayer()
    req = invite()
    tx = layer.send_request(req, "peer", False, 0.0)
    ok = m.response(req, 200, to_tag="b")
    assert layer.receive_response(ok, 0.1) is tx
    assert layer.receive_response(ok, 0.6) is tx              # the user re-sends its ACK
    assert [m.parse(o.data).method for o in layer.datagrams_to_send()] == ["INVITE"]


def test_server_invite_retransmitted_request_gets_last_response():
    layer = TransactionLayer()
    req = invite()
    kind, tx = layer.receive_request(req, "phone", False, 0.0)
    assert kind == "new"
    layer.respond(tx, m.response(req, 100), 0.0)
    layer.datagrams_to_send()
    assert layer.receive_request(invite(), "phone", False, 0.2) == ("absorbed", None)
    assert m.parse(layer.datagrams_to_send()[0].data).code == 100


def test_server_2xx_retransmitted_until_ack_then_stops():
    layer = TransactionLayer()
    req = invite()
    _, tx = layer.receive_request(req, "phone", False, 0.0)
    layer.respond(tx, m.response(req, 200, to_tag="t"), 0.0)
    sent = run_until(layer, 2.0)
    assert [round(t, 1) for t, _ in sent] == [0.0, 0.5, 1.5]     # G-like: T1, 2T1
    layer.ack_received(tx, 2.0)
    assert run_until(layer, 40.0) == []
    assert layer.next_event() is None


def test_server_2xx_without_ack_times_out_h():
    layer = TransactionLayer()
    req = invite()
    _, tx = layer.receive_request(req, "phone", False, 0.0)
    layer.respond(tx, m.response(req, 200, to_tag="t"), 0.0)
    sent = run_until(layer, 33.0, 0.05)
    assert len(sent) >= 8
    gaps = [round(b[0] - a[0], 1) for a, b in zip(sent, sent[1:], strict=False)]
    assert max(gaps) == T2
    event = layer.next_event()
    assert isinstance(event, Timeout) and event.transaction is tx


def test_server_error_ack_matches_same_branch():
    layer = TransactionLayer()
    req = invite()
    _, tx = layer.receive_request(req, "phone", False, 0.0)
    layer.respond(tx, m.response(req, 486, to_tag="t"), 0.0)
    ack = invite(method="ACK")
    assert layer.receive_request(ack, "phone", False, 0.1) == ("absorbed", None)
    layer.datagrams_to_send()
    assert run_until(layer, 10.0) == [] and layer.next_event() is None and len(layer) == 0


def test_ack_outside_transaction_goes_to_dialog():
    layer = TransactionLayer()
    assert layer.receive_request(invite(branch="z9hG4bKother", method="ACK"), "p", False, 0.0) == ("ack", None)
