"""``nomade keys generate|authorize``: CURVE key pairs for the agent and the collectors.

Set-up: on the agent host ``nomade keys generate --server``; copy its ``server.key``
(public) to every compute node's keys directory; on each node ``nomade keys generate
--client``; copy each node's ``client.key`` to the agent host and run ``nomade keys
authorize node01.key`` there (CURVE is on by default). One host running the agent and
a collector: ``nomade keys setup`` makes the whole set at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nomade.config import Config
from nomade.errors import NomadeError

NAME = "keys"
HELP = "create and authorize CURVE keys (encryption between collectors and agent)"
DESCRIPTION = """\
Set-up, once:
  agent host:    nomade keys generate --server
                 copy server.key (public) into each compute node's keys directory
  each node:     nomade keys generate --client
                 copy its client.key to the agent host, e.g. as node01.key
  agent host:    nomade keys authorize node01.key   (takes effect without a restart)
The name a key is authorized under is the node it speaks for (node01.key: node01);
a NAME.nodes file beside it lists more nodes, one a line (several slurmd, one collector).
One host with agent and collector (a demo, a test): nomade keys setup [--nodes n1,n2]
Secret files (*.key_secret, mode 0600) never leave their host.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``keys generate [--dir DIR] [--server] [--client [NAME]] [--force]`` and
    ``keys authorize CLIENT_PUBLIC_KEYFILE [--name NAME]``."""
    parser.description = DESCRIPTION
    actions = parser.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    generate = actions.add_parser("generate", help="create a key pair (NAME.key public, "
                                  "NAME.key_secret secret, mode 0600)")
    generate.add_argument("--dir", type=Path, help="where to write (default: [security] keys_dir)")
    generate.add_argument("--server", action="store_true", help="the agent's pair: server.key")
    generate.add_argument("--client", nargs="?", const="client", metavar="NAME",
                          help="a collector's pair: NAME.key (default NAME: client)")
    generate.add_argument("--force", action="store_true", help="replace existing key files")
    auth = actions.add_parser("authorize", help="let a collector's public key connect to this agent")
    auth.add_argument("public_key_file", metavar="CLIENT_PUBLIC_KEYFILE",
                      help="the client's public .key file (never the .key_secret)")
    auth.add_argument("--name", help="store it as NAME.key (default: the file's name)")
    setup = actions.add_parser("setup", help="one host's whole set: server and client pairs, "
                               "the client authorized (all files 0600)")
    setup.add_argument("--dir", type=Path, help="where (default: [security] keys_dir)")
    setup.add_argument("--name", help="the client's name (default: this host's short name)")
    setup.add_argument("--nodes", default="", help="more nodes it speaks for, comma-separated")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Generate or authorize keys; prints what was written. Returns 0."""
    from nomade import zmqkeys  # imports zmq: only when the command runs

    if args.keys_action == "generate":
        names = (["server"] if args.server else []) + ([args.client] if args.client else [])
        if not names:
            raise NomadeError("keys generate: say which pair: --server, --client, or both")
        directory = args.dir or cfg.security.key_files().keys_dir
        for name in names:
            public, secret = zmqkeys.create_keypair(directory, name, overwrite=args.force)
            print(f"wrote {public} (public: copy it to the other side)")
            print(f"wrote {secret} (secret: stays on this host)")
        return 0
    if args.keys_action == "setup":
        name = args.name or cfg.paths().node_name
        nodes = [n for n in args.nodes.split(",") if n]
        directory = zmqkeys.setup_keys(args.dir or cfg.security.key_files().keys_dir, name, nodes)
        print(f"keys in {directory}: server and client pairs, client authorized as {name}")
        return 0
    dest, new = zmqkeys.authorize(args.public_key_file, cfg.security, args.name)
    print(f"{'authorized' if new else 'already authorized'}: {dest}")
    return 0
