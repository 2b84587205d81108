"""Subcommands of the `sipdht` CLI, one module per area; importing a module registers its
commands in `base.COMMANDS`.

Importing the package imports none of them: `sipdht node` (and get/put/listen) need only
commands/dht.py, not the identity, crypto and ICE modules the other areas import.
"""


def load_all() -> None:
    from . import account, agent, dht  # noqa: F401  (importing registers the commands)


def load_for(name: str | None) -> None:
    """Import what command `name` needs: only commands/dht.py for a DHT command, else all."""
    from . import dht  # noqa: F401
    from .base import COMMANDS

    if name not in COMMANDS:
        load_all()
