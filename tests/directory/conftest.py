"""Fixtures of the directory tests: the session's OpenLDAP server (tests/directory/slapd.py),
and every directory test run against both backends: `backend` (a Backend), `data_dir` (a
data folder whose directory.json names the backend)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailkeep.directory import dn as dnmod
from mailkeep.directory import filters
from mailkeep.directory.backend import Backend, DirectoryError
from mailkeep.directory.embedded import EmbeddedBackend
from mailkeep.directory.ldap import LdapBackend
from tests.directory.slapd import slapd

__all__ = ["slapd", "backend", "data_dir", "wipe"]
ROOT = "DC=contoso,DC=com"


def wipe(b: LdapBackend) -> None:
    """Delete every entry of the suffix, leaves first: each test starts from nothing."""
    try:
        found = [e.dn for e in b.search(ROOT, "subtree", filters.parse("(objectClass=*)"), [])]
    except DirectoryError as e:
        if e.result != "noSuchObject":
            raise
        return
    for dn in sorted(found, key=lambda d: -len(dnmod.split(d))):
        b.delete(dn)


@pytest.fixture(params=["embedded", "ldap"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b: Backend
    if request.param == "embedded":
        b = EmbeddedBackend(str(tmp_path / "dir"))
    else:
        url, bind_dn, password, base_dn = request.getfixturevalue("slapd")
        # a small page size, so that every search here crosses pages
        ldap = LdapBackend(url, bind_dn, password, base_dn=base_dn, page_size=4)
        wipe(ldap)
        b = ldap
    yield b
    b.close()


@pytest.fixture(params=["embedded", "ldap"])
def data_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    if request.param == "ldap":
        url, bind_dn, password, base_dn = request.getfixturevalue("slapd")
        ldap = LdapBackend(url, bind_dn, password, base_dn=base_dn)
        wipe(ldap)
        ldap.close()
        secret = tmp_path / "ldap.secret"
        secret.write_text(password)
        os.chmod(secret, 0o600)
        (data / "directory.json").write_text(json.dumps({
            "backend": "ldap", "domain": "contoso.com", "url": url, "bind_dn": bind_dn,
            "password_file": str(secret), "base_dn": base_dn,
        }))
    return data
