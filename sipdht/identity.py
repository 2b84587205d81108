"""RSA identity, compatible with OpenDHT: the account id is OpenDHT's public key id.

Files follow `dhtnode --save-identity PREFIX`: PREFIX.pem holds the PKCS#8 private
key and PREFIX.crt the PEM certificate chain (own certificate first). So an OpenDHT
user keeps their id, and a sipdht identity can be handed to OpenDHT tools.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from .files import write_private

log = logging.getLogger(__name__)

MIN_KEY_BITS = 2048
KEY_SUFFIX = ".pem"
CERT_SUFFIX = ".crt"


class IdentityError(Exception):
    """The identity cannot be created or loaded; the message is user-facing."""


def spki_der(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(public_key_der: bytes) -> bytes:
    """OpenDHT's public key id: SHA-1 of the DER SubjectPublicKeyInfo."""
    return hashlib.sha1(public_key_der).digest()


def long_key_id(public_key_der: bytes) -> bytes:
    """OpenDHT's PkId (>= 3.x): SHA-256 of the DER SubjectPublicKeyInfo."""
    return hashlib.sha256(public_key_der).digest()


@dataclass(frozen=True)
class Identity:
    private_key: rsa.RSAPrivateKey
    chain: tuple[x509.Certificate, ...]

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def public_key_der(self) -> bytes:
        return spki_der(self.private_key.public_key())

    @property
    def key_id(self) -> bytes:
        return key_id(self.public_key_der)

    @property
    def account_id(self) -> str:
        return self.key_id.hex()

    @property
    def node_id(self) -> bytes:
        """DHT node id of an identified OpenDHT node: SHA1("node:" + hex key id)."""
        return hashlib.sha1(b"node:" + self.account_id.encode()).digest()

    @property
    def key_bits(self) -> int:
        return self.private_key.key_size

    def sign(self, data: bytes) -> bytes:
        """RSA PKCS#1 v1.5 with SHA-512: the only scheme OpenDHT verifies."""
        return self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA512())

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)


def _self_signed(key: rsa.RSAPrivateKey, common_name: str) -> x509.Certificate:
    account = key_id(spki_der(key.public_key())).hex()
    name = x509.Name([
        x509.NameAttribute(NameOID.USER_ID, account),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA512())
    )


def generate(bits: int = 4096, common_name: str = "sipdht") -> Identity:
    if bits < MIN_KEY_BITS:
        raise IdentityError(f"key size {bits} is too small: at least {MIN_KEY_BITS} bits")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return Identity(key, (_self_signed(key, common_name),))


def identity_files(location: str | Path) -> tuple[Path, Path]:
    """A prefix, or a .pem/.crt file of the pair -> (key file, certificate file)."""
    p = Path(location).expanduser()
    if p.suffix in (KEY_SUFFIX, CERT_SUFFIX):
        p = p.with_suffix("")
    return p.with_name(p.name + KEY_SUFFIX), p.with_name(p.name + CERT_SUFFIX)


def _write_private(path: Path, data: bytes) -> None:
    """0600, via a new temporary file (O_EXCL|O_NOFOLLOW, random name) and a rename, so the
    key is never world-readable nor written through a planted symlink."""
    write_private(path, data)


def save(identity: Identity, location: str | Path, passphrase: bytes | None = None,
         overwrite: bool = False) -> tuple[Path, Path]:
    key_path, cert_path = identity_files(location)
    if not overwrite and (key_path.exists() or cert_path.exists()):
        raise IdentityError(f"{key_path}: an identity already exists (use --force to replace it)")
    key_path.parent.mkdir(parents=True, exist_ok=True)
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    pem = identity.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    _write_private(key_path, pem)
    cert_path.write_bytes(identity.chain_pem())
    return key_path, cert_path


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"{path}: no {what} (run 'sipdht init' to create an identity)") from None
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read {what}: {exc.strerror}") from None


def _load_key(path: Path, passphrase: bytes | None) -> rsa.RSAPrivateKey:
    data = _read(path, "private key")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s: private key is readable by others (mode %o); chmod 600 it", path, mode)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        if passphrase:
            raise IdentityError(f"{path}: the key is not encrypted but a passphrase was given") from None
        raise IdentityError(f"{path}: the key is encrypted: set the passphrase environment "
                            "variable named by [identity] passphrase_env") from None
    except ValueError as exc:
        if passphrase and b"ENCRYPTED" in data:
            raise IdentityError(f"{path}: wrong passphrase") from None
        raise IdentityError(f"{path}: not a valid PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise IdentityError(f"{path}: not an RSA key (OpenDHT signs only with RSA)")
    if key.key_size < MIN_KEY_BITS:
        raise IdentityError(f"{path}: RSA key of {key.key_size} bits, at least {MIN_KEY_BITS} needed")
    return key


def _load_chain(path: Path, key: rsa.RSAPrivateKey) -> tuple[x509.Certificate, ...]:
    data = _read(path, "certificate")
    with warnings.catch_warnings():
        # OpenDHT 2.4.x writes negative serial numbers; accept them.
        warnings.simplefilter("ignore")
        try:
            chain = tuple(x509.load_pem_x509_certificates(data))
        except ValueError as exc:
            raise IdentityError(f"{path}: not a valid PEM certificate ({exc})") from None
    own = spki_der(key.public_key())
    if spki_der(chain[0].public_key()) != own:
        raise IdentityError(f"{path}: the certificate does not belong to the private key")
    return chain


def load(location: str | Path, passphrase: bytes | None = None) -> Identity:
    key_path, cert_path = identity_files(location)
    key = _load_key(key_path, passphrase)
    if not cert_path.exists():
        log.info("%s: no certificate beside the key; using a fresh self-signed one", cert_path)
        return Identity(key, (_self_signed(key, "sipdht"),))
    return Identity(key, _load_chain(cert_path, key))


def passphrase_from_env(variable: str) -> bytes | None:
    if not variable:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise IdentityError(f"[identity] passphrase_env names ${variable}, which is not set")
    return value.encode()
