"""filters: RFC 4515 search filters as AD and the Exchange 2003 Disaster Recovery guide write them."""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.directory.filters import (
    LDAP_MATCHING_RULE_BIT_AND,
    LDAP_MATCHING_RULE_BIT_OR,
    MAX_DEPTH,
    MAX_LENGTH,
    And,
    Approx,
    Equal,
    Extensible,
    Filter,
    FilterError,
    GreaterOrEqual,
    LessOrEqual,
    Not,
    Or,
    Present,
    Substring,
    matches,
    normalize_dn,
    parse,
    to_string,
)

BIT_AND = LDAP_MATCHING_RULE_BIT_AND
BIT_OR = LDAP_MATCHING_RULE_BIT_OR

# -- the guide's filters, verbatim --------------------------------------------------------------

ENABLED_WITH_MAS = "(&(objectCategory=user)(msExchUserAccountControl=0)(msExchMasterAccountSid=*))"
DISABLED_WITHOUT_MAS = "(&(objectCategory=user)(msExchUserAccountControl=2)(!(msExchMasterAccountSid=*)))"
NOMAS_DISABLED_QUERY = (
    "(&(objectCategory=user)(userAccountControl:1.2.840.113556.1.4.803:=2)(!(msExchMasterAccountSid=*))"
    "(msExchHomeServerName=*)(homeMDB=*))"
)
NOMAS_ENABLED_QUERY = (
    "(&(objectCategory=user)(!userAccountControl:1.2.840.113556.1.4.803:=2)((msExchMasterAccountSid=*))"
    "(msExchHomeServerName=*)(homeMDB=*))"
)
DB1 = (
    "CN=DB1,CN=SG1,CN=InformationStore,CN=Exchange1,CN=Servers,CN=AG1,CN=Administrative Groups,"
    "CN=Organization,CN=Microsoft Exchange,CN=Services,CN=Configuration,DC=contoso,DC=com"
)
HOME_MDB_QUERY = f"(homeMDB={DB1})"

SERVER = "/o=Organization/ou=AG1/cn=Configuration/cn=Servers/cn=Exchange1"
SID = bytes.fromhex("010500000000000515000000a065cf7e784b9b5fe77c8770")


def user(uac: int | str, msexch_uac: int | str | None, with_sid: bool, **extra: Any) -> dict[str, list[Any]]:
    entry: dict[str, list[Any]] = {
        "objectClass": ["top", "person", "organizationalPerson", "user"],
        "objectCategory": ["user"],
        "userAccountControl": [uac],
        "msExchHomeServerName": [SERVER],
        "homeMDB": [DB1],
    }
    if msexch_uac is not None:
        entry["msExchUserAccountControl"] = [msexch_uac]
    if with_sid:
        entry["msExchMasterAccountSid"] = [SID]
    for k, v in extra.items():
        entry[k] = v
    return entry


# The four audit cases: enabled/disabled x with/without msExchMasterAccountSid.
ENABLED_SID = user(512, 0, True)  # the broken kind the guide's first query finds
ENABLED_NO_SID = user("512", "0", False)  # healthy; decimal strings instead of ints
DISABLED_SID = user(514, 2, True)  # healthy resource mailbox
DISABLED_NO_SID = user(66050, 2, False)  # broken: disabled (0x2) + DONT_EXPIRE_PASSWORD, no SID
NO_MAILBOX = user(514, None, False, homeMDB=[], msExchHomeServerName=[])
GROUP = {"objectCategory": ["group"], "objectClass": ["top", "group"], "cn": ["Sales"]}
ALL = {
    "enabled_sid": ENABLED_SID,
    "enabled_no_sid": ENABLED_NO_SID,
    "disabled_sid": DISABLED_SID,
    "disabled_no_sid": DISABLED_NO_SID,
    "no_mailbox": NO_MAILBOX,
    "group": GROUP,
}


def found(text: str, entries: Mapping[str, Mapping[str, Sequence[Any]]] = ALL) -> list[str]:
    f = parse(text)
    return [name for name, e in entries.items() if matches(f, e)]


def test_guide_enabled_with_mas_sid() -> None:
    assert found(ENABLED_WITH_MAS) == ["enabled_sid"]


def test_guide_disabled_without_mas_sid() -> None:
    assert found(DISABLED_WITHOUT_MAS) == ["disabled_no_sid"]


def test_guide_nomas_disabled_query() -> None:
    assert parse(NOMAS_DISABLED_QUERY) == And(
        (
            Equal("objectCategory", "user"),
            Extensible("userAccountControl", BIT_AND, "2"),
            Not(Present("msExchMasterAccountSid")),
            Present("msExchHomeServerName"),
            Present("homeMDB"),
        )
    )
    assert found(NOMAS_DISABLED_QUERY) == ["disabled_no_sid"]


