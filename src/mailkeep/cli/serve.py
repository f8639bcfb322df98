"""`mailkeep serve`: a thin layer over mailkeep.server.service."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mailkeep.server.service import DEFAULT_DOMAIN, Options, run


def add_parser(sub: Any) -> None:
    s = sub.add_parser("serve", help="run the server (store, agents, SMTP); sets up a new data folder on first start")
    s.add_argument("--bind", default="127.0.0.1", help="address to listen on (default loopback only)")
    s.add_argument("--smtp", type=int, default=2525, metavar="PORT")
    s.add_argument("--pop3", type=int, default=1110, metavar="PORT")
    s.add_argument("--imap", type=int, default=1143, metavar="PORT")
    s.add_argument("--http", type=int, default=8080, metavar="PORT", help="the administration API (default 8080)")
    s.add_argument("--https", choices=("auto", "on", "off"), default="auto",
                   help="TLS on the API with the server's certificate (auto: when --bind is not loopback)")
    s.add_argument("--domain", default=DEFAULT_DOMAIN, help="mail domain for a first start (default %(default)s)")


def main(ns: argparse.Namespace, *, data: str) -> int:
    from mailkeep.engine.errors import EseError
    from mailkeep.store.server import ConfigError

    try:
        options = Options(bind=ns.bind, smtp_port=ns.smtp, pop3_port=ns.pop3, imap_port=ns.imap,
                          http_port=ns.http, domain=ns.domain,
                          https=None if ns.https == "auto" else ns.https == "on")
        return run(data, options, sys.stdout)
    except (ConfigError, EseError, OSError) as e:
        print(f"mailkeep serve: {e}", file=sys.stderr)
        return 1
