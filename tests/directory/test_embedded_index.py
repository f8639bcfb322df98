"""The embedded backend's attribute index finds exactly what a scan finds."""

from __future__ import annotations

import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailkeep.directory import filters
from mailkeep.directory.embedded import EmbeddedBackend, plan

VALUES = st.sampled_from(["alice", "Alice", "ALICE", "bob", "007", "7", "-7", "cn=a,dc=b", "CN=A, DC=B", "x y"])
ATTRS = st.sampled_from(["sAMAccountName", "mail", "mailNickname", "proxyAddresses", "description"])


def equal() -> st.SearchStrategy[filters.Filter]:
    return st.builds(filters.Equal, ATTRS, VALUES)


FILTERS = st.recursive(
    equal(),
    lambda inner: st.one_of(
        st.builds(lambda xs: filters.And(tuple(xs)), st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: filters.Or(tuple(xs)), st.lists(inner, min_size=1, max_size=3)),
        st.builds(filters.Not, inner),
    ),
    max_leaves=5,
)
ENTRIES = st.lists(st.dictionaries(ATTRS, st.lists(VALUES, min_size=1, max_size=2, unique_by=str.casefold), max_size=3),
                   min_size=1, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ENTRIES, st.lists(FILTERS, min_size=1, max_size=4))
def test_indexed_search_equals_scan(entries: list[dict[str, list[str]]], flts: list[filters.Filter]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        b = EmbeddedBackend(tmp + "/dir")
        try:
            b.add("DC=contoso,DC=com", {"objectClass": ["domain"], "dc": ["contoso"]})
            for i, attrs in enumerate(entries):
                single = {k: v[:1] for k, v in attrs.items() if k != "proxyAddresses"}
                if "proxyAddresses" in attrs:
                    single["proxyAddresses"] = attrs["proxyAddresses"]
                b.add(f"CN=u{i},DC=contoso,DC=com", {"objectClass": ["user"], "cn": [f"u{i}"], **single})
            everything = list(b.search("DC=contoso,DC=com", "subtree", filters.parse("(objectClass=*)")))
            for f in flts:
                want = sorted(e.dn for e in everything if filters.matches(f, e.attrs))
                got = sorted(e.dn for e in b.search("DC=contoso,DC=com", "subtree", f))
                assert got == want, (filters.to_string(f), plan(f))
        finally:
            b.close()


def test_lookups_by_indexed_attributes_are_planned() -> None:
    assert plan(filters.parse("(mail=a@b)")) == [("mail", "s:a@b")]
    assert plan(filters.parse("(&(objectCategory=user)(|(sAMAccountName=x)(mail=Y)))")) == [
        ("sAMAccountName", "s:x"), ("mail", "s:y")]
    assert plan(filters.parse("(objectGUID=\\01\\ff)")) == [("objectGUID", "b:01ff")]
    assert plan(filters.parse("(|(mail=a)(description=b))")) is None  # description is not indexed
    assert plan(filters.parse("(!(mail=a))")) is None
    assert plan(filters.parse("(mail=cn=a,dc=b)")) is None  # compared as a DN: scan