def test_guide_nomas_enabled_query_with_its_quirks() -> None:
    # "(!item)" without inner parentheses and "((item))" doubled parentheses, as the guide writes them
    assert parse(NOMAS_ENABLED_QUERY) == And(
        (
            Equal("objectCategory", "user"),
            Not(Extensible("userAccountControl", BIT_AND, "2")),
            Present("msExchMasterAccountSid"),
            Present("msExchHomeServerName"),
            Present("homeMDB"),
        )
    )
    assert found(NOMAS_ENABLED_QUERY) == ["enabled_sid"]
    assert to_string(parse(NOMAS_ENABLED_QUERY)) == (
        "(&(objectCategory=user)(!(userAccountControl:1.2.840.113556.1.4.803:=2))(msExchMasterAccountSid=*)"
        "(msExchHomeServerName=*)(homeMDB=*))"
    )


def test_guide_home_mdb_query() -> None:
    assert parse(HOME_MDB_QUERY) == Equal("homeMDB", DB1)
    assert to_string(parse(HOME_MDB_QUERY)) == HOME_MDB_QUERY
    assert found(HOME_MDB_QUERY) == ["enabled_sid", "enabled_no_sid", "disabled_sid", "disabled_no_sid"]
    spaced = {"homeMDB": [DB1.replace(",", ", ").lower()]}
    other = {"homeMDB": [DB1.replace("CN=DB1", "CN=DB2")]}
    assert found(HOME_MDB_QUERY, {"spaced": spaced, "other": other}) == ["spaced"]


@pytest.mark.parametrize(
    ("uac", "disabled"),
    [(512, False), (514, True), (66050, True), (66048, False), ("514", True), ("66050", True), (-2147483646, True)],
)
def test_account_disabled_bit(uac: int | str, disabled: bool) -> None:
    entry = {"userAccountControl": [uac]}
    assert matches(parse("(userAccountControl:1.2.840.113556.1.4.803:=2)"), entry) is disabled
    assert matches(parse("(!userAccountControl:1.2.840.113556.1.4.803:=2)"), entry) is not disabled


# -- RFC 4515 section 4 examples ----------------------------------------------------------------

RFC_EXAMPLES: list[tuple[str, Filter, str]] = [
    ("(cn=Babs Jensen)", Equal("cn", "Babs Jensen"), "(cn=Babs Jensen)"),
    ("(!(cn=Tim Howes))", Not(Equal("cn", "Tim Howes")), "(!(cn=Tim Howes))"),
    (
        "(&(objectClass=Person)(|(sn=Jensen)(cn=Babs J*)))",
        And((Equal("objectClass", "Person"), Or((Equal("sn", "Jensen"), Substring("cn", "Babs J", (), None))))),
        "(&(objectClass=Person)(|(sn=Jensen)(cn=Babs J*)))",
    ),
    ("(o=univ*of*mich*)", Substring("o", "univ", ("of", "mich"), None), "(o=univ*of*mich*)"),
    ("(seeAlso=)", Equal("seeAlso", ""), "(seeAlso=)"),
    (
        "(cn:caseExactMatch:=Fred Flintstone)",
        Extensible("cn", "caseExactMatch", "Fred Flintstone", False),
        "(cn:caseExactMatch:=Fred Flintstone)",
    ),
    ("(cn:=Betty Rubble)", Extensible("cn", None, "Betty Rubble", False), "(cn:=Betty Rubble)"),
    (
        "(sn:dn:2.4.6.8.10:=Barney Rubble)",
        Extensible("sn", "2.4.6.8.10", "Barney Rubble", True),
        "(sn:dn:2.4.6.8.10:=Barney Rubble)",
    ),
    ("(o:dn:=Ace Industry)", Extensible("o", None, "Ace Industry", True), "(o:dn:=Ace Industry)"),
    ("(:1.2.3:=Wilma Flintstone)", Extensible(None, "1.2.3", "Wilma Flintstone", False), "(:1.2.3:=Wilma Flintstone)"),
    ("(:DN:2.4.6.8.10:=Dino)", Extensible(None, "2.4.6.8.10", "Dino", True), "(:dn:2.4.6.8.10:=Dino)"),
    (
        r"(o=Parens R Us \28for all your parenthetical needs\29)",
        Equal("o", "Parens R Us (for all your parenthetical needs)"),
        r"(o=Parens R Us \28for all your parenthetical needs\29)",
    ),
    (r"(cn=*\2A*)", Substring("cn", None, ("*",), None), r"(cn=*\2a*)"),
    (r"(filename=C:\5cMyFile)", Equal("filename", "C:\\MyFile"), r"(filename=C:\5cMyFile)"),
    (r"(bin=\00\00\00\04)", Equal("bin", "\x00\x00\x00\x04"), "(bin=\\00\\00\\00\x04)"),
    (r"(sn=Lu\c4\8di\c4\87)", Equal("sn", "Lučić"), "(sn=Lučić)"),
    (
        r"(1.3.6.1.4.1.1466.0=\04\02\48\69)",
        Equal("1.3.6.1.4.1.1466.0", "\x04\x02Hi"),
        "(1.3.6.1.4.1.1466.0=\x04\x02Hi)",
    ),
]


@pytest.mark.parametrize(("text", "tree", "canonical"), RFC_EXAMPLES)
def test_rfc4515_examples(text: str, tree: Filter, canonical: str) -> None:
    assert parse(text) == tree
    assert to_string(tree) == canonical
    assert parse(canonical) == tree


