"""``mailkeep setup``: a new server in a data folder, with Exchange setup's defaults.

Creates (the guide's names): the organization, "First Administrative Group", the server,
"First Storage Group" (log prefix ``E00``, files in ``<data>/mdbdata``), "Mailbox Store
(SERVER)" (``priv1.edb``/``priv1.stm``) and "Public Folder Store (SERVER)"
(``pub1.edb``/``pub1.stm``), the system attendant (``CN=Microsoft System Attendant``, homed
on the first mailbox database), mounts both databases and allocates the system attendant
mailbox.

Invariant: ``server.json`` is written last and its presence means "set up": a second run
refuses before changing anything; a run that failed part-way can be run again.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from mailkeep.directory.directory import Directory
from mailkeep.directory.setup import initialize
from mailkeep.eventlog import EventLog
from mailkeep.store.server import FIRST_SG, SA_CN, ConfigError, DatabaseInfo, Server

DEFAULT_ORG = "First Organization"
DEFAULT_ADMIN_GROUP = "First Administrative Group"


@dataclass
class SetupResult:
    server: Server
    storage_group: str
    mailbox_store: DatabaseInfo
    public_store: DatabaseInfo


def default_server_name() -> str:
    return os.uname().nodename.split(".")[0] or "MAILKEEP"


def setup_server(
    data: str, *, domain: str | None = None, organization: str = DEFAULT_ORG,
    admin_group: str = DEFAULT_ADMIN_GROUP, server: str | None = None, directory: Directory | None = None,
    events: EventLog | None = None, log_file_size: int | None = None,
) -> SetupResult:
    """Create the server. ``directory`` shares an existing directory (a second server of
    the organization); otherwise the data folder's own embedded directory is created."""
    from mailkeep.store.store import Store  # store imports setup's neighbours; keep the cycle out

    server = server or default_server_name()
    state_path = Server.state_path(data)
    if os.path.exists(state_path):
        raise ConfigError(
            f"{data} already holds a server ({state_path} exists); setup runs once per data folder. "
            "Use 'mailkeep sg'/'mailkeep db' to change it, or choose another --data folder."
        )
    own = directory is None
    if directory is None:
        if not domain:
            raise ConfigError("a new data folder needs --domain DNS-NAME (e.g. --domain contoso.com)")
        directory = initialize(data, domain, organization=organization, admin_group=admin_group, server=server)
    else:
        os.makedirs(data, exist_ok=True)
        directory.add_server(organization, admin_group, server)
    try:
        server_dn = directory.server_dn(organization, admin_group, server)
        existing = list(directory.search(f"CN=InformationStore,{server_dn}", "(objectCategory=msExchStorageGroup)"))
        if existing:
            raise ConfigError(
                f"the directory already has server {server} with storage groups ({server_dn}); a second "
                "setup would clash with it. Rebuilding a lost server is 'mailkeep setup --disaster-recovery'."
            )
        srv = Server(data, directory, {
            "version": 1, "server_dn": server_dn, "server": server, "organization": organization,
            "admin_group": admin_group, "databases": {},
        })
        srv.autosave = False
        sg = srv.create_storage_group(FIRST_SG, log_path="mdbdata", system_path="mdbdata")
        priv = srv.create_database(sg.name, f"Mailbox Store ({server})", edb="mdbdata/priv1.edb",
                                   stm="mdbdata/priv1.stm")
        pub = srv.create_database(sg.name, f"Public Folder Store ({server})", public=True,
                                  edb="mdbdata/pub1.edb", stm="mdbdata/pub1.stm")
        sa_dn = srv.system_attendant_dn
        if directory.get(sa_dn) is None:
            directory.add(sa_dn, {
                "objectClass": ["top", "exchangeAdminService"],
                "objectCategory": ["exchangeAdminService"],
                "cn": [SA_CN],
                "displayName": ["System Attendant"],
                "legacyExchangeDN": [srv.system_attendant_legacy_dn],
                "homeMDB": [priv.dn],
                "msExchMailboxGUID": [uuid.uuid4().bytes_le],
            })
        srv.state["databases"] = {str(priv.guid): {"mounted": True}, str(pub.guid): {"mounted": True}}
        store = Store(srv, events=events, log_file_size=log_file_size)
        try:
            store.mount(priv)
            store.mount(pub)
            from mailkeep.store import attendant

            attendant.logon(store)
        finally:
            store.close()
        srv.autosave = True
        srv.save()  # last: its presence means the server exists
        return SetupResult(srv, sg.name, priv, pub)
    finally:
        if own:
            directory.close()
