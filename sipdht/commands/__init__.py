"""Subcommands of the `sipdht` CLI, one module per area; `load_all()` registers them.

Importing the package imports none of them, so `sipdht.commands.dht` (the composition
root of a plain node) can be used without the identity and crypto modules of the others.
"""


def load_all() -> None:
    from . import account, agent, dht  # noqa: F401  (importing registers the commands)
