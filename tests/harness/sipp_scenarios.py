"""SIPp scenarios the built-in ones do not cover: CANCEL before answer, BYE from the
callee, re-INVITE hold/resume, 486 Busy passed back. UAC ones dial [service] at the
gateway; UAS ones answer the INVITE a gateway delivers."""

_HEAD = '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'

_SDP = """v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
      a={direction}
"""


def _uac_request(method: str, cseq: int, *, tag: bool, sdp: str = "", branch: str = "[branch]",
                 via: str = "", extra: str = "") -> str:
    body = _SDP.format(direction=sdp) if sdp else ""
    ctype = "      Content-Type: application/sdp\n" if sdp else ""
    via = via or f"Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}"
    return f"""  <send{' retrans="500"' if method != "ACK" else ""}><![CDATA[

      {method} sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      {via}
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>{'[peer_tag_param]' if tag else ''}
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
{extra}{ctype}      Content-Length: [len]

      {body}
    ]]></send>
"""


def _reply(code: str, *, tag: bool = True, sdp: str = "", cseq: str = "[last_CSeq:]",
           extra: str = "") -> str:
    body = _SDP.format(direction=sdp) if sdp else ""
    ctype = "      Content-Type: application/sdp\n" if sdp else ""
    to = "[last_To:];tag=[pid]SIPpTag01[call_number]" if tag else "[last_To:]"
    return f"""  <send><![CDATA[

      SIP/2.0 {code}
      [last_Via:]
      [last_From:]
      {to}
      [last_Call-ID:]
      {cseq}
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
{extra}{ctype}      Content-Length: [len]

      {body}
    ]]></send>
"""


def _recv(what: str, optional: bool = False) -> str:
    kind = "response" if what[0].isdigit() else "request"
    opt = ' optional="true"' if optional else ""
    return f'  <recv {kind}="{what}"{opt}/>\n'


def _scenario(name: str, *parts: str) -> str:
    return _HEAD + f'<scenario name="{name}">\n' + "".join(parts) + "</scenario>\n"


uac_cancel = _scenario(
    "UAC cancels after ringing",
    _uac_request("INVITE", 1, tag=False, sdp="sendrecv"),
    _recv("100", True), _recv("180"),
    _uac_request("CANCEL", 1, tag=False, via="[last_Via:]"),
    _recv("200"), _recv("487"),
    _uac_request("ACK", 1, tag=True, via="[last_Via:]"),
)

uas_cancel = _scenario(
    "UAS rings, is cancelled",
    _recv("INVITE"), _reply("180 Ringing"),
    _recv("CANCEL"),
    _reply("200 OK", tag=True),
    _reply("487 Request Terminated", tag=True, cseq="CSeq: 1 INVITE"),
    _recv("ACK"),
    '  <timewait milliseconds="500"/>\n',
)

uac_busy = _scenario(
    "UAC gets 486",
    _uac_request("INVITE", 1, tag=False, sdp="sendrecv"),
    _recv("100", True), _recv("486"),
    _uac_request("ACK", 1, tag=True, via="[last_Via:]"),
)

uas_busy = _scenario(
    "UAS busy",
    _recv("INVITE"), _reply("486 Busy Here"), _recv("ACK"),
    '  <timewait milliseconds="500"/>\n',
)

uac_callee_hangs_up = _scenario(
    "UAC, the callee hangs up",
    _uac_request("INVITE", 1, tag=False, sdp="sendrecv"),
    _recv("100", True), _recv("180", True), _recv("200"),
    _uac_request("ACK", 1, tag=True),
    _recv("BYE"), _reply("200 OK", tag=False),
    '  <timewait milliseconds="500"/>\n',
)

uas_hangs_up = _scenario(
    "UAS answers then hangs up",
    """  <recv request="INVITE">
    <action>
      <ereg regexp="sip:[^>;]*" search_in="hdr" header="Contact:" check_it="true" assign_to="3"/>
    </action>
  </recv>
""",
    _reply("180 Ringing"), _reply("200 OK", sdp="sendrecv"),
    """  <recv request="ACK">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" check_it="true" assign_to="1"/>
      <ereg regexp=".*" search_in="hdr" header="To:" check_it="true" assign_to="2"/>
    </action>
  </recv>
  <pause milliseconds="200"/>
  <send retrans="500"><![CDATA[

      BYE [$3] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: [$2]
      To: [$1]
      [last_Call-ID:]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]></send>
""",
    _recv("200"),
)

uac_hold_resume = _scenario(
    "UAC holds and resumes, then hangs up",
    _uac_request("INVITE", 1, tag=False, sdp="sendrecv"),
    _recv("100", True), _recv("180", True), _recv("200"),
    _uac_request("ACK", 1, tag=True),
    _uac_request("INVITE", 2, tag=True, sdp="sendonly"),
    _recv("100", True),
    """  <recv response="200">
    <action><ereg regexp="a=recvonly" search_in="body" check_it="true" assign_to="3"/></action>
  </recv>
""",
    _uac_request("ACK", 2, tag=True, extra="      X-Seen: [$3]\n"),
    _uac_request("INVITE", 3, tag=True, sdp="sendrecv"),
    _recv("100", True),
    """  <recv response="200">
    <action><ereg regexp="a=sendrecv" search_in="body" check_it="true" assign_to="4"/></action>
  </recv>
""",
    _uac_request("ACK", 3, tag=True, extra="      X-Seen: [$4]\n"),
    _uac_request("BYE", 4, tag=True),
    _recv("200"),
)

uas_hold_resume = _scenario(
    "UAS accepts hold and resume",
    _recv("INVITE"), _reply("180 Ringing"), _reply("200 OK", sdp="sendrecv"), _recv("ACK"),
    """  <recv request="INVITE">
    <action><ereg regexp="a=sendonly" search_in="body" check_it="true" assign_to="1"/></action>
  </recv>
""",
    _reply("200 OK", tag=False, sdp="recvonly", extra="      X-Seen: [$1]\n"), _recv("ACK"),
    """  <recv request="INVITE">
    <action><ereg regexp="a=sendrecv" search_in="body" check_it="true" assign_to="2"/></action>
  </recv>
""",
    _reply("200 OK", tag=False, sdp="sendrecv", extra="      X-Seen: [$2]\n"), _recv("ACK"),
    _recv("BYE"), _reply("200 OK", tag=False),
    '  <timewait milliseconds="500"/>\n',
)
