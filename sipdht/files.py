"""Writing private files (keys, node state): mode 0600, atomically, never via a symlink.

The data goes to a new temporary file beside the target, created with O_EXCL|O_NOFOLLOW
under a random name (so a file or symlink planted in the directory is never opened), and
is then renamed over the target (rename replaces a symlink, it does not follow it).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_MODE = 0o600


def write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.urandom(8).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_MODE)
    try:
        try:
            os.fchmod(fd, PRIVATE_MODE)    # the umask may have removed bits, never added
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
