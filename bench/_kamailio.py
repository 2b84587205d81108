"""Debian's Kamailio as the reference SIP proxy for bench/call_setup.py.

A minimal kamailio.cfg: registrar (in-memory usrloc) + stateful proxy with record_route.
Requests to a registered user are relayed to the contact; in-dialog requests follow the
Route set (loose_route). Nothing is loaded that listens anywhere else (no ctl/jsonrpc
FIFO, no TCP). The main process runs in the foreground (-DD) so it is stopped by its PID;
Kamailio stops its children itself on SIGTERM.
"""

from __future__ import annotations

import shutil
from pathlib import Path

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
INSTALL_HINT = ("kamailio is not installed: "
                "apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends kamailio")

CFG = """\
#!KAMAILIO
# written by bench/_kamailio.py: minimal registrar + record-routing stateful proxy
debug=1
log_stderror=yes
memdbg=5
memlog=5
children={children}
disable_tcp=yes
auto_aliases=no
listen=udp:{ip}:{port}
alias="{ip}:{port}"
mpath="{modules}"

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"

modparam("usrloc", "db_mode", 0)
modparam("rr", "append_fromtag", 1)
modparam("tm", "fr_timer", 10000)
modparam("tm", "fr_inv_timer", 30000)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) {{
                t_relay();
            }}
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    t_check_trans();
    if (is_method("REGISTER")) {{
        if (!save("location")) {{
            sl_reply_error();
        }}
        exit;
    }}
    if (is_method("INVITE|SUBSCRIBE")) {{
        record_route();
    }}
    if (!lookup("location")) {{
        sl_send_reply("404", "Not Found");
        exit;
    }}
    if (!t_relay()) {{
        sl_reply_error();
    }}
    exit;
}}
"""


def write_cfg(directory: Path, ip: str, port: int, children: int = 2) -> Path:
    path = Path(directory) / "kamailio.cfg"
    path.write_text(CFG.format(ip=ip, port=port, children=children, modules=MODULES))
    return path


def argv(cfg: Path, rundir: Path, shm_mb: int = 64, pkg_mb: int = 8) -> list[str]:
    """Foreground (-DD), log to stderr (-E), runtime and working dir in `rundir`."""
    return [KAMAILIO, "-f", str(cfg), "-DD", "-E", "-m", str(shm_mb), "-M", str(pkg_mb),
            "-Y", str(rundir), "-w", str(rundir), "-P", str(Path(rundir) / "kamailio.pid")]


def check_cfg(cfg: Path) -> str | None:
    """None when `kamailio -c` accepts the file, else its complaint."""
    import subprocess

    r = subprocess.run([KAMAILIO, "-c", "-f", str(cfg)], capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    return None if r.returncode == 0 else (r.stderr or r.stdout)[-2000:]


def version() -> str:
    import subprocess

    try:
        out = subprocess.run([KAMAILIO, "-v"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "kamailio ?"
    return out.splitlines()[0].replace("version: ", "").strip() if out else "kamailio ?"
