"""SHA-1 and SHA-256 without loading OpenSSL.

`import hashlib` maps OpenSSL's libcrypto: 3.7 MB resident, a sixth of an idle `sipdht node`,
which hashes only ids, keys and tokens of a few dozen bytes, where CPython's built-in
implementations are as fast. Code that needs OpenSSL (cryptography) still loads it then.
"""

from __future__ import annotations

try:
    from _sha1 import sha1  # type: ignore[import-not-found]  # no stubs: a CPython built-in
except ImportError:          # an interpreter without the built-in module
    from hashlib import sha1
try:
    from _sha256 import sha256  # type: ignore[import-not-found]  # CPython 3.11
except ImportError:
    try:
        from _sha2 import sha256  # type: ignore[import-not-found]  # CPython 3.12+
    except ImportError:
        from hashlib import sha256

__all__ = ["sha1", "sha256"]