# -- every node type ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("(a=b)", Equal("a", "b")),
        ("(a=*)", Present("a")),
        ("(a=x*)", Substring("a", "x", (), None)),
        ("(a=*x)", Substring("a", None, (), "x")),
        ("(a=*x*)", Substring("a", None, ("x",), None)),
        ("(a=x*y*z)", Substring("a", "x", ("y",), "z")),
        ("(a=x**z)", Substring("a", "x", (), "z")),
        ("(a=**)", Present("a")),
        ("(a>=5)", GreaterOrEqual("a", "5")),
        ("(a<=5)", LessOrEqual("a", "5")),
        ("(a~=smith)", Approx("a", "smith")),
        ("(a:=v)", Extensible("a", None, "v", False)),
        ("(a:dn:=v)", Extensible("a", None, "v", True)),
        ("(a:DN:=v)", Extensible("a", None, "v", True)),
        ("(a:1.2.3:=v)", Extensible("a", "1.2.3", "v", False)),
        ("(a:dn:1.2.3:=v)", Extensible("a", "1.2.3", "v", True)),
        ("(a:dnQualifierMatch:=v)", Extensible("a", "dnQualifierMatch", "v", False)),
        ("(&(a=1))", And((Equal("a", "1"),))),
        ("(|(a=1)(b=2)(c=3))", Or((Equal("a", "1"), Equal("b", "2"), Equal("c", "3")))),
        ("(!(a=1))", Not(Equal("a", "1"))),
        ("(!a=1)", Not(Equal("a", "1"))),
        ("(!a=x*)", Not(Substring("a", "x", (), None))),
        ("((a=1))", Equal("a", "1")),
        ("(((a=1)))", Equal("a", "1")),
        ("((&(a=1)(b=2)))", And((Equal("a", "1"), Equal("b", "2")))),
        ("(!((a=1)))", Not(Equal("a", "1"))),
        ("objectClass=user", Equal("objectClass", "user")),
        ("cn=Jo*", Substring("cn", "Jo", (), None)),
        ("cn=*", Present("cn")),
        ("userAccountControl:1.2.840.113556.1.4.803:=2", Extensible("userAccountControl", BIT_AND, "2", False)),
        ("(userCertificate;binary=*)", Present("userCertificate;binary")),
        ("(cn;lang-en;x-1=a)", Equal("cn;lang-en;x-1", "a")),
        ("(2.5.4.3=a)", Equal("2.5.4.3", "a")),
        ("(0.0=a)", Equal("0.0", "a")),
        ("(msExch-Home-1=a)", Equal("msExch-Home-1", "a")),
        ("(cn= Babs  Jensen )", Equal("cn", " Babs  Jensen ")),
        ("(cn=a=b)", Equal("cn", "a=b")),
        ("(cn=!&|~<>:)", Equal("cn", "!&|~<>:")),
        ("(cn=Jöns)", Equal("cn", "Jöns")),
    ],
)
def test_parse_node_types(text: str, tree: Filter) -> None:
    assert parse(text) == tree
    assert parse(to_string(tree)) == tree


@pytest.mark.parametrize(
    ("tree", "text"),
    [
        (Equal("a", "b"), "(a=b)"),
        (Present("a"), "(a=*)"),
        (Substring("a", "x", ("y", "z"), "w"), "(a=x*y*z*w)"),
        (Substring("a", None, (), "w"), "(a=*w)"),
        (GreaterOrEqual("a", "1"), "(a>=1)"),
        (LessOrEqual("a", "1"), "(a<=1)"),
        (Approx("a", "1"), "(a~=1)"),
        (Extensible("a", None, "v"), "(a:=v)"),
        (Extensible(None, "caseIgnoreMatch", "v", True), "(:dn:caseIgnoreMatch:=v)"),
        (And((Equal("a", "1"), Not(Present("b")))), "(&(a=1)(!(b=*)))"),
        (Or([Equal("a", "1")]), "(|(a=1))"),
        (Equal("a", "*()\\\x00"), r"(a=\2a\28\29\5c\00)"),
        (Equal("a", b"\xff\x00A"), r"(a=\ff\00\41)"),
        (Substring("a", b"\xfe", (b"\xff",), "é"), r"(a=\fe*\ff*é)"),
    ],
)
def test_to_string(tree: Filter, text: str) -> None:
    assert to_string(tree) == text


# -- escapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (r"(a=\2a)", "*"),
        (r"(a=\28\29)", "()"),
        (r"(a=\5C)", "\\"),
        (r"(a=\41\42c)", "ABc"),
        (r"(a=\c3\a9t\c3\a9)", "été"),
        (r"(a=caf\c3\a9)", "café"),
        (r"(a=\e2\82\ac)", "€"),
        (r"(a=\f0\9f\98\80)", "\U0001f600"),
        (r"(a=\ff)", b"\xff"),
        (r"(a=\c3)", b"\xc3"),
        (r"(a=é\ff)", b"\xc3\xa9\xff"),
        (r"(a=\00)", "\x00"),
        (
            r"(objectGUID=\a0\65\cf\7e\78\4b\9b\5f\e7\7c\87\70\00\00\00\00)",
            bytes.fromhex("a065cf7e784b9b5fe77c877000000000"),
        ),
    ],
)
def test_escapes(text: str, value: str | bytes) -> None:
    f = parse(text)
    assert isinstance(f, Equal)
    assert f.value == value
    assert type(f.value) is type(value)
    assert parse(to_string(f)) == f


