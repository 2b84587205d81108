import hashlib
import os
import stat

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from sipdht import identity
from sipdht.identity import IdentityError


@pytest.fixture(scope="module")
def ident():
    return identity.generate(2048)


def test_account_id_is_sha1_of_spki(ident):
    der = ident.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert ident.account_id == hashlib.sha1(der).hexdigest()
    assert len(ident.account_id) == 40 and ident.account_id == ident.account_id.lower()
    uid = ident.certificate.subject.get_attributes_for_oid(identity.NameOID.USER_ID)[0].value
    assert uid == ident.account_id


def test_signature_is_rsa_pkcs1v15_sha512(ident):
    sig = ident.sign(b"hello")
    ident.private_key.public_key().verify(sig, b"hello", padding.PKCS1v15(), hashes.SHA512())


@pytest.mark.parametrize("passphrase", [None, b"correct horse"])
def test_round_trip_and_mode(tmp_path, ident, passphrase):
    key_path, cert_path = identity.save(ident, tmp_path / "id", passphrase)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert (b"ENCRYPTED" in key_path.read_bytes()) == bool(passphrase)
    loaded = identity.load(tmp_path / "id", passphrase)
    assert loaded.account_id == ident.account_id
    assert identity.load(key_path, passphrase).account_id == ident.account_id


def test_mode_is_0600_even_with_permissive_umask(tmp_path, ident):
    old = os.umask(0)
    try:
        key_path, _ = identity.save(ident, tmp_path / "id")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600


def test_passphrase_errors(tmp_path, ident):
    identity.save(ident, tmp_path / "id", b"secret")
    with pytest.raises(IdentityError, match="encrypted"):
        identity.load(tmp_path / "id")
    with pytest.raises(IdentityError, match="wrong passphrase"):
        identity.load(tmp_path / "id", b"nope")


def test_refuses_overwrite(tmp_path, ident):
    identity.save(ident, tmp_path / "id")
    with pytest.raises(IdentityError, match="already exists"):
        identity.save(ident, tmp_path / "id")
    identity.save(identity.generate(2048), tmp_path / "id", overwrite=True)
    assert identity.load(tmp_path / "id").account_id != ident.account_id


def test_corrupt_files_give_clear_errors(tmp_path, ident):
    key_path, cert_path = identity.save(ident, tmp_path / "id")
    cert_path.write_text("garbage")
    with pytest.raises(IdentityError, match=r"id.crt: not a valid PEM certificate"):
        identity.load(tmp_path / "id")
    key_path.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(IdentityError, match=r"id.pem: not a valid PEM private key"):
        identity.load(tmp_path / "id")
    with pytest.raises(IdentityError, match="no private key"):
        identity.load(tmp_path / "other")


def test_certificate_must_match_key(tmp_path, ident):
    identity.save(ident, tmp_path / "a")
    identity.save(identity.generate(2048), tmp_path / "b")
    (tmp_path / "a.crt").write_bytes((tmp_path / "b.crt").read_bytes())
    with pytest.raises(IdentityError, match="does not belong"):
        identity.load(tmp_path / "a")


def test_small_keys_refused():
    with pytest.raises(IdentityError, match="at least 2048"):
        identity.generate(1024)


def test_passphrase_from_env(monkeypatch):
    monkeypatch.setenv("SIPDHT_TEST_PW", "pw")
    assert identity.passphrase_from_env("SIPDHT_TEST_PW") == b"pw"
    assert identity.passphrase_from_env("") is None
    monkeypatch.delenv("SIPDHT_TEST_PW")
    with pytest.raises(IdentityError, match="SIPDHT_TEST_PW"):
        identity.passphrase_from_env("SIPDHT_TEST_PW")
