"""Subcommands of the `sipdht` CLI, one module per area; importing registers them."""

from . import agent, account  # noqa: F401
