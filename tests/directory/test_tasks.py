"""The guide's directory tasks: mailbox-enable, Delete Mailbox, Remove Exchange Attributes,
re-home (script and LDIFDE procedure), msExchMasterAccountSid audit."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailkeep.directory import dn as dnmod
from mailkeep.directory import sid, tasks
from mailkeep.directory.directory import Directory
from mailkeep.directory.setup import initialize, open_directory

GUIDE_DB1 = ("CN=DB1,CN=SG1,CN=InformationStore,CN=Exchange1,CN=Servers,CN=AG1,CN=Administrative Groups,"
             "CN=Organization,CN=Microsoft Exchange,CN=Services,CN=Configuration,DC=contoso,DC=com")
GUIDE_DB2 = GUIDE_DB1.replace("CN=DB1,CN=SG1", "CN=DB2,CN=SG2").replace("CN=Exchange1", "CN=Exchange2")
MTA1 = ("CN=Microsoft MTA,CN=Exchange1,CN=Servers,CN=AG1,CN=Administrative Groups,CN=Organization,"
        "CN=Microsoft Exchange,CN=Services,CN=Configuration,DC=contoso,DC=com")
MTA2 = MTA1.replace("Exchange1", "Exchange2")
HS1 = "/o=Organization/ou=AG1/cn=Configuration/cn=Servers/cn=Exchange1"
HS2 = HS1.replace("Exchange1", "Exchange2")


def populate(data: Path) -> Directory:
    d = initialize(str(data), "contoso.com", organization="Organization", admin_group="AG1", server="Exchange1")
    s2 = d.add_server("Organization", "AG1", "Exchange2")
    s1 = d.get(d.server_dn("Organization", "AG1", "Exchange1"))
    assert s1 is not None
    d.add_database(d.add_storage_group(s1.dn, "SG1").dn, "DB1")
    d.add_database(d.add_storage_group(s2.dn, "SG2").dn, "DB2")
    for name in ("User1", "User2", "User3"):
        d.add_user(name, password_text="pw")
        tasks.mailbox_enable(d, name, GUIDE_DB1)
    d.add_user("SMTP (Exchange1-{4F1B})", password_text="pw")
    tasks.mailbox_enable(d, "SMTP (Exchange1-{4F1B})", GUIDE_DB1, nickname="smtp-exchange1")
    d.add_user("Other", password_text="pw")
    tasks.mailbox_enable(d, "Other", GUIDE_DB2)
    return d


def homes(d: Directory) -> dict[str, tuple[str, str, str]]:
    out = {}
    for u in d.users():
        if u.has("homeMDB"):
            out[str(u.text("cn"))] = (
                dnmod.normalize(str(u.text("homeMDB"))), str(u.text("homeMTA")), str(u.text("msExchHomeServerName"))
            )
    return out


def test_mailbox_enable_sets_stage_one_and_rus_completes(data_dir: Path) -> None:
    d = populate(data_dir)
    u = d.require_user("User1")
    assert dnmod.normalize(str(u.text("homeMDB"))) == dnmod.normalize(GUIDE_DB1)
    assert (u.text("homeMTA"), u.text("msExchHomeServerName")) == (MTA1, HS1)
    assert u.text("mail") == "User1@contoso.com" and len(u.first("msExchMailboxGUID")) == 16  # type: ignore[arg-type]
    assert tasks.mailbox_rights(u) == {sid.SELF: {"FullMailboxAccess", "ReadPermissions"}}
    d.close()


def test_delete_mailbox_and_remove_exchange_attributes(data_dir: Path) -> None:
    d = populate(data_dir)
    u = tasks.delete_mailbox(d, "User1")
    assert not any(u.has(a) for a in tasks.MAILBOX_ATTRS)
    assert u.text("legacyExchangeDN") == "ADCDisabledMail"
    u = tasks.remove_exchange_attributes(d, "User2")
    assert not any(u.has(a) for a in (*tasks.MAILBOX_ATTRS, "legacyExchangeDN"))
    assert u.has("objectGUID") and u.has("objectSid") and u.text("sAMAccountName") == "User2"
    d.close()


@pytest.mark.parametrize("trial", [True, False])
def test_rehome_script(data_dir: Path, trial: bool) -> None:
    d = populate(data_dir)
    before = homes(d)
    old = tasks.Location("Organization", "AG1", "Exchange1", "SG1", "DB1")
    new = tasks.Location("Organization", "AG1", "Exchange2", "SG2", "DB2")
    rep = tasks.rehome(d, old, new, trial=trial)
    assert sorted(dnmod.rdn(x)[1] for x in rep.skipped) == ["SMTP (Exchange1-{4F1B})"]
    assert any("system mailbox" in line for line in rep.log)
    assert f"OLD homeMDB = {d.require_user('User1').text('homeMDB')}" in rep.log or not trial
    after = homes(d)
    if trial:
        assert after == before and rep.changed == []
        assert rep.log[0].startswith("*** You are running in Trial Mode")
    else:
        assert sorted(dnmod.rdn(x)[1] for x in rep.changed) == ["User1", "User2", "User3"]
        for name in ("User1", "User2", "User3"):
            assert after[name] == (dnmod.normalize(GUIDE_DB2), MTA2, HS2)
        assert after["Other"] == before["Other"]
        assert after["SMTP (Exchange1-{4F1B})"] == before["SMTP (Exchange1-{4F1B})"]
        guid_before = d.require_user("User1").first("msExchMailboxGUID")
        assert guid_before is not None  # re-homing keeps the mailbox GUID
    d.close()


def mk(*args: str, data: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailkeep", "--data", str(data), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def to_import(export: str) -> str:
    """The guide's step 2, done as its search-and-replace table describes."""
    text = re.sub(r"\n ", "", export)  # unfold, so names can be replaced across folds
    text = text.replace("changetype: add", "changetype: modify")
    out = []
    for line in text.splitlines():
        for attr in ("homeMTA", "homeMDB", "msExchHomeServerName"):
            if line.startswith(attr + ":"):
                if out and out[-1] != "changetype: modify":
                    out.append("-")
                out.append(f"replace: {attr}")
        if line == "" and out and out[-1] != "":
            out.append("-")
        out.append(line)
    body = "\n".join(out)
    for a, b in (("CN=DB1", "CN=DB2"), ("CN=SG1", "CN=SG2"), ("Exchange1", "Exchange2")):
        body = body.replace(a, b)
    body = body.strip("\n")
    return body + "\n" if body.endswith("\n-") else body + "\n-\n"


