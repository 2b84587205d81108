"""Headless baresip 1.0 for gateway tests: configs from conf/baresip with the sound devices
replaced (ausine tone source, aubridge sink, sndfile dumps), and a ctrl_tcp client
(netstring-framed JSON)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import struct
import wave
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "conf" / "baresip"


def write_config(folder: Path, name: str, sip_port: int, ctrl_port: int, gateway_port: int,
                 tone_hz: int, answermode: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rec").mkdir(exist_ok=True)
    lines = []
    for line in (CONF / "config").read_text().splitlines():
        key = line.split()[0] if line.split() else ""
        if key in ("sip_listen", "rtp_ports") or line.endswith(("alsa.so", "stdio.so", "opus.so",
                                                              "g722.so")):
            continue
        lines.append(line)
    lines += [f"sip_listen\t127.0.0.1:{sip_port}", "net_interface\t127.0.0.1",
              f"rtp_ports\t{sip_port + 2}-{sip_port + 40}",
              "module\tausine.so", "module\taubridge.so", "module\tsndfile.so",
              "module_app\tctrl_tcp.so", f"ctrl_tcp_listen\t127.0.0.1:{ctrl_port}",
              f"audio_player\taubridge,sink-{name}", f"audio_source\tausine,{tone_hz}",
              f"audio_alert\taubridge,alert-{name}", "ausrc_srate\t48000", "ausrc_channels\t2",
              f"snd_path\t{folder / 'rec'}"]
    (folder / "config").write_text("\n".join(lines) + "\n")
    account = [ln for ln in (CONF / "accounts").read_text().splitlines()
               if ln.startswith("<sip:")][0]
    account = account.replace("<sip:me@dht>", f"<sip:{name}@dht>")
    account = account.replace("127.0.0.1:5060", f"127.0.0.1:{gateway_port}")
    account = re.sub(r"answermode=\w+", f"answermode={answermode}", account)
    account = re.sub(r"audio_codecs=[\w,]+", "audio_codecs=PCMU", account)
    (folder / "accounts").write_text(account + "\n")


class Baresip:
    def __init__(self, folder: Path, ctrl_port: int) -> None:
        self.folder = folder
        self.ctrl_port = ctrl_port
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.events: list[dict] = []
        self._token = 0

    async def start(self) -> None:
        log = open(self.folder / "baresip.log", "wb")
        self.proc = await asyncio.create_subprocess_exec(
            "baresip", "-f", str(self.folder), stdin=asyncio.subprocess.DEVNULL,
            stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        log.close()
        for _ in range(100):
            try:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1",
                                                                         self.ctrl_port)
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError("baresip ctrl_tcp did not come up: " + self.log())

    def log(self) -> str:
        return (self.folder / "baresip.log").read_text(errors="replace")[-4000:]

    async def command(self, command: str, params: str = "") -> None:
        assert self.writer is not None
        self._token += 1
        body = json.dumps({"command": command, "params": params,
                           "token": str(self._token)}).encode()
        self.writer.write(b"%d:%s," % (len(body), body))
        await self.writer.drain()

    async def _message(self) -> dict:
        assert self.reader is not None
        length = int((await self.reader.readuntil(b":"))[:-1])
        body = await self.reader.readexactly(length + 1)
        return json.loads(body[:-1])

    async def wait_event(self, kind: str, timeout: float) -> dict:
        async def wait() -> dict:
            while True:
                msg = await self._message()
                if msg.get("event"):
                    self.events.append(msg)
                    if msg.get("type") == kind:
                        return msg
        return await asyncio.wait_for(wait(), timeout)

    async def stop(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                await self.command("quit")
            self.writer.close()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 2)
            if self.proc.returncode is None:       # quit is not always honoured (testbed G6)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()


def dominant_hz(path: Path) -> float:
    """Frequency of a tone in a WAV file, from its zero crossings (first channel)."""
    with wave.open(str(path)) as w:
        rate, channels, n = w.getframerate(), w.getnchannels(), w.getnframes()
        raw = w.readframes(n)
    samples = struct.unpack(f"<{len(raw) // 2}h", raw)[::channels]
    samples = samples[len(samples) // 4:]                  # skip the start (jitter buffer)
    crossings = sum(1 for a, b in zip(samples, samples[1:], strict=False) if a < 0 <= b)
    return crossings * rate / max(1, len(samples))


def rms(path: Path) -> float:
    with wave.open(str(path)) as w:
        raw = w.readframes(w.getnframes())
    samples = struct.unpack(f"<{len(raw) // 2}h", raw)
    return (sum(s * s for s in samples) / max(1, len(samples))) ** 0.5
