"""`sipdht init` and `sipdht id`: the account identity."""

from __future__ import annotations

import argparse

from .. import identity
from ..config import Config
from .base import EXIT_OK, command, load_identity


def _init_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace an existing identity")
    p.add_argument("--bits", type=int, help="RSA key size (default: [identity] key_bits)")


@command("init", "create the account identity (RSA key + certificate) and print its account id",
         _init_args)
def cmd_init(args: argparse.Namespace, config: Config) -> int:
    location = config.identity_path
    key_path, _ = identity.identity_files(location)
    if key_path.exists() and not args.force:
        raise identity.IdentityError(
            f"{key_path}: an identity already exists (use --force to replace it)")
    ident = identity.generate(args.bits or config.identity.key_bits)
    passphrase = identity.passphrase_from_env(config.identity.passphrase_env)
    identity.save(ident, location, passphrase, overwrite=args.force)
    print(ident.account_id)
    return EXIT_OK


def _id_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--identity", metavar="PATH",
                   help="a sipdht key file, or the prefix given to dhtnode --save-identity")


@command("id", "print the account id of the configured identity (or of --identity PATH)", _id_args)
def cmd_id(args: argparse.Namespace, config: Config) -> int:
    print(load_identity(config, args.identity).account_id)
    return EXIT_OK