def test_substring_pieces_decode_separately() -> None:
    assert parse(r"(a=\ff*\c3\a9*x)") == Substring("a", b"\xff", ("é",), "x")


def test_escaped_star_is_not_a_wildcard() -> None:
    assert parse(r"(cn=\2a)") == Equal("cn", "*")
    assert matches(parse(r"(cn=\2a)"), {"cn": ["*"]}) is True
    assert matches(parse(r"(cn=\2a)"), {"cn": ["anything"]}) is False


# -- malformed filters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("(&(a=b)", 7, "expected '(' or ')' at position 7"),
        ("(a=b))", 5, "expected end of filter at position 5"),
        ("(=b)", 1, "expected attribute description at position 1"),
        ("(a~b)", 3, "expected '=' at position 3"),
        ("(a=\\zz)", 4, "expected hex digit at position 4"),
        ("(a=\\4z)", 5, "expected hex digit at position 5"),
        ("(a=\\4", 5, "expected hex digit at position 5"),
        ("", 0, "expected filter at position 0"),
        ("(", 1, "expected filter at position 1"),
        ("()", 1, "expected filter at position 1"),
        ("(a=b", 4, "expected ')' at position 4"),
        ("(&)", 2, "expected '(' at position 2"),
        ("(|)", 2, "expected '(' at position 2"),
        ("(!)", 2, "expected '(' or attribute description at position 2"),
        ("(!(a=b)(c=d))", 7, "expected ')' at position 7"),
        ("((a=b)(c=d))", 6, "expected ')' at position 6"),
        ("(&(a=b)x)", 7, "expected '(' or ')' at position 7"),
        ("(&a=b)", 2, "expected '(' at position 2"),
        ("(a)", 2, "expected '=', '~=', '>=', '<=' or ':' at position 2"),
        ("(a>b)", 3, "expected '=' at position 3"),
        ("(cn =x)", 3, "expected '=', '~=', '>=', '<=' or ':' at position 3"),
        ("( cn=x)", 1, "expected attribute description at position 1"),
        ("(cn=x) ", 6, "expected end of filter at position 6"),
        (" (cn=x)", 0, "expected '(' or attribute description at position 0"),
        ("(&(cn=x) (sn=y))", 8, "expected '(' or ')' at position 8"),
        ("(a=b(c)", 4, "expected '\\28' instead of '(' at position 4"),
        ("(a>=b*)", 5, "expected '\\2a' instead of '*' at position 5"),
        ("(a=b\x00)", 4, "expected '\\00' instead of '\\x00' at position 4"),
        ("(a=\ud800)", 3, "expected a character other than a lone surrogate at position 3"),
        ("(1a=b)", 2, "expected '.' at position 2"),
        ("(1.02=b)", 3, "expected a number without leading zeros at position 3"),
        ("(1.=b)", 3, "expected digit at position 3"),
        ("(a;=b)", 3, "expected attribute option at position 3"),
        ("(a_b=c)", 2, "expected '=', '~=', '>=', '<=' or ':' at position 2"),
        ("(:=x)", 2, "expected matching rule at position 2"),
        ("(:dn:=x)", 5, "expected matching rule at position 5"),
        ("(a:=x*)", 5, "expected '\\2a' instead of '*' at position 5"),
        ("(a:1.2.3=x)", 8, "expected ':=' at position 8"),
        ("(a:dn:dn:=x)", 6, "expected matching rule other than 'dn' at position 6"),
        ("(a:=x", 5, "expected ')' at position 5"),
        ("a=b)", 3, "expected end of filter at position 3"),
        ("&(a=b)", 0, "expected '(' or attribute description at position 0"),
        ("(é=b)", 1, "expected attribute description at position 1"),
    ],
)
def test_malformed(text: str, position: int, message: str) -> None:
    with pytest.raises(FilterError) as info:
        parse(text)
    assert info.value.position == position
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_nesting_depth_limit() -> None:
    assert MAX_DEPTH == 100
    deepest = "(!" * 99 + "(a=b)" + ")" * 99  # 100 levels
    f = parse(deepest)
    assert to_string(f) == deepest
    with pytest.raises(FilterError) as info:
        parse("(!" * 100 + "(a=b)" + ")" * 100)  # 101 levels
    assert info.value.position == 200
    assert str(info.value) == "expected at most 100 levels of nesting at position 200"


def test_nesting_depth_counts_redundant_parentheses_and_bare_items() -> None:
    parse("(" * 100 + "a=b" + ")" * 100)
    with pytest.raises(FilterError) as info:
        parse("(" * 101 + "a=b" + ")" * 101)
    assert info.value.position == 100
    parse("(!" * 99 + "a=b" + ")" * 99)  # the bare item after the last '!' is level 100
    with pytest.raises(FilterError) as info:
        parse("(!" * 100 + "a=b" + ")" * 100)
    assert info.value.position == 200


