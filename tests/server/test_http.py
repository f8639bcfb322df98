"""The HTTP API and roles over real sockets: a running `mailkeep serve`, real HTTP clients, and
the CLI reaching the running server instead of the files."""

from __future__ import annotations

import base64
import json
import os
import smtplib
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailkeep.admin.registry import load
from mailkeep.admin.roles import GROUPS, Role
from tests.server.test_serve import free_port, start, stop

USERS = {  # account -> roles granted (beyond "user")
    "alice": (),
    "bob": (Role.BACKUP_OPERATOR,),
    "carol": (Role.FULL_ADMINISTRATOR,),
    "dave": (Role.LOCAL_ADMINISTRATOR,),
}


def mk(data: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailkeep", "--data", str(data), *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, int]]:
    data = tmp_path_factory.mktemp("http") / "data"
    assert mk(data, "setup", "--domain", "contoso.com", "--server", "EX1").returncode == 0
    for name, granted in USERS.items():  # offline: the CLI works on the files
        assert mk(data, "user", "add", name, "--password", f"{name}-pw").returncode == 0
        p = mk(data, "user", "mailbox-enable", name, "--db", "Mailbox Store (EX1)")
        assert p.returncode == 0, p.stderr
        for role in granted:
            p = mk(data, "role", "grant", name, role.value)
            assert p.returncode == 0 and p.stdout.strip().startswith(f"{name} is now a {role.title}"), p.stderr
    smtp, http = free_port(), free_port()
    proc = start(data, smtp, "--http", str(http))
    try:
        yield data, smtp, http
    finally:
        if proc.poll() is None:
            code, _out = stop(proc)
            assert code == 0


def call(http: int, method: str, path: str, *, user: str | None = None, password: str | None = None,
         body: dict[str, Any] | None = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if user is not None:
        pw = password if password is not None else f"{user}-pw"
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{http}{path}", method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_role_groups_and_service_token(running: tuple[Path, int, int]) -> None:
    data, _smtp, http = running
    st = os.stat(data / "serve.token")
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert json.loads((data / "serve.json").read_text())["http"] == http
    code, me = call(http, "GET", "/api/v1/me", token=(data / "serve.token").read_text())
    assert code == 200 and me["roles"] == sorted(r.value for r in Role)
    code, rows = call(http, "GET", "/api/v1/roles", user="carol")
    assert code == 200
    assert {r["role"]: r["members"] for r in rows} == {
        "backup-operator": ["bob"], "full-administrator": ["carol"], "local-administrator": ["dave"]}
    assert {r["group"] for r in rows} == set(GROUPS.values())


def test_authentication_failures(running: tuple[Path, int, int]) -> None:
    _data, _smtp, http = running
    code, body = call(http, "GET", "/api/v1/databases")
    assert (code, body["error"]) == (401, "Unauthorized")
    assert body["message"] == "give a user name and password (HTTP Basic authentication)"
    code, body = call(http, "GET", "/api/v1/databases", user="carol", password="wrong")
    assert code == 401 and body["message"] == "wrong user name or password, or the account 'carol' is disabled"
    code, body = call(http, "GET", "/api/v1/databases", token="not-the-token")
    assert code == 401 and "service token" in body["message"]


def test_every_role_on_every_operation(running: tuple[Path, int, int]) -> None:
    """Each account tries each operation. The role check comes before argument checks, so an
    allowed caller sending an unknown parameter gets 400 (nothing runs); a refused one gets 403
    naming the role it needs."""
    _data, _smtp, http = running
    ops = load()
    assert len(ops) >= 30
    for op in ops.values():
        path = op.url({n: "probe" for n in op.path_params})
        for name, granted in USERS.items():
            held = {Role.USER, *granted}
            allowed = not op.roles or bool(held & set(op.roles))
            if op.method in ("GET", "DELETE"):
                code, body = call(http, op.method, path + "?no_such_parameter=1", user=name)
            else:
                code, body = call(http, op.method, path, user=name, body={"no_such_parameter": 1})
            if allowed:
                assert (code, body["error"]) == (400, "BadRequest"), (op.name, name, body)
                assert body["message"].startswith(f"{op.name}: unknown parameter(s) no_such_parameter")
            else:
                assert (code, body["error"]) == (403, "AccessDenied"), (op.name, name, body)
                assert body["needed"] == [r.value for r in op.roles]
                assert body["message"].startswith(f"{op.summary} ({op.name}) needs the role ")
                for r in op.roles:
                    assert f"{r.title} (group {GROUPS[r]!r})" in body["message"]


def test_refusal_names_the_role(running: tuple[Path, int, int]) -> None:
    _data, _smtp, http = running
    code, body = call(http, "POST", "/api/v1/databases/Mailbox%20Store%20(EX1)/dismount", user="bob")
    assert code == 403
    assert body["message"] == (
        "dismount a database (Clean Shutdown) (db.dismount) needs the role full Exchange administrator "
        "(group 'Exchange Full Administrators'); bob has: backup operator, user (own mailbox only)")
    code, body = call(http, "GET", "/api/v1/databases", user="alice")
    assert code == 403 and body["message"].endswith("alice has: user (own mailbox only)")
    code, me = call(http, "GET", "/api/v1/me", user="alice")
    assert code == 200 and me["roles"] == ["user"] and me["mail"] == "alice@contoso.com"
    code, dbs = call(http, "GET", "/api/v1/databases", user="bob")  # backup operators see what to back up
    assert code == 200 and [d["name"] for d in dbs] == ["Mailbox Store (EX1)", "Public Folder Store (EX1)"]
    code, events = call(http, "GET", "/api/v1/events?id=9523", user="dave")
    assert code == 200 and {e["id"] for e in events} == {9523}


def test_errors_are_json_with_reasons(running: tuple[Path, int, int]) -> None:
    _data, _smtp, http = running
    code, body = call(http, "POST", "/api/v1/databases/No%20Such%20DB/mount", user="carol")
    assert code == 409 and body["error"] == "ConfigError" and "No Such DB" in body["message"]
    code, body = call(http, "POST", "/api/v1/storage-groups", user="carol", body={})
    assert (code, body["message"]) == (400, "sg.create: parameter name is required")
    code, body = call(http, "PATCH", "/api/v1/databases/x", user="carol", body={"mount_at_startup": "maybe"})
    assert (code, body["message"]) == (400, "mount_at_startup must be true or false, not 'maybe'")
    req = urllib.request.Request(f"http://127.0.0.1:{http}/api/v1/storage-groups", method="POST", data=b"{nope",
                                 headers={"Authorization": "Basic " + base64.b64encode(b"carol:carol-pw").decode()})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400 and json.load(e.value)["message"] == "the request body is not JSON"


def test_openapi_document_lists_every_operation(running: tuple[Path, int, int]) -> None:
    _data, _smtp, http = running
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/v1/openapi.json", timeout=30) as r:
        doc = json.load(r)
    assert doc["openapi"] == "3.1.0"
    ids = {item["operationId"]: (path, method.upper(), item["x-roles"])
           for path, methods in doc["paths"].items() for method, item in methods.items()}
    assert ids == {op.name: (op.path, op.method, [r.value for r in op.roles]) for op in load().values()} | {
        "backup.stream": ("/api/v1/backup/stream", "POST", ["backup-operator"])}
    mount = doc["paths"]["/api/v1/databases/{name}/mount"]["post"]
    assert mount["requestBody"]["content"]["application/json"]["schema"]["properties"]["create_new"]["type"] == \
        "boolean"


def test_cli_goes_through_the_running_server(running: tuple[Path, int, int]) -> None:
    data, smtp, _http = running
    # while the server holds the files, the CLI asks it (the service token: the data folder's owner)
    p = mk(data, "db", "dismount", "Mailbox Store (EX1)")
    assert p.returncode == 0, p.stderr
    assert p.stdout == ("Dismounted First Storage Group/Mailbox Store (EX1) (Clean Shutdown); it stays dismounted "
                        "until 'mailkeep db mount'.\n")
    listed = json.loads(mk(data, "db", "list", "--json").stdout)
    assert {d["name"]: d["state"] for d in listed} == {"Mailbox Store (EX1)": "dismounted",
                                                      "Public Folder Store (EX1)": "mounted"}
    with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as c, pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        c.sendmail("x@example.org", ["alice@contoso.com"], b"Subject: t\r\n\r\nx\r\n")
    assert e.value.recipients["alice@contoso.com"][0] == 451
    p = mk(data, "db", "mount", "Mailbox Store (EX1)")
    assert p.returncode == 0 and p.stdout.startswith("Mounted First Storage Group/Mailbox Store (EX1): consistent")
    with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as c:
        assert c.sendmail("x@example.org", ["alice@contoso.com"], b"Subject: t\r\n\r\nx\r\n") == {}
    # accounts are added while the server runs (it holds the directory)
    p = mk(data, "user", "add", "erin", "--password", "erin-pw")
    assert p.returncode == 0 and p.stdout.startswith("Added user CN=erin,")
    p = mk(data, "user", "mailbox-enable", "erin")
    assert p.returncode == 0 and p.stdout.startswith("CN=erin,") and "(mail erin@contoso.com)" in p.stdout
    # as a directory account, the server checks its roles
    p = mk(data, "--user", "bob", "db", "dismount", "Mailbox Store (EX1)", env={"MAILKEEP_PASSWORD": "bob-pw"})
    assert p.returncode == 1
    assert p.stderr.startswith("mailkeep db: dismount a database (Clean Shutdown) (db.dismount) needs the role full "
                               "Exchange administrator")
    p = mk(data, "--user", "carol", "sg", "list", env={"MAILKEEP_PASSWORD": "carol-pw"})
    assert p.returncode == 0 and p.stdout.splitlines()[1].startswith("E00     First Storage Group")
    p = mk(data, "--user", "carol", "sg", "list", env={"MAILKEEP_PASSWORD": "nope"})
    assert p.returncode == 1 and "wrong user name or password" in p.stderr


def test_stale_serve_json_means_offline(tmp_path: Path) -> None:
    data = tmp_path / "d"
    assert mk(data, "setup", "--domain", "contoso.com", "--server", "EX1").returncode == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (data / "serve.json").write_text(json.dumps({"pid": dead.pid, "bind": "127.0.0.1", "http": free_port()}))
    p = mk(data, "db", "list")
    assert p.returncode == 0 and "Mailbox Store (EX1)" in p.stdout


def test_https_api(tmp_path: Path) -> None:
    """With TLS on the API (automatic when bound off loopback; forced here, tests stay on
    loopback), the CLI and a remote backup agent verify the server's certificate."""
    data = tmp_path / "data"
    assert mk(data, "setup", "--domain", "contoso.com", "--server", "EX1").returncode == 0
    assert mk(data, "user", "add", "oper", "--password", "oper-pw").returncode == 0
    assert mk(data, "role", "grant", "oper", "backup-operator").returncode == 0
    http = free_port()
    p = start(data, free_port(), "--http", str(http), "--https", "on")
    try:
        assert json.loads((data / "serve.json").read_text())["https"] is True
        r = mk(data, "db", "list", "--json")  # through https, trusting <data>/tls/cert.pem
        assert r.returncode == 0 and len(json.loads(r.stdout)) == 2
        cert = str(data / "tls" / "cert.pem")
        env = {"MAILKEEP_PASSWORD": "oper-pw", "MAILKEEP_STATE_DIR": str(tmp_path / "state")}
        r = mk(tmp_path / "agent", "--user", "oper", "backup", "run", "--server", f"https://127.0.0.1:{http}",
               "--cafile", cert, "--media", str(tmp_path / "r.bkf"), "--json", "EX1/Information Store", env=env)
        assert r.returncode == 0, r.stderr
        r = mk(tmp_path / "agent", "--user", "oper", "backup", "run", "--server", f"https://127.0.0.1:{http}",
               "--media", str(tmp_path / "r2.bkf"), "EX1/Information Store", env=env)  # not trusted: refused
        assert r.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stderr and "give --cafile" in r.stderr
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{http}/api/v1/openapi.json", timeout=10)
    finally:
        assert stop(p)[0] == 0


def test_review_regressions_roles_and_names(running: tuple[Path, int, int]) -> None:
    data, _smtp, http = running
    # a full administrator may not make anyone a local administrator (a separate right)
    code, body = call(http, "POST", "/api/v1/roles/local-administrator/members", user="carol", body={"user": "alice"})
    assert code == 403 and body["message"].startswith("granting or revoking the role local administrator needs")
    code, body = call(http, "POST", "/api/v1/roles/local-administrator/members", user="dave", body={"user": "alice"})
    assert code == 403  # dave is a local administrator but the operation itself needs a full administrator
    # a revoked role is gone at once, even while the password is remembered
    assert call(http, "GET", "/api/v1/databases", user="bob")[0] == 200
    code, _ = call(http, "DELETE", "/api/v1/roles/backup-operator/members/bob", user="carol")
    assert code == 200
    code, body = call(http, "GET", "/api/v1/databases", user="bob")
    assert code == 403 and body["message"].endswith("bob has: user (own mailbox only)")
    assert call(http, "POST", "/api/v1/roles/backup-operator/members", user="carol", body={"user": "bob"})[0] == 200
    # job names never leave the schedules folder; an unknown job is 404
    code, body = call(http, "POST", "/api/v1/backup/schedules/..%2F..%2Fserver/run", user="bob")
    assert code == 400 and "job name '../../server'" in body["message"]
    code, body = call(http, "POST", "/api/v1/backup/schedules/nightly/run", user="bob")
    assert (code, body["error"]) == (404, "NotFound") and body["message"] == "no scheduled job 'nightly' (jobs: none)"
