"""Two servers of one organization sharing one directory — a real OpenLDAP slapd (and, for
comparison, one embedded directory shared in-process): each server sees only its own storage
groups and databases, mail for a user homed on the other server is a temporary failure naming
that home (relay arrives with the mail service), and a mailbox moved between servers keeps its
mail and tombstones the source."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from mailkeep.directory import tasks
from mailkeep.directory.setup import open_directory
from mailkeep.store import agents, delivery
from mailkeep.store.errors import ecMailboxInTransit, ecWrongServer
from mailkeep.store.mailbox import open_mailbox
from mailkeep.store.server import ConfigError
from mailkeep.store.setup import setup_server
from mailkeep.store.store import Store
from tests.directory.conftest import data_dir, slapd  # noqa: F401 - fixtures
from tests.store.conftest import LOG_SIZE, message


def test_two_servers_share_one_directory(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    data1 = data_dir
    data2 = tmp_path / "data2"
    data2.mkdir()
    cfg = data1 / "directory.json"
    ldap = cfg.exists() and json.loads(cfg.read_text())["backend"] == "ldap"
    common = {"domain": "contoso.com", "organization": "Organization", "admin_group": "AG1",
              "log_file_size": LOG_SIZE}
    setup_server(str(data1), server="Exchange1", **common)  # type: ignore[arg-type]
    if ldap:  # a second machine: its own data folder naming the same LDAP directory
        shutil.copy(cfg, data2 / "directory.json")
        r2 = setup_server(str(data2), server="Exchange2", **common)  # type: ignore[arg-type]
        d = open_directory(str(data1))
    else:  # the embedded directory belongs to one data folder: share its object in-process
        d = open_directory(str(data1))
        r2 = setup_server(str(data2), server="Exchange2", directory=d, organization="Organization",
                          admin_group="AG1", log_file_size=LOG_SIZE)
    s1 = Store.open(str(data1), directory=d, log_file_size=LOG_SIZE)
    s2 = Store.open(str(data2), directory=d, log_file_size=LOG_SIZE)
    try:
        s1.mount_intended()
        s2.mount_intended()
        for s, name in ((s1, "Exchange1"), (s2, "Exchange2")):
            want = [f"Mailbox Store ({name})", f"Public Folder Store ({name})"]
            assert [x.name for x in s.server.databases()] == want
        d.add_user("alice", password_text="pw")
        tasks.mailbox_enable(d, "alice", s1.server.databases()[0].dn)
        assert delivery.deliver(s1, io.BytesIO(message("<a1@x>")), ["alice@contoso.com"]).delivered

        report = delivery.deliver(s2, io.BytesIO(message("<a2@x>")), ["alice@contoso.com"])
        elsewhere = report.of("alice@contoso.com")
        assert (elsewhere.status, elsewhere.code, elsewhere.code_name) == ("temporary", ecWrongServer, "ecWrongServer")
        assert elsewhere.new_home == s1.server.databases()[0].dn

        agents.move(s1, "alice", r2.mailbox_store.dn, target_store=s2)
        assert [m.message_id for m in open_mailbox(s2, "alice").messages("INBOX")] == ["<a1@x>"]
        stale = delivery.Target("alice@contoso.com", s1.server.databases()[0], open_mailbox(s2, "alice").guid,
                                delivery.resolve(s2, "alice@contoso.com").owner)
        out = delivery.deliver_to_database(s1, stale.info, io.BytesIO(message("<a3@x>")), [stale])
        assert [(o.code, o.new_home) for o in out] == [(ecMailboxInTransit, r2.mailbox_store.dn)]
        assert delivery.deliver(s2, io.BytesIO(message("<a4@x>")), ["alice@contoso.com"]).delivered
        assert [m.message_id for m in open_mailbox(s2, "alice").messages("INBOX")] == ["<a1@x>", "<a4@x>"]
    finally:
        s1.close()
        s2.close()
        d.close()


def test_setup_refuses_a_second_server_of_the_same_name(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = data_dir / "directory.json"
    setup_server(str(data_dir), server="Exchange1", domain="contoso.com", log_file_size=LOG_SIZE)
    other = tmp_path / "other"
    other.mkdir()
    if cfg.exists() and json.loads(cfg.read_text())["backend"] == "ldap":
        shutil.copy(cfg, other / "directory.json")
        with pytest.raises(ConfigError, match="already has server Exchange1 with storage groups"):
            setup_server(str(other), server="Exchange1", domain="contoso.com", log_file_size=LOG_SIZE)
        assert not (other / "server.json").exists()
    else:
        d = open_directory(str(data_dir))
        try:
            with pytest.raises(ConfigError, match="already has server Exchange1 with storage groups"):
                setup_server(str(other), server="Exchange1", directory=d, log_file_size=LOG_SIZE)
        finally:
            d.close()
        assert not (other / "server.json").exists()
