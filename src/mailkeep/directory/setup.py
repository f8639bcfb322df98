"""Where a data folder's directory lives, and creating it.

``<data>/directory.json`` names the backend: ``{"backend": "embedded", "domain": ...}``
(objects in ``<data>/directory/``) or ``{"backend": "ldap", "domain": ..., "url": ...,
"bind_dn": ..., "password_file": ...}``. Invariant: the LDAP password is read from its own
owner-only file, never stored in directory.json or printed.
"""

from __future__ import annotations

import json
import os

from mailkeep.directory.backend import Backend, DirectoryError
from mailkeep.directory.directory import Directory
from mailkeep.eventlog import EventLog

CONFIG = "directory.json"


def config_path(data: str) -> str:
    return os.path.join(data, CONFIG)


def open_directory(data: str, *, events: EventLog | None = None) -> Directory:
    path = config_path(data)
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except FileNotFoundError as e:
        raise DirectoryError(
            "unavailable", f"{data} has no directory yet: run 'mailkeep setup --domain DNS-NAME' first"
        ) from e
    except ValueError as e:
        raise DirectoryError("other", f"{path} is not valid JSON ({e}); fix or recreate it") from e
    events = events or EventLog(os.path.join(data, "events.jsonl"))
    backend: Backend
    if cfg.get("backend", "embedded") == "embedded":
        from mailkeep.directory.embedded import EmbeddedBackend

        backend = EmbeddedBackend(os.path.join(data, "directory"), events=events)
    elif cfg["backend"] == "ldap":
        from mailkeep.directory.ldap import LdapBackend

        missing = [k for k in ("url", "bind_dn", "password_file") if not cfg.get(k)]
        if missing:
            raise DirectoryError("other", f"{path}: the ldap backend needs {', '.join(missing)}")
        secret = _read_secret(str(cfg["password_file"]))
        backend = LdapBackend(cfg["url"], cfg["bind_dn"], secret, base_dn=cfg.get("base_dn"))
    else:
        raise DirectoryError("other", f"{path}: unknown backend {cfg['backend']!r} (embedded or ldap)")
    return Directory(backend, str(cfg["domain"]))


def _read_secret(path: str) -> str:
    """The LDAP bind password, from a file only its owner may read."""
    try:
        with open(path, encoding="utf-8") as f:
            if os.fstat(f.fileno()).st_mode & 0o077:
                raise DirectoryError(
                    "insufficientAccessRights",
                    f"the LDAP password file {path} may be read by others; make it owner-only (chmod 600 {path})",
                )
            return f.read().strip()
    except OSError as e:
        raise DirectoryError("other", f"cannot read the LDAP password file {path}: {e.strerror}") from e


def initialize(
    data: str, domain: str, *, organization: str | None = None, admin_group: str | None = None,
    server: str | None = None,
) -> Directory:
    """Create the data folder's embedded directory (unless one is configured) with the
    domain, its containers and, when given, the organization, administrative group and
    server objects."""
    os.makedirs(data, exist_ok=True)
    path = config_path(data)
    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"backend": "embedded", "domain": domain}, f, indent=2)
            f.write("\n")
    d = open_directory(data)
    d.ensure_base()
    if organization:
        d.add_organization(organization)
        if admin_group:
            d.add_admin_group(organization, admin_group)
            if server:
                d.add_server(organization, admin_group, server)
    return d