def test_length_limit() -> None:
    assert MAX_LENGTH == 65536
    ok = "(cn=" + "x" * (MAX_LENGTH - 5) + ")"
    assert len(ok) == MAX_LENGTH
    assert parse(ok) == Equal("cn", "x" * (MAX_LENGTH - 5))
    with pytest.raises(FilterError) as info:
        parse("(cn=" + "x" * (MAX_LENGTH - 4) + ")")
    assert info.value.position == MAX_LENGTH
    assert str(info.value) == "expected at most 65536 bytes of filter text at position 65536"
    with pytest.raises(FilterError) as info:  # the limit is in UTF-8 bytes: 'é' is two
        parse("(cn=" + "é" * 40000 + ")")
    assert info.value.position == 4 + (MAX_LENGTH - 4) // 2


def test_filter_error_pickles() -> None:
    err = FilterError("')'", 17)
    assert str(err) == "expected ')' at position 17"
    copy = pickle.loads(pickle.dumps(err))
    assert (str(copy), copy.position, copy.expected) == ("expected ')' at position 17", 17, "')'")


def test_parse_rejects_non_str() -> None:
    with pytest.raises(TypeError):
        parse(b"(a=b)")  # type: ignore[arg-type]


# -- constructors -------------------------------------------------------------------------------


def test_constructors_validate() -> None:
    with pytest.raises(ValueError):
        And(())
    with pytest.raises(ValueError):
        Or([])
    with pytest.raises(TypeError):
        Not("(a=b)")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Equal("bad attr", "x")
    with pytest.raises(ValueError):
        Equal("1.02", "x")
    with pytest.raises(TypeError):
        Equal("cn", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Substring("cn", None, ("",), "")
    with pytest.raises(ValueError):
        Extensible(None, None, "x")
    with pytest.raises(ValueError):
        Extensible("cn", "dn", "x")
    with pytest.raises(ValueError):
        Extensible("cn", "not a rule", "x")
    deep: Filter = Present("a")
    for _ in range(MAX_DEPTH - 1):
        deep = Not(deep)
    with pytest.raises(ValueError):
        Not(deep)


def test_constructors_normalize() -> None:
    assert And([Present("a")]).items == (Present("a"),)
    s = Substring("cn", "", ["", "x", ""], "")
    assert (s.initial, s.any, s.final) == (None, ("x",), None)
    assert hash(And((Present("a"),))) == hash(And((Present("a"),)))


def test_valid_utf8_bytes_round_trip_as_str() -> None:
    f = Equal("objectGUID", b"abc")
    assert to_string(f) == r"(objectGUID=\61\62\63)"
    assert parse(to_string(f)) == Equal("objectGUID", "abc")
    # either form finds the same stored bytes, exactly
    for g in (f, parse(to_string(f))):
        assert matches(g, {"objectGUID": [b"abc"]}) is True
        assert matches(g, {"objectGUID": [b"ABC"]}) is False


# -- evaluation ---------------------------------------------------------------------------------


def test_attribute_names_are_case_insensitive() -> None:
    entry = {"USERACCOUNTCONTROL": [514], "Mail": ["Alice@Contoso.com"]}
    assert matches(parse("(useraccountcontrol:1.2.840.113556.1.4.803:=2)"), entry) is True
    assert matches(parse("(mail=alice@contoso.COM)"), entry) is True
    assert matches(parse("(MAIL=*)"), entry) is True


def test_strings_compare_case_insensitively_bytes_exactly() -> None:
    assert matches(parse("(cn=STRASSE)"), {"cn": ["straße"]}) is True
    assert matches(parse("(cn=alice)"), {"cn": ["Bob", "ALICE"]}) is True
    assert matches(parse("(cn=alice)"), {"cn": ["Bob"]}) is False
    sid = {"objectSid": [SID]}
    assert matches(parse("(objectSid=" + "".join("\\" + format(b, "02x") for b in SID) + ")"), sid) is True
    assert matches(parse("(objectSid=" + "".join("\\" + format(b, "02X") for b in SID) + ")"), sid) is True
    assert matches(parse(r"(objectSid=\01\05)"), sid) is False
    assert matches(parse("(objectSid=abc)"), {"objectSid": [b"ABC"]}) is False
    assert matches(parse(r"(name=\ff)"), {"name": ["\xff"]}) is False


def test_present() -> None:
    assert matches(Present("a"), {"a": ["x"]}) is True
    assert matches(Present("a"), {"a": [""]}) is True
    assert matches(Present("a"), {"a": []}) is False
    assert matches(Present("a"), {}) is False
    assert matches(Not(Present("a")), {"a": []}) is True


@pytest.mark.parametrize(
    ("text", "stored", "expected"),
    [
        ("(userAccountControl=512)", [512], True),
        ("(userAccountControl=0512)", [512], True),
        ("(userAccountControl=512)", ["512"], True),
        ("(userAccountControl=0512)", ["512"], True),
        ("(userAccountControl=514)", [512], False),
        ("(userAccountControl>=512)", [66050], True),
        ("(userAccountControl>=512)", ["66050"], True),  # numeric, not "66050" < "512" as text
        ("(userAccountControl<=600)", ["66050"], False),
        ("(userAccountControl<=600)", [514], True),
        ("(userAccountControl<=-1)", [-2147483646], True),
        ("(userAccountControl>=512)", [100, 1000], True),
        ("(sn>=m)", ["Smith"], True),
        ("(sn<=m)", ["Smith"], False),
        ("(sn<=M)", ["adams"], True),
        ("(objectSid>=\\01)", [SID], True),
        ("(objectSid<=\\01)", [SID], False),
        ("(cn>=10)", ["9"], False),  # both decimal: numeric
        ("(cn>=10)", ["9a"], True),  # not both decimal: text
    ],
)
def test_equality_and_ordering(text: str, stored: list[Any], expected: bool) -> None:
    assert matches(parse(text), {"userAccountControl": stored, "sn": stored, "objectSid": stored, "cn": stored}) is (
        expected
    )


def test_integer_attribute_against_non_integer_is_undefined() -> None:
    entry = {"userAccountControl": [512]}
    for text in ("(userAccountControl=abc)", "(userAccountControl>=abc)", "(userAccountControl<=abc)"):
        assert matches(parse(text), entry) is False
        assert matches(Not(parse(text)), entry) is False  # Not(Undefined) is not a match


def test_approx() -> None:
    assert matches(parse("(cn~=john   SMITH)"), {"cn": ["John Smith"]}) is True
    assert matches(parse("(cn~=johnsmith)"), {"cn": ["John Smith"]}) is False
    assert matches(parse("(uac~=512)"), {"uac": [512]}) is True


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("(cn=Babs J*)", "babs jensen", True),
        ("(cn=*SON)", "Jensen", False),
        ("(cn=*sen)", "JENSEN", True),
        ("(cn=*ens*)", "Jensen", True),
        ("(o=univ*of*mich*)", "University of Michigan", True),
        ("(o=univ*mich*of*)", "University of Michigan", False),
        ("(cn=ab*ba)", "aba", False),  # initial and final may not overlap
        ("(cn=ab*ba)", "abba", True),
        ("(cn=a*b*b*a)", "aba", False),  # two 'any' pieces need two occurrences
        ("(cn=a*b*b*a)", "abba", True),
        (r"(cn=*\2a*)", "a*b", True),
        (r"(cn=*\2a*)", "ab", False),
        ("(cn=*ß*)", "STRASSE", True),
        ("(uac=5*)", 512, True),
        ("(uac=*13)", 512, False),
    ],
)
def test_substring(text: str, value: str | int, expected: bool) -> None:
    assert matches(parse(text), {"cn": [value], "o": [value], "uac": [value]}) is expected


