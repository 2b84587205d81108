"""SIPp scenarios and runs for bench/call_setup.py.

The UAC scenario stamps each call with SIPp's own clock (``<gettimeofday>``, microseconds)
just before it sends the INVITE and when the 180 and the 200 arrive, and logs one line per
event (``-trace_logs``); SIPp's own response-time counter (``start_rtd``/``rtd``, whole
milliseconds) runs alongside on INVITE->200 as a cross-check. A 180 that arrives after the
200 (a proxy with several worker processes may reorder them) is still accepted and timed
(``optional="global"``). The UAS scenario copies Record-Route into its 180/200 (SIPp's
built-in ``uas`` does not, so calls through a record-routing proxy would break at the ACK);
when there is no Record-Route SIPp drops the empty line.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SIPP = "sipp"
HEAD = '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'

_SDP = """
      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000"""

_UAC_HDRS = """      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      Call-ID: [call_id]
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70"""

UAC = HEAD + f"""<scenario name="bench uac: INVITE, 180/200 timed, ACK, BYE">
  <nop><action><gettimeofday assign_to="t0s,t0u"/></action></nop>
  <send retrans="500" start_rtd="inv200"><![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
{_UAC_HDRS}
      To: <sip:[service]@[remote_ip]:[remote_port]>
      CSeq: 1 INVITE
      Content-Type: application/sdp
      Content-Length: [len]
{_SDP}
  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="180" optional="global">
    <action><gettimeofday assign_to="t1s,t1u"/>
      <log message="R180 [call_number] [$t0s] [$t0u] [$t1s] [$t1u]"/></action>
  </recv>
  <recv response="200" rtd="inv200" rrs="true">
    <action><gettimeofday assign_to="t2s,t2u"/>
      <log message="R200 [call_number] [$t0s] [$t0u] [$t2s] [$t2u]"/></action>
  </recv>
  <send><![CDATA[

      ACK [next_url] SIP/2.0
{_UAC_HDRS}
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      [routes]
      CSeq: 1 ACK
      Content-Length: 0

  ]]></send>
  <send retrans="500"><![CDATA[

      BYE [next_url] SIP/2.0
{_UAC_HDRS}
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      [routes]
      CSeq: 2 BYE
      Content-Length: 0

  ]]></send>
  <recv response="200" crlf="true"/>
</scenario>
"""

_UAS_REPLY = """  <send{retrans}><![CDATA[

      SIP/2.0 {status}
      [last_Via:]
      [last_Record-Route:]
      [last_From:]
      [last_To:]{tag}
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
{body}
  ]]></send>
"""
_EMPTY = "      Content-Length: 0\n"
_WITH_SDP = "      Content-Type: application/sdp\n      Content-Length: [len]\n" + _SDP + "\n"
_TAG = ";tag=[pid]SIPpTag01[call_number]"

UAS = HEAD + ('<scenario name="bench uas: 180 and 200 at once, copies Record-Route">\n'
              '  <recv request="INVITE" crlf="true"/>\n'
              + _UAS_REPLY.format(retrans="", status="180 Ringing", tag=_TAG, body=_EMPTY)
              + _UAS_REPLY.format(retrans=' retrans="500"', status="200 OK", tag=_TAG,
                                  body=_WITH_SDP)
              + '  <recv request="ACK" crlf="true"/>\n  <recv request="BYE"/>\n'
              + _UAS_REPLY.format(retrans="", status="200 OK", tag="", body=_EMPTY)
              + "</scenario>\n")

REGISTER = HEAD + """<scenario name="register [service] with contact [field0]">
  <send retrans="500"><![CDATA[

      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[service]@[remote_ip]>;tag=[pid]reg[call_number]
      To: <sip:[service]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:[service]@[field0]>
      Expires: 3600
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="200"/>
</scenario>
"""


def write_scenarios(directory: Path) -> dict[str, Path]:
    out = {}
    for name, text in (("uac", UAC), ("uas", UAS), ("register", REGISTER)):
        out[name] = Path(directory) / f"bench_{name}.xml"
        out[name].write_text(text)
    return out


def netns(ns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv] if ns else argv


@dataclass
class CallTimes:
    """Per-call setup times (ms) from one UAC run, plus SIPp's success/failure counts."""

    t180: dict[int, float] = field(default_factory=dict)
    t200: dict[int, float] = field(default_factory=dict)
    ok: int = 0
    failed: int = 0
    rc: int = 0
    errors: str = ""

    def extend(self, other: CallTimes, offset: int) -> None:
        self.t180.update({k + offset: v for k, v in other.t180.items()})
        self.t200.update({k + offset: v for k, v in other.t200.items()})
        self.ok += other.ok
        self.failed += other.failed
        self.rc = self.rc or other.rc
        self.errors = self.errors or other.errors


_LOG_RE = re.compile(r"^R(180|200) (\d+) (\d+)\.0+ (\d+)\.0+ (\d+)\.0+ (\d+)\.0+", re.M)


def parse_logs(cwd: Path) -> tuple[dict[int, float], dict[int, float]]:
    t180: dict[int, float] = {}
    t200: dict[int, float] = {}
    for path in glob.glob(str(cwd / "*_logs.log")):
        for m in _LOG_RE.finditer(Path(path).read_text(errors="replace")):
            s0, u0, s1, u1 = (int(m.group(i)) for i in range(3, 7))
            ms = (s1 - s0) * 1e3 + (u1 - u0) / 1e3
            (t180 if m.group(1) == "180" else t200).setdefault(int(m.group(2)), ms)
    return t180, t200


def _screen_count(cwd: Path, label: str) -> int:
    for path in glob.glob(str(cwd / "*_screen.log")):
        m = re.search(rf"{label}\s*\|\s*\d+\s*\|\s*(\d+)", Path(path).read_text(errors="replace"))
        if m:
            return int(m.group(1))
    return 0


def run_uac(ns: str | None, cwd: Path, scenario: Path, target: str, service: str, local_ip: str,
            port: int, calls: int, rate: float, timeout: float, limit: int = 1) -> CallTimes:
    """`calls` calls (at most `limit` at a time) from a fresh SIPp; bounded by `timeout`."""
    cwd.mkdir(parents=True, exist_ok=True)
    argv = netns(ns, [SIPP, target, "-sf", str(scenario), "-s", service, "-i", local_ip,
                      "-p", str(port), "-m", str(calls), "-r", str(rate), "-l", str(limit),
                      "-nostdin", "-trace_logs", "-trace_screen", "-trace_err",
                      "-recv_timeout", "30000", "-timeout", f"{int(timeout)}s",
                      "-timeout_error"])
    try:
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout + 15,
                           stdin=subprocess.DEVNULL)
        rc, err = r.returncode, r.stderr
    except subprocess.TimeoutExpired:       # subprocess.run killed it by PID
        rc, err = -9, f"sipp killed after {timeout + 15:g} s"
    t180, t200 = parse_logs(cwd)
    errors = ""
    for path in glob.glob(str(cwd / "*_errors.log")):
        errors = Path(path).read_text(errors="replace")[-1500:]
    return CallTimes(t180, t200, _screen_count(cwd, "Successful call"),
                     _screen_count(cwd, "Failed call"), rc, errors or err[-1500:])


def register(ns: str | None, cwd: Path, scenario: Path, registrar: str, user: str,
             contact: str, local_ip: str, port: int, tries: int = 20) -> bool:
    """REGISTER `user` -> `contact` at `registrar` (retried: the registrar may be starting)."""
    cwd.mkdir(parents=True, exist_ok=True)
    csv = cwd / "contact.csv"
    csv.write_text(f"SEQUENTIAL\n{contact};\n")
    for _ in range(tries):
        argv = netns(ns, [SIPP, registrar, "-sf", str(scenario), "-s", user, "-inf", str(csv),
                          "-i", local_ip, "-p", str(port), "-m", "1", "-nostdin",
                          "-recv_timeout", "2000", "-timeout", "5s", "-timeout_error"])
        try:
            r = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=20,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            continue
        if r.returncode == 0:
            return True
        import time

        time.sleep(0.5)
    return False


def clean(cwd: Path) -> None:
    for path in glob.glob(str(cwd / "*.log")):
        os.unlink(path)


def version() -> str:
    try:
        out = subprocess.run([SIPP, "-v"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "SIPp ?"
    m = re.search(r"SIPp v[\w.\-]+", out)
    return m.group(0) if m else "SIPp ?"
