"""Drive real `dhtnode` processes (Debian's OpenDHT CLI) from tests and benchmarks.

dhtnode reads commands on stdin and prints results on stdout; a reader thread
collects lines so a test can wait for a pattern with a bounded timeout. Every
process is stopped by its PID.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

DHTNODE = shutil.which("dhtnode")


@dataclass
class Dhtnode:
    port: int = 0
    bootstrap: str | None = None
    identity: bool = False
    save_identity: str | None = None
    network: int | None = None
    no_rate_limit: bool = False
    extra: tuple[str, ...] = ()
    lines: list[str] = field(default_factory=list)
    node_id: str = ""
    key_id: str = ""
    proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        if not DHTNODE:
            raise RuntimeError("dhtnode is not installed (apt-get install dhtnode)")
        argv = [DHTNODE, "-p", str(self.port)]
        if self.bootstrap:
            argv += ["-b", self.bootstrap]
        if self.identity or self.save_identity:
            argv.append("-i")
        if self.save_identity:
            argv += ["--save-identity", self.save_identity]
        if self.network is not None:
            argv += ["-n", str(self.network)]
        if self.no_rate_limit:
            argv.append("-U")
        return argv + list(self.extra)

    def start(self, timeout: float = 30.0) -> Dhtnode:
        self.proc = subprocess.Popen(
            self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        threading.Thread(target=self._read, daemon=True).start()
        m = self.wait_for(r"OpenDHT node ([0-9a-f]{40}) running on port (\d+)", timeout)
        self.node_id, self.port = m.group(1), int(m.group(2))
        if self.identity or self.save_identity:
            self.key_id = self.wait_for(r"Public key ID ([0-9a-f]{40})", 5).group(1)
        return self

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def mark(self) -> int:
        return len(self.lines)

    def cmd(self, line: str) -> int:
        """Send a CLI command; returns the mark to wait from."""
        assert self.proc and self.proc.stdin
        mark = self.mark()
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return mark

    def wait_for(self, pattern: str, timeout: float, since: int = 0) -> re.Match:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = since
        while True:
            while i < len(self.lines):
                m = rx.search(self.lines[i])
                if m:
                    return m
                i += 1
            if time.monotonic() > deadline:
                tail = "\n".join(self.lines[-20:])
                raise TimeoutError(f"dhtnode: no line matching {pattern!r} in {timeout}s; last lines:\n{tail}")
            if self.proc and self.proc.poll() is not None and i >= len(self.lines):
                raise RuntimeError(f"dhtnode exited with {self.proc.returncode}")
            time.sleep(0.02)

    def find_all(self, pattern: str, since: int = 0) -> list[re.Match]:
        rx = re.compile(pattern)
        return [m for line in self.lines[since:] if (m := rx.search(line))]

    def stop(self) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        try:
            self.cmd("x")
            self.proc.wait(timeout=5)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=5)

    def __enter__(self) -> Dhtnode:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