def test_substring_bytes_exact() -> None:
    entry = {"objectSid": [SID], "name": ["Café"]}
    assert matches(parse(r"(objectSid=\01\05*)"), entry) is True
    assert matches(parse(r"(objectSid=*\87\70)"), entry) is True
    assert matches(parse(r"(objectSid=*\ff*)"), entry) is False
    assert matches(parse(r"(name=*\e9\ff*)"), entry) is False
    assert matches(Substring("name", b"Caf"), entry) is True
    assert matches(Substring("name", b"caf"), entry) is False


@pytest.mark.parametrize(
    ("rule", "asserted", "stored", "expected"),
    [
        (BIT_AND, "2", 514, True),
        (BIT_AND, "2", 512, False),
        (BIT_AND, "2", 66050, True),
        (BIT_AND, "2", "66050", True),
        (BIT_AND, "514", 514, True),
        (BIT_AND, "514", 66050, True),
        (BIT_AND, "65538", 514, False),
        (BIT_AND, "0", 512, True),
        (BIT_OR, "3", 512, False),
        (BIT_OR, "3", 514, True),
        (BIT_OR, "65537", 66050, True),
        (BIT_OR, "0", 514, False),
        ("caseIgnoreMatch", "ALICE", "alice", True),
        ("2.5.13.2", "ALICE", "alice", True),
        ("caseExactMatch", "ALICE", "alice", False),
        ("CASEEXACTMATCH", "alice", "alice", True),
        ("2.5.13.5", "Alice", "Alice", True),
        ("integerMatch", "512", "0512", True),
        ("2.5.13.14", "512", 512, True),
        ("distinguishedNameMatch", "CN=a,DC=b", "cn=A, dc=B", True),
        ("octetStringMatch", "abc", b"abc", True),
        ("2.5.13.17", "abc", "ABC", False),
    ],
)
def test_extensible_rules(rule: str, asserted: str, stored: Any, expected: bool) -> None:
    f = Extensible("attr", rule, asserted)
    assert matches(f, {"attr": [stored]}) is expected
    assert matches(parse(to_string(f)), {"attr": [stored]}) is expected


def test_extensible_undefined_cases() -> None:
    entry = {"userAccountControl": [514], "cn": ["x"], "member": ["CN=a,DC=b"]}
    undefined = [
        "(userAccountControl:1.2.3.4:=2)",  # unknown rule
        "(member:1.2.840.113556.1.4.1941:=CN=a,DC=b)",  # LDAP_MATCHING_RULE_IN_CHAIN needs the directory
        "(userAccountControl:1.2.840.113556.1.4.803:=two)",  # not an integer
        "(cn:1.2.840.113556.1.4.803:=2)",  # not an integer attribute
        "(cn:integerMatch:=2)",
    ]
    for text in undefined:
        assert matches(parse(text), entry) is False, text
        assert matches(Not(parse(text)), entry) is False, text


