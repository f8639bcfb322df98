"""A real OpenLDAP ``slapd`` for the LDAP backend's tests: one per test session.

The fixture installs Debian's ``slapd`` and ``ldap-utils`` when ``/usr/sbin/slapd`` is missing
(as root; CI runs as root), builds a fresh cn=config in a temporary folder with ``slapadd -n0``
(back_mdb; the core, cosine, inetorgperson and nis schemas; Mailkeep's ``mailkeep.ldif``; one
mdb database for DC=contoso,DC=com), starts ``slapd -d 0`` on a free loopback port as a child
process (never a daemon) and yields ``(url, bind_dn, password, base_dn)``.

Invariants: only the slapd this fixture started is ever stopped, by its pid; a slapd that the
Debian package may have started (on :389) is neither used nor touched; the wait for the server
is bounded and a failure shows slapd's own output.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailkeep.directory.ldap import SCHEMA_FILE as MAILKEEP_LDIF

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = "/usr/lib/ldap"
BASE_DN = "DC=contoso,DC=com"
BIND_DN = f"CN=admin,{BASE_DN}"
PASSWORD = "mailkeep-test-secret"
START_TIMEOUT = 20.0
INDEXES = [
    "objectClass eq",
    "sAMAccountName eq",
    "homeMDB eq",
    "msExchMailboxGUID eq",
    "objectGUID eq",
    "objectSid eq",
    "objectCategory eq",
    "cn eq",
]

SlapdInfo = tuple[str, str, str, str]


def ensure_installed() -> None:
    """Install slapd and ldap-utils from Debian's packages if slapd is missing."""
    if os.path.exists(SLAPD) and os.path.exists(SLAPADD):
        return
    if os.geteuid() != 0:
        pytest.fail(
            f"{SLAPD} is missing and these tests are not running as root, so they cannot install it. "
            "Install it first: sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive "
            "apt-get install -y slapd ldap-utils (CI runs as root and does this itself)."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "slapd", "ldap-utils"]):
        done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    if not os.path.exists(SLAPD):
        pytest.fail(f"apt-get installed slapd but {SLAPD} is still missing")


def config_ldif(root: Path) -> str:
    """The whole cn=config for ``slapadd -n0``: global, modules, schemas, frontend, config, mdb."""
    parts = [
        f"""dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {root}/slapd.pid
olcArgsFile: {root}/slapd.args
olcLogLevel: none
""",
        f"""dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {MODULE_DIR}
olcModuleLoad: back_mdb
""",
        """dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema
""",
    ]
    for name in ("core", "cosine", "inetorgperson", "nis"):
        parts.append((SCHEMA_DIR / f"{name}.ldif").read_text(encoding="utf-8"))
    parts.append(MAILKEEP_LDIF.read_text(encoding="utf-8"))
    parts.append("""dn: olcDatabase={-1}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {-1}frontend
olcSizeLimit: 1000
""")
    parts.append("""dn: olcDatabase={0}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {0}config
olcAccess: {0}to * by * none
""")
    index_lines = "".join(f"olcDbIndex: {ix}\n" for ix in INDEXES)
    parts.append(f"""dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcDbDirectory: {root}/data
olcSuffix: {BASE_DN}
olcRootDN: {BIND_DN}
olcRootPW: {PASSWORD}
olcDbMaxSize: 268435456
olcDbNoSync: TRUE
olcAccess: {{0}}to * by * none
{index_lines}""")
    # blank line between entries; every part ends with a newline
    return "\n".join(p if p.endswith("\n") else p + "\n" for p in parts)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _can_bind(url: str) -> bool:
    import ldap3

    server = ldap3.Server(url, get_info=ldap3.NONE, connect_timeout=1)
    conn = ldap3.Connection(server, user=BIND_DN, password=PASSWORD, receive_timeout=2)
    try:
        return bool(conn.bind())
    except Exception:
        return False
    finally:
        try:
            conn.unbind()
        except Exception:
            pass


def start(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Build the configuration under ``root`` and start slapd; returns (process, url)."""
    conf = root / "slapd.d"
    conf.mkdir()
    (root / "data").mkdir()
    ldif = root / "config.ldif"
    ldif.write_text(config_ldif(root), encoding="utf-8")
    done = subprocess.run([SLAPADD, "-n0", "-F", str(conf), "-l", str(ldif)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.fail(f"slapadd -n0 failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    last_log = ""
    for _attempt in range(3):  # the free port may be taken between the probe and slapd's bind
        url = f"ldap://127.0.0.1:{free_port()}"
        with open(root / "slapd.log", "wb") as log:
            proc = subprocess.Popen([SLAPD, "-d", "0", "-h", url + "/", "-F", str(conf)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and proc.poll() is None:
                if _can_bind(url):
                    return proc, url
                time.sleep(0.05)
        except BaseException:
            stop(proc)
            raise
        stop(proc)
        last_log = (root / "slapd.log").read_text(errors="replace")[-4000:]
    pytest.fail(f"slapd did not accept a bind within {START_TIMEOUT:.0f}s; its output:\n{last_log}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop exactly the slapd we started (by its pid) and wait for it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def slapd() -> Iterator[SlapdInfo]:
    """(url, bind_dn, password, base_dn) of a fresh slapd on a free loopback port."""
    ensure_installed()
    root = Path(tempfile.mkdtemp(prefix="mailkeep-slapd-"))
    try:
        proc, url = start(root)
        try:
            yield url, BIND_DN, PASSWORD, BASE_DN
        finally:
            stop(proc)
    finally:
        shutil.rmtree(root, ignore_errors=True)