def test_guide_ldifde_rehome_procedure(tmp_path: Path, data_dir: Path) -> None:
    data = data_dir
    populate(data).close()
    # Step 1, typed as the guide prints it (en dashes, curly quotes).
    export = tmp_path / "EXPORT-EXCHANGE1.TXT"
    p = mk("ldifde", "–F", str(export), "–D", "“DC=contoso,DC=com”", "–L", "msExchHomeServerName,homeMDB,homeMTA",
           "–R", f"“(homeMDB={GUIDE_DB1})”", data=data, cwd=tmp_path)
    assert p.returncode == 0, p.stdout
    assert "4 entries exported" in p.stdout
    text = export.read_text()
    assert text.count("changetype: add") == 4 and "dn: CN=User1,CN=Users,DC=contoso,DC=com" in text
    assert "objectGUID" not in text and "mail:" not in text
    # Step 2: reformat; remove the system mailbox's record, as the guide's Important note says.
    records = [r for r in to_import(text).split("\n\n") if "SMTP (" not in r]
    imp = tmp_path / "EXCHANGE2-IMPORT.TXT"
    imp.write_text("\n\n".join(r.strip("\n") for r in records) + "\n")
    assert "replace: homeMDB" in imp.read_text()
    # Step 3.
    p = mk("ldifde", "–I", "–F", str(imp), data=data, cwd=tmp_path)
    assert p.returncode == 0, p.stdout
    assert "3 entries modified successfully." in p.stdout
    d = open_directory(str(data))
    got = homes(d)
    for name in ("User1", "User2", "User3"):
        assert got[name] == (dnmod.normalize(GUIDE_DB2), MTA2, HS2)
    assert got["SMTP (Exchange1-{4F1B})"][0] == dnmod.normalize(GUIDE_DB1)
    d.close()


def test_failed_import_reports_what_was_applied(tmp_path: Path, data_dir: Path) -> None:
    data = data_dir
    populate(data).close()
    f = tmp_path / "bad.ldf"
    f.write_text(
        "dn: CN=User1,CN=Users,DC=contoso,DC=com\nchangetype: modify\nreplace: description\ndescription: one\n-\n\n"
        "dn: CN=Nobody,CN=Users,DC=contoso,DC=com\nchangetype: modify\nreplace: description\ndescription: two\n-\n\n"
        "dn: CN=User2,CN=Users,DC=contoso,DC=com\nchangetype: modify\nreplace: description\ndescription: three\n-\n"
    )
    p = mk("ldifde", "-i", "-f", str(f), data=data, cwd=tmp_path)
    assert p.returncode == 1
    assert "1 entries modified successfully." in p.stdout
    assert "Error on entry starting on line 7 (CN=Nobody,CN=Users,DC=contoso,DC=com)" in p.stdout
    assert "noSuchObject" in p.stdout
    d = open_directory(str(data))
    assert d.require_user("User1").text("description") == "one"
    assert not d.require_user("User2").has("description")
    d.close()