def test_extensible_without_attribute_and_with_dn() -> None:
    entry = {
        "distinguishedName": ["CN=Bob Smith,OU=Sales,DC=contoso,DC=com"],
        "cn": ["Bob Smith"],
        "userAccountControl": [514],
    }
    assert matches(parse("(:caseExactMatch:=Bob Smith)"), entry) is True
    assert matches(parse("(:caseExactMatch:=bob smith)"), entry) is False
    assert matches(parse("(:1.2.840.113556.1.4.803:=2)"), entry) is True  # non-integers simply don't apply
    assert matches(parse("(ou:dn:=sales)"), entry) is True
    assert matches(parse("(ou:=sales)"), entry) is False  # no ou attribute, and no :dn
    assert matches(parse("(:dn:caseExactMatch:=Sales)"), entry) is True
    assert matches(parse("(:dn:caseExactMatch:=SALES)"), entry) is False
    assert matches(parse("(cn:=BOB SMITH)"), entry) is True  # no rule: the attribute's equality


def test_three_valued_logic() -> None:
    entry = {"a": ["1"]}
    u = Extensible("a", "1.9.9", "1")  # Undefined
    t, f = Equal("a", "1"), Equal("a", "2")
    assert [matches(x, entry) for x in (u, Not(u), t, f)] == [False, False, True, False]
    assert matches(Or((u, t)), entry) is True
    assert matches(Or((u, f)), entry) is False
    assert matches(Not(Or((u, f))), entry) is False  # Undefined
    assert matches(And((u, f)), entry) is False
    assert matches(Not(And((u, f))), entry) is True  # FALSE, so its negation is TRUE
    assert matches(Not(And((u, t))), entry) is False  # Undefined


def test_absent_attribute_is_false_not_undefined() -> None:
    assert matches(parse("(!(msExchMasterAccountSid=S-1-5-10))"), {}) is True
    assert matches(parse("(!userAccountControl:1.2.840.113556.1.4.803:=2)"), {}) is True


def test_attribute_options_fall_back_to_the_type() -> None:
    entry = {"userCertificate": [b"\x30\x82"], "cn;lang-de": ["Hans"]}
    assert matches(parse(r"(userCertificate;binary=\30\82)"), entry) is True
    assert matches(parse("(cn;lang-de=hans)"), entry) is True
    assert matches(parse("(cn=hans)"), entry) is False


def test_object_category_shorthand_against_dn() -> None:
    person = {"objectCategory": ["CN=Person,CN=Schema,CN=Configuration,DC=contoso,DC=com"]}
    mdb = {"objectCategory": ["CN=ms-Exch-Private-MDB,CN=Schema,CN=Configuration,DC=contoso,DC=com"]}
    assert matches(parse("(objectCategory=user)"), person) is True
    assert matches(parse("(objectCategory=person)"), person) is True
    assert matches(parse("(objectCategory=group)"), person) is False
    assert matches(parse("(objectCategory=cn=person, cn=schema,cn=configuration,dc=contoso,dc=com)"), person) is True
    assert matches(parse("(objectCategory=msExchPrivateMDB)"), mdb) is True
    assert matches(parse("(cn=user)"), {"cn": ["CN=Person,DC=x"]}) is False  # only for objectCategory


def test_bool_values_are_true_false() -> None:
    assert matches(parse("(isCriticalSystemObject=TRUE)"), {"isCriticalSystemObject": [True]}) is True
    assert matches(parse("(isCriticalSystemObject=TRUE)"), {"isCriticalSystemObject": [False]}) is False


@pytest.mark.parametrize(
    "entry",
    [
        None,
        42,
        "cn",
        [("cn", ["x"])],
        {"cn": None},
        {"cn": 5},
        {"cn": [None, 1.5, object(), ["nested"]]},
        {"cn": "x"},
        {5: ["x"]},
        {"userAccountControl": [10**5000]},
        {"userAccountControl": ["9" * 5000]},
        {"userAccountControl": [b"\xff\xfe"]},
        {"cn": ["\ud800"]},
        {"distinguishedName": ["=,+\\"]},
    ],
)
def test_matches_never_raises(entry: Any) -> None:
    filters = [
        NOMAS_ENABLED_QUERY,
        "(cn=x)",
        "(cn=*x*)",
        "(cn>=x)",
        "(cn~=x)",
        "(userAccountControl>=1)",
        "(userAccountControl=" + "9" * 5000 + ")",
        "(userAccountControl=1*)",
        "(userAccountControl:1.2.840.113556.1.4.804:=3)",
        "(:dn:caseIgnoreMatch:=x)",
        r"(cn=\ff)",
    ]
    for text in filters:
        assert matches(parse(text), entry) in (True, False)


def test_bare_string_value_counts_as_one_value() -> None:
    assert matches(parse("(cn=Alice)"), {"cn": "Alice"}) is True  # type: ignore[dict-item]


