import time

from sipdht.v1.locator import Device, Resolution, decode_record, device_id_for, encode_record


def test_device_id_is_kept_across_restarts(tmp_path):
    path = tmp_path / "identity.device"
    first = device_id_for(path)
    assert len(first) == 16 and device_id_for(path) == first
    assert path.stat().st_mode & 0o777 == 0o600         # before: 0644
    path.write_text("garbage")
    assert device_id_for(path) != "garbage" and len(device_id_for(path)) == 16


def test_record_round_trip_and_garbage():
    now = time.time()
    dev = decode_record(encode_record("00112233aabbccdd", True, now))
    assert dev == Device("00112233aabbccdd", True, now, ("sipdht/1",))
    for junk in (b"", b"\x93\x01\x02\x03", b"\xc1"):
        assert decode_record(junk) is None


def test_resolution_online_needs_a_fresh_online_record_and_a_key():
    now = time.time()
    r = Resolution("a" * 40, [Device("1", True, now - 5, ())], public_key=object())
    assert r.online and 4 < r.record_age < 10
    assert not Resolution("a" * 40, [Device("1", True, now - 5, ())]).online      # no key
    assert not Resolution("a" * 40, [Device("1", False, now, ())], object()).online
    assert not Resolution("a" * 40, [Device("1", True, now - 3600, ())], object()).online
    assert Resolution("a" * 40).record_age is None
