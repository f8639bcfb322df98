"""Regressions found in review of the directory layer: look-ups by name, the RUS after
Delete Mailbox, the msExchMasterAccountSid fix, CLI errors."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from mailkeep.directory import dn as dnmod
from mailkeep.directory import ldifde, sid, tasks
from mailkeep.directory.backend import Change, DirectoryError
from mailkeep.directory.setup import open_directory
from tests.directory.test_tasks import GUIDE_DB1, mk, populate


def test_name_with_equals_that_is_no_dn_is_a_name(data_dir: Path) -> None:
    d = populate(data_dir)
    assert d.authenticate("x=,y", "pw") is None  # used to raise DnError
    assert d.find_user("a=(b") is None
    e = d.add_user("x=,y", password_text="pw")
    assert dnmod.rdn(e.dn)[1] == "x=,y"
    assert d.authenticate("x=,y", "pw") is not None
    d.close()


def test_user_tasks_refuse_a_dn_that_is_no_user(data_dir: Path) -> None:
    d = populate(data_dir)
    server = d.server_dn("Organization", "AG1", "Exchange1")
    legacy = d.require(server).text("legacyExchangeDN")
    with pytest.raises(DirectoryError, match="noSuchObject"):
        tasks.delete_mailbox(d, server)
    with pytest.raises(DirectoryError, match="noSuchObject"):
        d.set_disabled(d.domain_dn, True)
    assert d.require(server).text("legacyExchangeDN") == legacy
    assert d.require_user(d.require_user("User1").dn).text("cn") == "User1"  # a user's DN still works
    d.close()


def test_mailbox_enable_after_delete_mailbox_gets_a_real_legacy_dn(data_dir: Path) -> None:
    d = populate(data_dir)
    before = d.require_user("User1").text("legacyExchangeDN")
    assert tasks.delete_mailbox(d, "User1").text("legacyExchangeDN") == "ADCDisabledMail"
    u = tasks.mailbox_enable(d, "User1", GUIDE_DB1)
    assert u.text("legacyExchangeDN") == before == "/o=Organization/ou=AG1/cn=Recipients/cn=User1"
    d.close()


def test_audit_fix_keeps_the_associated_external_account_of_a_disabled_user(data_dir: Path) -> None:
    d = populate(data_dir)
    external = "S-1-5-21-9-9-9-1234"
    d.set_disabled("User1", True)
    tasks.set_associated_external_account(d, d.require_user("User1"), external)
    d.modify(d.require_user("User1").dn, [Change("delete", "msExchMasterAccountSid", ())])
    rep = tasks.audit_master_sid(d, fix=True)
    assert [dnmod.rdn(x)[1] for x in rep.fixed] == ["User1"]
    u = d.require_user("User1")
    assert sid.to_text(u.first("msExchMasterAccountSid")) == external  # type: ignore[arg-type]
    rights = tasks.mailbox_rights(u)
    assert "AssociatedExternalAccount" in rights[external]
    assert "AssociatedExternalAccount" not in rights.get(sid.SELF, set())
    d.close()


def test_audit_with_an_unwritable_log_changes_nothing(tmp_path: Path, data_dir: Path) -> None:
    d = populate(data_dir)
    d.set_disabled("User1", True)
    d.close()
    p = mk("directory", "audit-master-sid", "--fix", "--log", str(tmp_path / "no" / "NoMAS.log"),
           data=data_dir, cwd=tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "No such file or directory" in p.stderr
    d = open_directory(str(data_dir))
    assert not d.require_user("User1").has("msExchMasterAccountSid")
    d.close()


def test_cli_errors_are_messages(tmp_path: Path, data_dir: Path) -> None:
    populate(data_dir).close()
    p = mk("ldifde", "-f", str(tmp_path / "no" / "out.ldf"), data=data_dir, cwd=tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "cannot write" in p.stdout
    keep = tmp_path / "keep.ldf"
    keep.write_text("precious\n")
    p = mk("ldifde", "-f", str(keep), "-r", "(bad", data=data_dir, cwd=tmp_path)
    assert p.returncode == 1 and keep.read_text() == "precious\n"  # not truncated by a bad filter
    p = mk("user", "add", "x=,y", "--password", "pw", data=data_dir, cwd=tmp_path)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
    p = mk("user", "mailbox-enable", "x=,y", "--db", "Exchange1/SG,1/DB1", data=data_dir, cwd=tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr and r"CN=SG\,1" in p.stderr


def test_import_of_a_file_that_is_not_utf8_part_way_applies_nothing(tmp_path: Path, data_dir: Path) -> None:
    populate(data_dir).close()
    rec = "dn: CN=User1,CN=Users,DC=contoso,DC=com\nchangetype: modify\nreplace: description\ndescription: {}\n-\n"
    body = "\n".join(rec.format(f"v{i}") for i in range(200)).encode() + b"\n" + rec.format("\xff").encode("latin-1")
    f = tmp_path / "late.ldf"
    f.write_bytes(body)
    p = mk("ldifde", "-i", "-f", str(f), data=data_dir, cwd=tmp_path)
    assert p.returncode == 1 and "nothing was imported" in p.stdout
    d = open_directory(str(data_dir))
    assert not d.require_user("User1").has("description")
    # the library reports where a stream stopped being UTF-8, after the records it applied
    stream = io.TextIOWrapper(io.BytesIO(body), encoding="utf-8")
    rep = ldifde.import_ldif(d, stream)
    assert rep.failed is not None and rep.applied and "not UTF-8" in rep.failed[2]
    d.close()


def test_ldap_password_file_must_be_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    secret = tmp_path / "ldap.secret"
    secret.write_text("s3cret")
    os.chmod(secret, 0o644)
    (data / "directory.json").write_text(json.dumps({
        "backend": "ldap", "domain": "contoso.com", "url": "ldap://127.0.0.1:1/", "bind_dn": "cn=admin",
        "password_file": str(secret),
    }))
    with pytest.raises(DirectoryError, match="owner-only") as e:
        open_directory(str(data))
    assert "s3cret" not in str(e.value)
    os.remove(secret)
    with pytest.raises(DirectoryError, match="cannot read the LDAP password file"):
        open_directory(str(data))