# -- DN normalization ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dn", "normal"),
    [
        ("CN=a, CN=b", "cn=a,cn=b"),
        ("cn=A,cn=B", "cn=a,cn=b"),
        ("CN = a ,  DC = B ", "cn=a,dc=b"),
        (DB1, DB1.lower()),
        (r"CN=Smith\, John,DC=x", r"cn=smith\, john,dc=x"),
        (r"CN=Smith\2C John,DC=x", r"cn=smith\, john,dc=x"),
        (r"CN=caf\c3\a9", "cn=café"),
        (r"CN=a\ ", r"cn=a\ "),
        (r"CN=\ a", r"cn=\ a"),
        (r"CN=\#1", r"cn=\#1"),
        ("OU=Sales+CN=J", "cn=j+ou=sales"),
        ("2.5.4.3=x", "2.5.4.3=x"),
        ("CN=", "cn="),
    ],
)
def test_normalize_dn(dn: str, normal: str) -> None:
    assert normalize_dn(dn) == normal
    assert normalize_dn(normal) == normal


@pytest.mark.parametrize("text", ["", "alice@contoso.com", "CN=a,", "=a", "CN=a,b", "CN a", "CN=a\\"])
def test_normalize_dn_rejects_non_dns(text: str) -> None:
    with pytest.raises(ValueError):
        normalize_dn(text)


def test_dn_equality_only_when_both_sides_are_dns() -> None:
    assert matches(parse("(manager=CN=Bob,DC=x)"), {"manager": ["cn=bob, dc=X"]}) is True
    assert matches(parse("(manager=CN=Bob,DC=x)"), {"manager": ["CN=Bob,DC=y"]}) is False
    assert matches(parse("(description=a, b)"), {"description": ["A,b"]}) is False
    assert matches(parse("(description=a, b)"), {"description": ["A, B"]}) is True


# -- properties ---------------------------------------------------------------------------------

NAMES = ["cn", "sn", "mail", "homeMDB", "objectGUID", "userAccountControl", "msExchMasterAccountSid"]
attrs = st.one_of(
    st.sampled_from(NAMES),
    st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,6}(;[A-Za-z0-9-]{1,4}){0,2}", fullmatch=True),
    st.from_regex(r"(0|[1-9][0-9]{0,3})(\.(0|[1-9][0-9]{0,3})){1,4}", fullmatch=True),
)
rules = st.one_of(
    st.sampled_from([BIT_AND, BIT_OR, "caseIgnoreMatch", "2.5.13.5", "1.2.840.113556.1.4.1941"]),
    st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,6}", fullmatch=True).filter(lambda r: r.lower() != "dn"),
)


def _invalid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


values = st.one_of(
    st.text(max_size=10),
    st.text(alphabet=st.sampled_from("aZ *()\\\x00é=:,"), max_size=10),
    st.integers(-(2**40), 2**40).map(str),
    st.binary(min_size=1, max_size=8).filter(_invalid_utf8),
)
nonempty = values.filter(lambda v: len(v) > 0)


def _substring_ok(args: tuple[Any, Any, Any, Any]) -> bool:
    return bool(args[1] or args[2] or args[3])


substrings = st.tuples(attrs, st.none() | nonempty, st.lists(nonempty, max_size=3).map(tuple), st.none() | nonempty)
leaves = st.one_of(
    st.builds(Equal, attrs, values),
    st.builds(Present, attrs),
    st.builds(GreaterOrEqual, attrs, values),
    st.builds(LessOrEqual, attrs, values),
    st.builds(Approx, attrs, values),
    substrings.filter(_substring_ok).map(lambda a: Substring(*a)),
    st.builds(Extensible, attrs, st.none() | rules, values, st.booleans()),
    st.builds(Extensible, st.none(), rules, values, st.booleans()),
)
trees: st.SearchStrategy[Filter] = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=4).map(lambda xs: And(tuple(xs))),
        st.lists(children, min_size=1, max_size=4).map(lambda xs: Or(tuple(xs))),
        children.map(Not),
    ),
    max_leaves=12,
)

entry_values = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["512", "514", "66050", "0", "2", "CN=a, DC=b", "cn=A,dc=b", "*", ""]),
    st.binary(max_size=8),
    st.integers(),
    st.sampled_from([10**5000, -(2**63), True, None, 1.5]),
)
entries = st.dictionaries(
    st.one_of(st.sampled_from(NAMES + ["CN", "Mail", "distinguishedName", "dn"]), attrs),
    st.lists(entry_values, max_size=4),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(trees)
def test_round_trip(f: Filter) -> None:
    text = to_string(f)
    assert parse(text) == f
    assert to_string(parse(text)) == text


@settings(max_examples=300, deadline=None)
@given(trees, entries)
def test_matches_is_total_and_negation_is_consistent(f: Filter, entry: dict[str, list[Any]]) -> None:
    result = matches(f, entry)
    assert result in (True, False)
    if result:
        assert matches(Not(f), entry) is False


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("()&|!=*~<>:;.\\0123456789abcdnDN\x00 é"), max_size=40))
def test_parse_either_succeeds_or_reports_a_position(text: str) -> None:
    try:
        f = parse(text)
    except FilterError as e:
        assert 0 <= e.position <= len(text)
        assert str(e).endswith(f" at position {e.position}")
    else:
        assert parse(to_string(f)) == f
