"""Fixtures of the directory tests: the session's OpenLDAP server (tests/directory/slapd.py)."""

from tests.directory.slapd import slapd

__all__ = ["slapd"]
