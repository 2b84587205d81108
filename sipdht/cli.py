"""Command line: `sipdht init / id / run / ...`.

Exit codes: 0 ok, 1 the operation failed, 2 usage or configuration error. User
errors print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import __version__, commands, signals
from .commands.base import COMMANDS, EXIT_FAILED, EXIT_OK, EXIT_USAGE, OperationFailed, UsageError
from .config import Config, ConfigError, load_config

USER_CONFIG = Path("~/.config/sipdht/sipdht.ini")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _common_options(config_default, verbose_default) -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=config_default,
                        help=f"INI file (default: {USER_CONFIG} if it exists, else built-in defaults)")
    common.add_argument("-v", "--verbose", action="store_true", default=verbose_default,
                        help="debug logging")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sipdht", description="Call anyone by a cryptographic identity over an "
                     "OpenDHT-compatible DHT.", parents=[_common_options(None, False)])
    # Subcommands repeat the options without defaults, so either position works.
    common = _common_options(argparse.SUPPRESS, argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"sipdht {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help_text, _fn, setup) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        setup(p)
    return parser


def _config_path(args: argparse.Namespace) -> Path | None:
    if args.config:
        return Path(args.config)
    default = USER_CONFIG.expanduser()
    return default if default.exists() else None


def _private_log(path: Path) -> Path:
    """Logs name accounts and peers' addresses: a new log file is created 0600, never through
    a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    return path


def setup_logging(config: Config, verbose: bool) -> None:
    level = logging.DEBUG if verbose else getattr(logging, config.log.level.upper())
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if config.log.file:
        handlers.append(logging.FileHandler(_private_log(config.log.file)))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:   # aioice logs every candidate pair at INFO
        logging.getLogger("aioice").setLevel(logging.WARNING)


def _command_name(argv: list[str] | None) -> str | None:
    """The subcommand argv names, found before the full parser is built so that only its
    module need be imported (a plain `sipdht node` then loads no crypto)."""
    pre = argparse.ArgumentParser(add_help=False, parents=[_common_options(None, False)])
    pre.add_argument("command", nargs="?")
    known, _ = pre.parse_known_args(argv)
    return known.command


def _failure_types() -> tuple[type[BaseException], ...]:
    """Errors reported in one line with exit 1; IdentityError only if identity was loaded
    (it cannot have been raised otherwise)."""
    identity = sys.modules.get(f"{__package__}.identity")
    return (OperationFailed, OSError) + ((identity.IdentityError,) if identity else ())


LONG_RUNNING = ("run", "node")     # they stop cleanly on a signal, even one during start-up


def _asyncio_without_tls() -> None:
    """Load asyncio with `ssl` hidden, for `sipdht node`: asyncio imports ssl for TLS, which
    a DHT node never uses, and ssl maps libssl and libcrypto (5 MB, a fifth of an idle
    node). Afterwards `import ssl` works again; only asyncio's own TLS stays off."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # makes `import ssl` fail
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]


def main(argv: list[str] | None = None) -> int:
    signals.catch()
    name = _command_name(argv)
    try:
        if name not in LONG_RUNNING:
            signals.release()
        if name == "node":
            _asyncio_without_tls()
        commands.load_for(name)
    except KeyboardInterrupt:
        return EXIT_OK
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        config = load_config(_config_path(args))
        setup_logging(config, args.verbose)
        return COMMANDS[args.command][1](args, config)
    except (ConfigError, UsageError) as exc:
        print(f"sipdht: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:
        if not isinstance(exc, _failure_types()):
            raise
        print(f"sipdht: {exc}", file=sys.stderr)
        return EXIT_FAILED

