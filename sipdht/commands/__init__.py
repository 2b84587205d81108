"""Subcommands of the `sipdht` CLI, one module per area; importing registers them."""

from . import account, agent  # noqa: F401
