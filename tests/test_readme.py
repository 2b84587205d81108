"""Every command line the README shows works as written.

The README's shell blocks document `sipdht` usage lines (`[-p PORT]`, `get KEY | put KEY TEXT`,
`# with -b HOST:PORT, --timeout S`). Each line is expanded into a concrete command, every
optional part included and every placeholder given a sample value, and parsed by the real
parser: a documented flag or argument that does not exist fails here. The cheap ones (init,
id) are also run for real; the `make` targets are checked with `make -n`.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sipdht.cli import build_parser
from tests.harness.configs import loopback_ini

REPO = Path(__file__).resolve().parent.parent
ACCOUNT = "0123456789abcdef0123456789abcdef01234567"
SAMPLES = {"PORT": "4222", "HOST:PORT": "127.0.0.1:4222", "NETWORK": "0", "N": "2048",
           "KEY": "some-key", "TEXT": "hello", "ACCOUNT": ACCOUNT, "PATH": "/tmp/me",
           "BYTES": "16", "S": "3"}


def readme_blocks() -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)


def usage_lines() -> list[tuple[str, str]]:
    """(usage, options) for each `sipdht ...` line of the shell blocks: a comment starting with
    "with" documents options of every command on that line."""
    out = []
    for block in readme_blocks():
        for line in block.splitlines():
            code, _, comment = line.partition("#")
            if not code.strip().startswith("sipdht "):
                continue
            comment = comment.strip()
            options = comment[5:].replace(",", " ") if comment.startswith("with ") else ""
            out.append((code.strip(), options))
    return out


def expand(usage: str, options: str = "") -> list[list[str]]:
    """One usage line -> concrete argv lists: alternatives split on ` | `, optional parts
    kept, `...` dropped, placeholders replaced, the line's "with" options appended to each."""
    commands = []
    for part in usage.removeprefix("sipdht ").split(" | "):
        text = f"{part} {options}".replace("[", " ").replace("]", " ").replace("...", " ")
        commands.append([SAMPLES.get(tok, tok) for tok in shlex.split(text)])
    return commands


def documented_commands() -> list[list[str]]:
    return [argv for usage, options in usage_lines() for argv in expand(usage, options)]


def test_the_readme_documents_every_subcommand():
    names = {argv[0] for argv in documented_commands()}
    assert names == {"init", "id", "run", "node", "get", "put", "listen", "lookup", "ping"}


def test_expansion_keeps_every_documented_option():
    assert ["node", "-p", "4222", "-b", "127.0.0.1:4222", "-n", "0", "-U"] in documented_commands()
    assert ["listen", "some-key", "--count", "2048", "-b", "127.0.0.1:4222", "--timeout", "3"] \
        in documented_commands()


@pytest.mark.parametrize("argv", documented_commands(), ids=" ".join)
def test_documented_command_parses(argv, capsys):
    from sipdht import commands

    commands.load_all()         # importing a command module registers its commands

    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"README's `sipdht {' '.join(argv)}` is rejected: {capsys.readouterr().err}")
    assert args.command == argv[0]


def sipdht(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sipdht", *args], capture_output=True,
                          text=True, timeout=120)


def test_cheap_documented_commands_run(tmp_path):
    """init [--force] [--bits N], then id, then id --identity PATH, as the README shows them."""
    ini = loopback_ini(tmp_path / "s.ini")
    init = sipdht("init", "--config", str(ini), "--force", "--bits", "2048")
    assert init.returncode == 0, init.stderr
    account = init.stdout.strip()
    assert sipdht("id", "--config", str(ini)).stdout.strip() == account
    other = sipdht("id", "--config", str(ini), "--identity", str(tmp_path / "me"))
    assert other.returncode == 0 and other.stdout.strip() == account


@pytest.mark.parametrize("target", ["run", "test", "test-fast"])
def test_documented_make_targets_exist(target):
    assert any(re.search(rf"^make {target}\b", b, re.M) for b in readme_blocks())
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    out = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