def test_audit_master_sid_four_cases(tmp_path: Path, data_dir: Path) -> None:
    d = populate(data_dir)
    # enabled + SID (wrong), enabled without (right), disabled + SID (right), disabled without (wrong)
    tasks.set_associated_external_account(d, d.require_user("User1"), "S-1-5-21-1-2-3-1105")
    d.set_disabled("User2", True)
    tasks.set_associated_external_account(d, d.require_user("User2"), sid.SELF)
    d.set_disabled("User3", True)
    log = tmp_path / "NoMAS.log"
    rep = tasks.audit_master_sid(d, fix=False, log_path=str(log))
    assert [dnmod.rdn(x)[1] for x in rep.enabled_with_sid] == ["User1"]
    assert [dnmod.rdn(x)[1] for x in rep.disabled_without_sid] == ["User3"]
    assert rep.fixed == []
    # The guide's LDIFDE query finds the same bad enabled account.
    bad = list(d.search(None, "(&(objectCategory=user)(msExchUserAccountControl=0)(msExchMasterAccountSid=*))"))
    assert [e.text("cn") for e in bad] == ["User1"]
    rep = tasks.audit_master_sid(d, fix=True, log_path=str(log))
    assert sorted(dnmod.rdn(x)[1] for x in rep.fixed) == ["User1", "User3"]
    assert not d.require_user("User1").has("msExchMasterAccountSid")
    assert tasks.mailbox_rights(d.require_user("User1")) == {  # only the Associated External Account goes
        sid.SELF: {"FullMailboxAccess", "ReadPermissions"},
        "S-1-5-21-1-2-3-1105": {"FullMailboxAccess", "ReadPermissions"},
    }
    u3 = d.require_user("User3")
    assert sid.to_text(u3.first("msExchMasterAccountSid")) == sid.SELF  # type: ignore[arg-type]
    assert "AssociatedExternalAccount" in tasks.mailbox_rights(u3)[sid.SELF]
    again = tasks.audit_master_sid(d)
    assert again.enabled_with_sid == [] and again.disabled_without_sid == []
    text = log.read_text()
    assert "ENABLED account with msExchMasterAccountSid: CN=User1" in text and "set the Associated External" in text
    d.close()


def test_cli_user_and_audit(tmp_path: Path, data_dir: Path) -> None:
    data = data_dir
    p = mk("setup", "--domain", "contoso.com", "--org", "Organization", "--admin-group", "AG1", "--server",
           "Exchange1", data=data, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert mk("user", "add", "alice", "--password", "pw", data=data, cwd=tmp_path).returncode == 0
    assert mk("user", "disable", "alice", data=data, cwd=tmp_path).stdout.strip().endswith("disabled")
    shown = mk("user", "show", "alice", data=data, cwd=tmp_path).stdout
    assert "userAccountControl: 514" in shown and "passwordHash" not in shown
    out = mk("directory", "audit-master-sid", "--log", str(tmp_path / "a.log"), data=data, cwd=tmp_path)
    assert out.returncode == 0 and "0 enabled account(s)" in out.stdout
    buf = io.StringIO()
    buf.write(out.stdout)
    assert (tmp_path / "a.log").exists()


def test_cli_mailbox_enable_picks_the_database(tmp_path: Path, data_dir: Path) -> None:
    populate(data_dir).close()
    assert mk("user", "add", "bob", "--password", "pw", data=data_dir, cwd=tmp_path).returncode == 0
    p = mk("user", "mailbox-enable", "bob", data=data_dir, cwd=tmp_path)  # DB1 and DB2 exist
    assert p.returncode == 1 and "2 mailbox databases match" in p.stderr
    p = mk("user", "mailbox-enable", "bob", "--db", "DB2", data=data_dir, cwd=tmp_path)
    assert p.returncode == 0, p.stdout
    d = open_directory(str(data_dir))
    assert dnmod.normalize(str(d.require_user("bob").text("homeMDB"))) == dnmod.normalize(GUIDE_DB2)
    d.close()
    p = mk("user", "mailbox-enable", "bob", "--db", "Exchange2/SG2/DB2", data=data_dir, cwd=tmp_path)
    assert p.returncode == 1 and "already has a mailbox" in p.stderr


def test_cli_rehome_with_no_matching_users_exits_1(tmp_path: Path, data_dir: Path) -> None:
    populate(data_dir).close()
    p = mk("mailbox", "rehome", "--from", "Organization/AG1/Exchange2/SG9/DB9", "--to",
           "Organization/AG1/Exchange2/SG2/DB2", data=data_dir, cwd=tmp_path)
    assert p.returncode == 1 and "No Matching Users. Program Aborted" in p.stdout
