"""ldif: RFC 2849 reading and writing with LDIFDE's habits (the Exchange 2003 re-homing procedure)."""

from __future__ import annotations

import base64
import dataclasses
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.directory import ldif
from mailkeep.directory.ldif import (
    AddRecord,
    Change,
    DeleteRecord,
    LdifError,
    ModifyRecord,
    ModRdnRecord,
    Op,
    Record,
    Value,
)


def records(source: str) -> list[Record]:
    return list(ldif.parse(source))


def error(source: str) -> LdifError:
    with pytest.raises(LdifError) as info:
        list(ldif.parse(source))
    return info.value


def entry_text(dn: str, attrs: dict[str, list[Value]], **kw: bool) -> str:
    out = io.StringIO()
    ldif.write_entry(out, dn, attrs, **kw)
    return out.getvalue()


# ---------------------------------------------------------------- RFC 2849, section "Examples"

RFC_EXAMPLE_1 = """\
version: 1
dn: cn=Barbara Jensen, ou=Product Development, dc=airius, dc=com
objectclass: top
objectclass: person
objectclass: organizationalPerson
cn: Barbara Jensen
cn: Barbara J Jensen
cn: Babs Jensen
sn: Jensen
uid: bjensen
telephonenumber: +1 408 555 1212
description: A big sailing fan.

dn: cn=Bjorn Jensen, ou=Accounting, dc=airius, dc=com
objectclass: top
objectclass: person
objectclass: organizationalPerson
cn: Bjorn Jensen
sn: Jensen
telephonenumber: +1 408 555 1212
"""

RFC_EXAMPLE_2 = """\
version: 1
dn:cn=Barbara Jensen, ou=Product Development, dc=airius, dc=com
objectclass:top
objectclass:person
objectclass:organizationalPerson
cn:Barbara Jensen
cn:Barbara J Jensen
cn:Babs Jensen
sn:Jensen
uid:bjensen
telephonenumber:+1 408 555 1212
description:Babs is a big sailing fan, and travels extensively in sea
 rch of perfect sailing conditions.
title:Product Manager, Rod and Reel Division
"""

RFC_EXAMPLE_3 = """\
version: 1
dn: cn=Gern Jensen, ou=Product Testing, dc=airius, dc=com
objectclass: top
objectclass: person
objectclass: organizationalPerson
cn: Gern Jensen
cn: Gern O Jensen
sn: Jensen
uid: gernj
telephonenumber: +1 408 555 1212
description:: V2hhdCBhIGNhcmVmdWwgcmVhZGVyIHlvdSBhcmUhICBUaGlzIHZhbHVlIGlzIGJhc2UtNjQtZW5jb2RlZCBiZWNhdXNlIGl0IGhhcyBhIGNvbnRyb2wgY2hhcmFjdGVyIGluIGl0IChhIENSKS4NICBCeSB0aGUgd2F5LCB5b3Ugc2hvdWxkIHJlYWxseSBnZXQgb3V0IG1vcmUu
"""  # noqa: E501 - the RFC's own line

# In the RFC's text the comment after givenname;lang-ja;phonetic wraps onto a line that is
# neither a comment nor indented (a layout slip of the RFC); typed here as RFC 2849 allows a
# comment to be folded: a continuation line starting with one space.
RFC_EXAMPLE_4 = """\
version: 1
dn:: b3U95Za25qWt6YOoLG89QWlyaXVz
# dn:: ou=<JapaneseOU>,o=Airius
objectclass: top
objectclass: organizationalUnit
ou:: 5Za25qWt6YOo
# ou:: <JapaneseOU>
ou;lang-ja:: 5Za25qWt6YOo
# ou;lang-ja:: <JapaneseOU>
ou;lang-ja;phonetic:: 44GI44GE44GO44KH44GG44G2
# ou;lang-ja:: <JapaneseOU_in_phonetic_representation>
ou;lang-en: Sales
description: Japanese office

dn:: dWlkPXJvZ2FzYXdhcmEsb3U95Za25qWt6YOoLG89QWlyaXVz
# dn:: uid=<uid>,ou=<JapaneseOU>,o=Airius
userpassword: {SHA}O3HSv1MusyL4kTjP+HKI5uxuNoM=
objectclass: top
objectclass: person
objectclass: organizationalPerson
objectclass: inetOrgPerson
uid: rogasawara
mail: rogasawara@airius.co.jp
givenname;lang-ja:: 44Ot44OJ44OL44O8
# givenname;lang-ja:: <JapaneseGivenname>
sn;lang-ja:: 5bCP56yg5Y6f
# sn;lang-ja:: <JapaneseSn>
cn;lang-ja:: 5bCP56yg5Y6fIOODreODieODi+ODvA==
# cn;lang-ja:: <JapaneseCn>
title;lang-ja:: 5Za25qWt6YOoIOmDqOmVtw==
# title;lang-ja:: <JapaneseTitle>
preferredlanguage: ja
givenname:: 44Ot44OJ44OL44O8
# givenname:: <JapaneseGivenname>
sn:: 5bCP56yg5Y6f
# sn:: <JapaneseSn>
cn:: 5bCP56yg5Y6fIOODreODieODi+ODvA==
# cn:: <JapaneseCn>
title:: 5Za25qWt6YOoIOmDqOmVtw==
# title:: <JapaneseTitle>
givenname;lang-ja;phonetic:: 44KN44Gp44Gr44O8
# givenname;lang-ja;phonetic::
 <JapaneseGivenname_in_phonetic_representation_kana>
sn;lang-ja;phonetic:: 44GK44GM44GV44KP44KJ
# sn;lang-ja;phonetic:: <JapaneseSn_in_phonetic_representation_kana>
cn;lang-ja;phonetic:: 44GK44GM44GV44KP44KJIOOCjeOBqeOBq+ODvA==
# cn;lang-ja;phonetic:: <JapaneseCn_in_phonetic_representation_kana>
title;lang-ja;phonetic:: 44GI44GE44GO44KH44GG44G2IOOBtuOBoeOCh+OBhg==
# title;lang-ja;phonetic::
# <JapaneseTitle_in_phonetic_representation_kana>
givenname;lang-en: Rodney
sn;lang-en: Ogasawara
cn;lang-en: Rodney Ogasawara
title;lang-en: Sales, Director
"""

RFC_EXAMPLE_5 = """\
version: 1
dn: cn=Horatio Jensen, ou=Product Testing, dc=airius, dc=com
objectclass: top
objectclass: person
objectclass: organizationalPerson
cn: Horatio Jensen
cn: Horatio N Jensen
sn: Jensen
uid: hjensen
telephonenumber: +1 408 555 1212
jpegphoto:< file:///usr/local/directory/photos/hjensen.jpg
"""

RFC_EXAMPLE_6 = """\
version: 1
# Add a new entry
dn: cn=Fiona Jensen, ou=Marketing, dc=airius, dc=com
changetype: add
objectclass: top
objectclass: person
objectclass: organizationalPerson
cn: Fiona Jensen
sn: Jensen
uid: fiona
telephonenumber: +1 408 555 1212
jpegphoto:< file:///usr/local/directory/photos/fiona.jpg

# Delete an existing entry
dn: cn=Robert Jensen, ou=Marketing, dc=airius, dc=com
changetype: delete

# Modify an entry's relative distinguished name
dn: cn=Paul Jensen, ou=Product Development, dc=airius, dc=com
changetype: modrdn
newrdn: cn=Paula Jensen
deleteoldrdn: 1

# Rename an entry and move all of its children to a new location in
# the directory tree (only implemented by LDAPv3 servers).
dn: ou=PD Accountants, ou=Product Development, dc=airius, dc=com
changetype: modrdn
newrdn: ou=Product Development Accountants
deleteoldrdn: 0
newsuperior: ou=Accounting, dc=airius, dc=com

# Modify an entry: add an additional value to the postaladdress
# attribute, completely delete the description attribute, replace
# the telephonenumber attribute with two values, and delete a specific
# value from the facsimiletelephonenumber attribute
dn: cn=Paula Jensen, ou=Product Development, dc=airius, dc=com
changetype: modify
add: postaladdress
postaladdress: 123 Anystreet $ Sunnyvale, CA $ 94086
-
delete: description
-
replace: telephonenumber
telephonenumber: +1 408 555 1234
telephonenumber: +1 408 555 5678
-
delete: facsimiletelephonenumber
facsimiletelephonenumber: +1 408 555 9876
-

# Modify an entry: replace the postaladdress attribute with an empty
# set of values (which will cause the attribute to be removed), and
# delete the entire description attribute. Note that the first will
# always succeed, while the second will only succeed if at least
# one value for the description attribute is present.
dn: cn=Ingrid Jensen, ou=Product Support, dc=airius, dc=com
changetype: modify
replace: postaladdress
-
delete: description
-
"""


def test_rfc_example_1_two_content_records() -> None:
    assert records(RFC_EXAMPLE_1) == [
        AddRecord(
            "cn=Barbara Jensen, ou=Product Development, dc=airius, dc=com",
            {
                "objectclass": ["top", "person", "organizationalPerson"],
                "cn": ["Barbara Jensen", "Barbara J Jensen", "Babs Jensen"],
                "sn": ["Jensen"],
                "uid": ["bjensen"],
                "telephonenumber": ["+1 408 555 1212"],
                "description": ["A big sailing fan."],
            },
            2,
        ),
        AddRecord(
            "cn=Bjorn Jensen, ou=Accounting, dc=airius, dc=com",
            {
                "objectclass": ["top", "person", "organizationalPerson"],
                "cn": ["Bjorn Jensen"],
                "sn": ["Jensen"],
                "telephonenumber": ["+1 408 555 1212"],
            },
            14,
        ),
    ]


def test_rfc_example_2_folded_value_and_no_space_after_colon() -> None:
    assert records(RFC_EXAMPLE_2) == [
        AddRecord(
            "cn=Barbara Jensen, ou=Product Development, dc=airius, dc=com",
            {
                "objectclass": ["top", "person", "organizationalPerson"],
                "cn": ["Barbara Jensen", "Barbara J Jensen", "Babs Jensen"],
                "sn": ["Jensen"],
                "uid": ["bjensen"],
                "telephonenumber": ["+1 408 555 1212"],
                "description": [
                    "Babs is a big sailing fan, and travels extensively in search of perfect sailing conditions."
                ],
                "title": ["Product Manager, Rod and Reel Division"],
            },
            2,
        )
    ]


def test_rfc_example_3_base64_value_with_a_carriage_return() -> None:
    assert records(RFC_EXAMPLE_3) == [
        AddRecord(
            "cn=Gern Jensen, ou=Product Testing, dc=airius, dc=com",
            {
                "objectclass": ["top", "person", "organizationalPerson"],
                "cn": ["Gern Jensen", "Gern O Jensen"],
                "sn": ["Jensen"],
                "uid": ["gernj"],
                "telephonenumber": ["+1 408 555 1212"],
                "description": [
                    "What a careful reader you are!  This value is base-64-encoded because it has a control "
                    "character in it (a CR).\r  By the way, you should really get out more."
                ],
            },
            2,
        )
    ]


def test_rfc_example_4_utf8_base64_dns_and_language_options() -> None:
    assert records(RFC_EXAMPLE_4) == [
        AddRecord(
            "ou=営業部,o=Airius",
            {
                "objectclass": ["top", "organizationalUnit"],
                "ou": ["営業部"],
                "ou;lang-ja": ["営業部"],
                "ou;lang-ja;phonetic": ["えいぎょうぶ"],
                "ou;lang-en": ["Sales"],
                "description": ["Japanese office"],
            },
            2,
        ),
        AddRecord(
            "uid=rogasawara,ou=営業部,o=Airius",
            {
                # userPassword is a binary attribute, but this value is plain text: kept as written.
                "userpassword": ["{SHA}O3HSv1MusyL4kTjP+HKI5uxuNoM="],
                "objectclass": ["top", "person", "organizationalPerson", "inetOrgPerson"],
                "uid": ["rogasawara"],
                "mail": ["rogasawara@airius.co.jp"],
                "givenname;lang-ja": ["ロドニー"],
                "sn;lang-ja": ["小笠原"],
                "cn;lang-ja": ["小笠原 ロドニー"],
                "title;lang-ja": ["営業部 部長"],
                "preferredlanguage": ["ja"],
                "givenname": ["ロドニー"],
                "sn": ["小笠原"],
                "cn": ["小笠原 ロドニー"],
                "title": ["営業部 部長"],
                "givenname;lang-ja;phonetic": ["ろどにー"],
                "sn;lang-ja;phonetic": ["おがさわら"],
                "cn;lang-ja;phonetic": ["おがさわら ろどにー"],
                "title;lang-ja;phonetic": ["えいぎょうぶ ぶちょう"],
                "givenname;lang-en": ["Rodney"],
                "sn;lang-en": ["Ogasawara"],
                "cn;lang-en": ["Rodney Ogasawara"],
                "title;lang-en": ["Sales, Director"],
            },
            15,
        ),
    ]


def test_rfc_example_5_url_reference_is_refused_never_fetched() -> None:
    e = error(RFC_EXAMPLE_5)
    assert e.line == 11
    assert e.dn == "cn=Horatio Jensen, ou=Product Testing, dc=airius, dc=com"
    assert str(e) == (
        "LDIF line 11 (record dn: 'cn=Horatio Jensen, ou=Product Testing, dc=airius, dc=com'): "
        "'jpegphoto:<' refers to a URL ('file:///usr/local/directory/photos/hjensen.jpg'); URLs are never "
        "loaded, for safety; put the value in the file instead, base64-encoded as 'jpegphoto:: <base64>'"
    )


def test_rfc_example_6_first_record_refers_to_a_url() -> None:
    e = error(RFC_EXAMPLE_6)
    assert (e.line, e.dn) == (12, "cn=Fiona Jensen, ou=Marketing, dc=airius, dc=com")
    assert "URLs are never loaded" in str(e)


def test_rfc_example_6_change_records() -> None:
    # The whole example with the one URL line taken out (every later line moves up by one).
    text = RFC_EXAMPLE_6.replace("jpegphoto:< file:///usr/local/directory/photos/fiona.jpg\n", "")
    assert records(text) == [
        AddRecord(
            "cn=Fiona Jensen, ou=Marketing, dc=airius, dc=com",
            {
                "objectclass": ["top", "person", "organizationalPerson"],
                "cn": ["Fiona Jensen"],
                "sn": ["Jensen"],
                "uid": ["fiona"],
                "telephonenumber": ["+1 408 555 1212"],
            },
            3,
        ),
        DeleteRecord("cn=Robert Jensen, ou=Marketing, dc=airius, dc=com", 14),
        ModRdnRecord("cn=Paul Jensen, ou=Product Development, dc=airius, dc=com", "cn=Paula Jensen", True, None, 18),
        ModRdnRecord(
            "ou=PD Accountants, ou=Product Development, dc=airius, dc=com",
            "ou=Product Development Accountants",
            False,
            "ou=Accounting, dc=airius, dc=com",
            25,
        ),
        ModifyRecord(
            "cn=Paula Jensen, ou=Product Development, dc=airius, dc=com",
            [
                Change("add", "postaladdress", ["123 Anystreet $ Sunnyvale, CA $ 94086"]),
                Change("delete", "description", []),
                Change("replace", "telephonenumber", ["+1 408 555 1234", "+1 408 555 5678"]),
                Change("delete", "facsimiletelephonenumber", ["+1 408 555 9876"]),
            ],
            35,
        ),
        ModifyRecord(
            "cn=Ingrid Jensen, ou=Product Support, dc=airius, dc=com",
            [Change("replace", "postaladdress", []), Change("delete", "description", [])],
            55,
        ),
    ]


def test_records_before_a_bad_one_are_yielded_first() -> None:
    it = ldif.parse(RFC_EXAMPLE_1 + "\n" + RFC_EXAMPLE_5.replace("version: 1\n", ""))
    assert next(it).line == 2
    assert next(it).line == 14
    with pytest.raises(LdifError) as info:
        next(it)
    assert info.value.line == 31


# ---------------------------------------------------------------- the Exchange 2003 guide: re-homing

SOURCE_MTA = (
    "CN=Microsoft MTA,CN=Exchange1,CN=Servers,CN=AG1,CN=Administrative Groups,CN=Organization,"
    "CN=Microsoft Exchange,CN=Services,CN=Configuration,DC=contoso,DC=com"
)
SOURCE_MDB = (
    "CN=DB1,CN=SG1,CN=InformationStore,CN=Exchange1,CN=Servers,CN=AG1,CN=Administrative Groups,"
    "CN=Organization,CN=Microsoft Exchange,CN=Services,CN=Configuration,DC=contoso,DC=com"
)
SOURCE_SERVER = "/o=Organization/ou=AG1/cn=Configuration/cn=Servers/cn=Exchange1"
USER1 = "CN=User1,CN=Users,DC=contoso,DC=com"
USER2 = "CN=User2,CN=Users,DC=contoso,DC=com"

# Step 1's export record, as LDIFDE writes it (values on continuation lines starting with one space).
GUIDE_EXPORT = """\
dn: CN=User1,CN=Users,DC=contoso,DC=com
changetype: add
homeMTA:
 CN=Microsoft MTA,CN=Exchange1,CN=Servers,CN=AG1,CN=Administr
 ative Groups,CN=Organization,CN=Microsoft Exchange,CN=Services,CN
 =Configuration,DC=contoso,DC=com
homeMDB:
 CN=DB1,CN=SG1,CN=InformationStore,CN=Exchange1,CN=Servers,C
 N=AG1,CN=Administrative Groups,CN=Organization,CN=Microsoft Ex
 change,CN=Services,CN=Configuration,DC=contoso,DC=com
msExchHomeServerName:
 /o=Organization/ou=AG1/cn=Configuration/cn=Servers/cn=Exchange1
"""

# Step 2's import example: the next record's "Dn:" follows the "-" directly, as in the guide; the
# guide's "<and so on>" is completed with User2's three parts, a "-" and a blank line at the end.
GUIDE_IMPORT = """\
dn: CN=User1,CN=Users,DC=contoso,DC=com
changetype: modify
replace: homeMTA
homeMTA:
 CN=Microsoft MTA,CN=Exchange1,CN=Servers,CN=AG1,CN=Administr
 ative Groups,CN=Organization,CN=Microsoft Exchange,CN=Services,CN
 =Configuration,DC=contoso,DC=com
-
replace: homeMDB
homeMDB:
 CN=DB1,CN=SG1,CN=InformationStore,CN=Exchange1,CN=Servers,CN=
 AG1,CN=Administrative Groups,CN=Organization,CN=Microsoft Exchange
 ,CN=Services,CN=Configuration,DC=contoso,DC=com
-
replace: msExchHomeServerName
msExchHomeServerName:
 /o=Organization/ou=AG1/cn=Configuration/cn=Servers/cn=Exchange1
-
Dn: CN=User2,CN=Users,DC=contoso,DC=com
changetype: modify
Replace: homeMTA
homeMTA:
 CN=Microsoft MTA,CN=Exchange1,CN=Servers,CN=AG1,CN=Administr
 ative Groups,CN=Organization,CN=Microsoft Exchange,CN=Services,CN
 =Configuration,DC=contoso,DC=com
-
Replace: homeMDB
homeMDB:
 CN=DB1,CN=SG1,CN=InformationStore,CN=Exchange1,CN=Servers,CN=
 AG1,CN=Administrative Groups,CN=Organization,CN=Microsoft Exchange
 ,CN=Services,CN=Configuration,DC=contoso,DC=com
-
Replace: msExchHomeServerName
msExchHomeServerName:
 /o=Organization/ou=AG1/cn=Configuration/cn=Servers/cn=Exchange1
-

"""


def rehome_changes(mta: str, mdb: str, server: str) -> list[Change]:
    return [
        Change("replace", "homeMTA", [mta]),
        Change("replace", "homeMDB", [mdb]),
        Change("replace", "msExchHomeServerName", [server]),
    ]


GUIDE_IMPORT_RECORDS = [
    ModifyRecord(USER1, rehome_changes(SOURCE_MTA, SOURCE_MDB, SOURCE_SERVER), 1),
    ModifyRecord(USER2, rehome_changes(SOURCE_MTA, SOURCE_MDB, SOURCE_SERVER), 19),
]


def test_guide_export_record() -> None:
    assert records(GUIDE_EXPORT) == [
        AddRecord(
            USER1,
            {"homeMTA": [SOURCE_MTA], "homeMDB": [SOURCE_MDB], "msExchHomeServerName": [SOURCE_SERVER]},
            1,
        )
    ]


def test_guide_export_file_starts_with_a_blank_line_as_ldifde_writes_it() -> None:
    assert [r.line for r in records("\n" + GUIDE_EXPORT + "\n" + GUIDE_EXPORT.replace("User1", "User2"))] == [2, 15]


def test_guide_import_next_record_right_after_the_dash() -> None:
    assert records(GUIDE_IMPORT) == GUIDE_IMPORT_RECORDS


def test_guide_import_with_a_blank_line_between_records() -> None:
    text = GUIDE_IMPORT.replace("-\nDn:", "-\n\nDn:")
    assert records(text) == [GUIDE_IMPORT_RECORDS[0], ModifyRecord(USER2, GUIDE_IMPORT_RECORDS[1].changes, 20)]


def test_guide_import_saved_by_notepad_crlf_and_bom() -> None:
    text = "\ufeff" + GUIDE_IMPORT.replace("\n", "\r\n")
    assert records(text) == GUIDE_IMPORT_RECORDS
    assert list(ldif.parse(io.StringIO(text, newline=""))) == GUIDE_IMPORT_RECORDS


def test_guide_import_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "EXCHANGE2-IMPORT.TXT"
    path.write_bytes(GUIDE_IMPORT.replace("\n", "\r\n").encode("utf-8-sig"))
    with open(path, encoding="utf-8") as f:  # universal newlines; the BOM is left to the parser
        assert list(ldif.parse(f)) == GUIDE_IMPORT_RECORDS


def test_guide_import_general_format_with_comment_lines() -> None:
    text = GUIDE_IMPORT.replace("-\nDn:", "-\n#<blank line>\n\n#<next record>\nDn:")
    assert [r.line for r in records(text)] == [1, 22]


def test_guide_import_missing_final_dash_is_accepted() -> None:
    text = GUIDE_IMPORT[: -len("-\n\n")]
    assert text.endswith("cn=Exchange1\n")
    assert records(text) == GUIDE_IMPORT_RECORDS


def test_rehome_export_to_import_round_trip() -> None:
    """Step 2 done by the library: each exported record becomes a modify record for Exchange2."""

    def move(value: Value) -> str:
        assert isinstance(value, str)
        return value.replace("Exchange1", "Exchange2").replace("CN=DB1,CN=SG1", "CN=DB2,CN=SG2")

    out = io.StringIO()
    for rec in ldif.parse(GUIDE_EXPORT + "\n" + GUIDE_EXPORT.replace("User1", "User2")):
        assert isinstance(rec, AddRecord)
        ldif.write_modify(out, rec.dn, [Change("replace", a, [move(v) for v in vs]) for a, vs in rec.attrs.items()])
    assert out.getvalue().split("\n")[:16] == [
        "dn: CN=User1,CN=Users,DC=contoso,DC=com",
        "changetype: modify",
        "replace: homeMTA",
        "homeMTA: CN=Microsoft MTA,CN=Exchange2,CN=Servers,CN=AG1,CN=Administrative G",
        " roups,CN=Organization,CN=Microsoft Exchange,CN=Services,CN=Configuration,DC",
        " =contoso,DC=com",
        "-",
        "replace: homeMDB",
        "homeMDB: CN=DB2,CN=SG2,CN=InformationStore,CN=Exchange2,CN=Servers,CN=AG1,CN",
        " =Administrative Groups,CN=Organization,CN=Microsoft Exchange,CN=Services,CN",
        " =Configuration,DC=contoso,DC=com",
        "-",
        "replace: msExchHomeServerName",
        "msExchHomeServerName: /o=Organization/ou=AG1/cn=Configuration/cn=Servers/cn=",
        " Exchange2",
        "-",
    ]
    mta = SOURCE_MTA.replace("Exchange1", "Exchange2")
    mdb = SOURCE_MDB.replace("CN=DB1,CN=SG1", "CN=DB2,CN=SG2").replace("Exchange1", "Exchange2")
    server = SOURCE_SERVER.replace("Exchange1", "Exchange2")
    assert records(out.getvalue()) == [
        ModifyRecord(USER1, rehome_changes(mta, mdb, server), 1),
        ModifyRecord(USER2, rehome_changes(mta, mdb, server), 18),
    ]


def test_guide_first_export_example_as_extracted_is_refused_at_the_unindented_line() -> None:
    # The extracted guide shows homeMTA's value on a line without the leading space.
    text = GUIDE_EXPORT.replace(" CN=Microsoft MTA", "CN=Microsoft MTA")
    e = error(text)
    assert (e.line, e.dn) == (4, USER1)
    assert "the line has no ':'" in str(e)
    assert "if it continues the previous value, start it with one space" in str(e)


def test_guide_text_copied_with_no_break_spaces_is_refused_with_a_hint() -> None:
    # Copying the guide's web page gives continuation lines that start with U+00A0, not a space.
    text = GUIDE_EXPORT.replace("\n ", "\n\u00a0")
    e = error(text)
    assert (e.line, e.dn) == (4, USER1)
    assert "starts with a no-break space (U+00A0), but a continuation line must start with one ASCII space" in str(e)


# ---------------------------------------------------------------- reading: the format's corners


def test_version_line_may_be_followed_directly_by_a_record() -> None:
    assert records("version: 1\ndn: cn=a\ncn: a\n") == [AddRecord("cn=a", {"cn": ["a"]}, 2)]


def test_version_only_in_the_first_record_position() -> None:
    e = error("dn: cn=a\ncn: a\n\nversion: 1\n")
    assert (e.line, e.dn) == (4, None)
    assert str(e) == (
        "LDIF line 4: missing dn: the record starts with 'version:'; expected 'dn: <distinguished name>' first"
    )


def test_unsupported_version() -> None:
    e = error("version: 2\n\ndn: cn=a\ncn: a\n")
    assert e.line == 1
    assert str(e) == "LDIF line 1: unsupported LDIF version '2'; expected 'version: 1'"


def test_comments_folded_comments_and_several_blank_lines() -> None:
    text = (
        "# export of\n"
        " a folded comment: dn: not a record\n"
        "\n\n\n"
        "dn: cn=a\n"
        "# a comment inside a record\n"
        "cn: a\n"
        "# another,\n"
        "  folded\n"
        "sn: b\n"
        "\n\n"
        "# trailing comment\n"
    )
    assert records(text) == [AddRecord("cn=a", {"cn": ["a"], "sn": ["b"]}, 6)]


def test_comment_between_folded_value_lines_continues_the_comment_not_the_value() -> None:
    assert records("dn: cn=a\ndescription: abc\n# note\n def\n") == [AddRecord("cn=a", {"description": ["abc"]}, 1)]


def test_continuation_keeps_spaces_after_the_first() -> None:
    assert records("dn: cn=a\ndescription: one\n  two\n\n") == [AddRecord("cn=a", {"description": ["one two"]}, 1)]


def test_folded_dn_and_folded_base64() -> None:
    b64 = base64.b64encode("é".encode() * 40).decode()
    text = "dn: cn=a,\n dc=example\ndescription:: " + b64[:30] + "\n " + b64[30:] + "\n"
    assert records(text) == [AddRecord("cn=a,dc=example", {"description": ["é" * 40]}, 1)]


def test_keywords_are_case_insensitive() -> None:
    text = "DN: cn=a\nChangeType: Modify\nADD: cn\ncn: b\n-\nRePlAcE: sn\nsn: c\n-\nDelete: mail\n-\n"
    assert records(text) == [
        ModifyRecord(
            "cn=a", [Change("add", "cn", ["b"]), Change("replace", "sn", ["c"]), Change("delete", "mail", [])], 1
        )
    ]


def test_value_lines_match_the_part_attribute_case_insensitively() -> None:
    assert records("dn: cn=a\nchangetype: modify\nreplace: homeMDB\nHOMEMDB: x\n-\n") == [
        ModifyRecord("cn=a", [Change("replace", "homeMDB", ["x"])], 1)
    ]


def test_dash_with_trailing_spaces_is_a_separator() -> None:
    assert records("dn: cn=a\nchangetype: modify\ndelete: mail\n-  \n") == [
        ModifyRecord("cn=a", [Change("delete", "mail", [])], 1)
    ]


def test_modify_record_with_no_parts() -> None:
    assert records("dn: cn=a\nchangetype: modify\n") == [ModifyRecord("cn=a", [], 1)]


def test_changetype_add_delete_moddn() -> None:
    text = (
        "dn: cn=a\nchangetype: add\nobjectClass: user\n\n"
        "dn: cn=b\nchangetype: delete\n\n"
        "dn: cn=c\nchangetype: moddn\nnewrdn:: Y249ZMOp\ndeleteoldrdn: 0\nnewsuperior:: b3U9w6k=\n"
    )
    assert records(text) == [
        AddRecord("cn=a", {"objectClass": ["user"]}, 1),
        DeleteRecord("cn=b", 5),
        ModRdnRecord("cn=c", "cn=dé", False, "ou=é", 8),
    ]


def test_record_with_only_a_dn_is_an_add_with_no_attributes() -> None:
    # LDIFDE exports such records when none of the -l attributes is set on the object.
    assert records("dn: cn=a\nchangetype: add\n\ndn: cn=b\n") == [AddRecord("cn=a", {}, 1), AddRecord("cn=b", {}, 4)]


def test_empty_values_and_empty_dn() -> None:
    assert records("dn:\ndescription:\ninfo::\n") == [AddRecord("", {"description": [""], "info": [""]}, 1)]


def test_value_keeps_trailing_spaces_and_inner_colons() -> None:
    assert records("dn: cn=a\ndescription:   a: b::c  \n") == [AddRecord("cn=a", {"description": ["a: b::c  "]}, 1)]


def test_base64_of_binary_attributes_is_bytes() -> None:
    guid = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0").bytes_le
    b64_guid = base64.b64encode(guid).decode()
    assert base64.b64encode('"pw"'.encode("utf-16-le")) == b"IgBwAHcAIgA="
    text = (
        "dn: cn=a\n"
        f"objectGUID:: {b64_guid}\n"
        "objectSid:: QUJDRA==\n"  # b"ABCD": valid UTF-8, still bytes, objectSid is binary
        f"msExchMailboxGUID:: {b64_guid}\n"
        "msExchMasterAccountSid:: QUJDRA==\n"
        "unicodePwd:: IgBwAHcAIgA=\n"
        "UserPassword:: QUJDRA==\n"
        "userCertificate;binary:: QUJDRA==\n"
        "description:: QUJDRA==\n"
        "info:: //4=\n"
    )
    assert records(text) == [
        AddRecord(
            "cn=a",
            {
                "objectGUID": [guid],
                "objectSid": [b"ABCD"],
                "msExchMailboxGUID": [guid],
                "msExchMasterAccountSid": [b"ABCD"],
                "unicodePwd": ['"pw"'.encode("utf-16-le")],
                "UserPassword": [b"ABCD"],
                "userCertificate;binary": [b"ABCD"],
                "description": ["ABCD"],  # text attribute, valid UTF-8: str
                "info": [b"\xff\xfe"],  # text attribute, not UTF-8: bytes
            },
            1,
        )
    ]


def test_is_binary_attribute() -> None:
    assert ldif.is_binary_attribute("objectGUID")
    assert ldif.is_binary_attribute("OBJECTSID")
    assert ldif.is_binary_attribute("jpegPhoto;BINARY")
    assert ldif.is_binary_attribute("userPassword;x-tag")
    assert not ldif.is_binary_attribute("homeMDB")
    assert not ldif.is_binary_attribute("binary")


def test_attribute_options_and_oids() -> None:
    assert records("dn: cn=a\ncn;lang-en: a\n1.2.840.113556.1.4.221: b\n") == [
        AddRecord("cn=a", {"cn;lang-en": ["a"], "1.2.840.113556.1.4.221": ["b"]}, 1)
    ]


def test_sources_str_textio_and_lines_without_terminators() -> None:
    text = "version: 1\r\n\r\ndn: cn=a\r\ncn: a\r\n b\r\n"
    expected = [AddRecord("cn=a", {"cn": ["ab"]}, 3)]
    assert records(text) == expected
    assert list(ldif.parse(io.StringIO(text, newline=""))) == expected
    assert list(ldif.parse(io.StringIO(text))) == expected
    assert list(ldif.parse(text.splitlines())) == expected
    assert list(ldif.parse(text.splitlines(keepends=True))) == expected
    assert list(ldif.parse(["version: 1\n\ndn: cn=a\n", "cn: a\n b"])) == expected


def test_parse_streams_one_record_at_a_time() -> None:
    consumed = 0

    def endless() -> Iterator[str]:
        nonlocal consumed
        n = 0
        while True:
            for line in (f"dn: cn=u{n}", f"cn: u{n}", ""):
                consumed += 1
                yield line
            n += 1

    it = ldif.parse(endless())
    assert next(it) == AddRecord("cn=u0", {"cn": ["u0"]}, 1)
    assert consumed == 3  # the record's lines and the blank line ending it, nothing more
    assert next(it) == AddRecord("cn=u1", {"cn": ["u1"]}, 4)
    assert consumed == 6


def test_parse_is_lazy_errors_come_when_iterated() -> None:
    it = ldif.parse(" bad\n")
    with pytest.raises(LdifError):
        next(it)


# ---------------------------------------------------------------- reading: malformed inputs


@pytest.mark.parametrize(
    ("text", "line", "dn", "words"),
    [
        pytest.param(
            "dn: cn=a\nchangetype: modify\nreplace: homeMTA\nhomeMTA: x\nhomeMDB: y\n-\n",
            5,
            "cn=a",
            "a value line for 'homeMDB' inside the 'replace: homeMTA' part (line 3); "
            "expected 'homeMTA: <value>' or '-'",
            id="value-for-another-attribute",
        ),
        pytest.param(
            "dn: cn=a\nchangetype: modify\nreplace: homeMTA\nhomeMTA: x\nreplace: homeMDB\nhomeMDB: y\n-\n",
            5,
            "cn=a",
            "a '-' line must end the 'replace: homeMTA' part before the next part starts",
            id="missing-dash-between-parts",
        ),
        pytest.param(
            "dn: cn=a\nchangetype: modify\nreplace: homeMTA\nhomeMTA: x\ndn: cn=b\n",
            5,
            "cn=a",
            "a value line for 'dn' inside the 'replace: homeMTA' part",
            id="dn-before-the-dash",
        ),
        pytest.param(
            "dn: cn=a\nchangetype: modify\nhomeMTA: x\n-\n",
            3,
            "cn=a",
            "expected 'add:', 'replace:' or 'delete:' and an attribute name to start a modify part, or a blank "
            "line to end the record; found 'homeMTA:'",
            id="value-without-part",
        ),
        pytest.param(
            "dn: cn=a\nchangetype: modify\ndn: cn=b\n", 3, "cn=a", "found 'dn:'", id="dn-right-after-changetype"
        ),
        pytest.param("dn: cn=a\nchangetype: modify\n-\n", 3, "cn=a", "'-' with no open part", id="stray-dash"),
        pytest.param(
            "dn: cn=a\nchangetype: modify\nreplace: bad name\n",
            3,
            "cn=a",
            "does not name an attribute",
            id="bad-part-attribute",
        ),
        pytest.param(
            "dn: cn=a\nchangetype: modify\nreplace:: aG9tZU1EQg==\n",
            3,
            "cn=a",
            "does not name an attribute",
            id="base64-part-attribute",
        ),
        pytest.param(
            "# header\n\ncn: a\nsn: b\n",
            3,
            None,
            "missing dn: the record starts with 'cn:'; expected 'dn: <distinguished name>' first",
            id="missing-dn",
        ),
        pytest.param("dn: cn=a\ncn: a\n\n\ncn: b\n", 5, None, "missing dn", id="missing-dn-in-second-record"),
        pytest.param(
            "dn: cn=a\nchangetype: rename\n",
            2,
            "cn=a",
            "unknown changetype 'rename'; expected add, modify, delete, modrdn or moddn",
            id="unknown-changetype",
        ),
        pytest.param(
            "dn: cn=a\ndescription:: aGVsbG8*\n",
            2,
            "cn=a",
            "the 'description::' value is not valid base64",
            id="bad-base64-character",
        ),
        pytest.param(
            "dn: cn=a\ncn: a\nobjectGUID:: EjRWeJq8\n 3vA\n",
            3,
            "cn=a",
            "the 'objectGUID::' value is not valid base64",
            id="bad-base64-padding-folded",
        ),
        pytest.param("dn:: ////\ncn: a\n", 1, None, "the dn is base64 of bytes that are not UTF-8", id="dn-not-utf8"),
        pytest.param("dn:: *\ncn: a\n", 1, None, "the 'dn::' value is not valid base64", id="dn-bad-base64"),
        pytest.param(
            " dn: cn=a\n",
            1,
            None,
            "continuation line (it starts with a space) but there is no previous line to continue",
            id="continuation-at-start",
        ),
        pytest.param(
            "dn: cn=a\ncn: a\n\n cn: b\n",
            4,
            None,
            "it follows a blank line or starts the file",
            id="continuation-after-blank-line",
        ),
        pytest.param("dn:< file:///etc/passwd\ncn: a\n", 1, None, "URLs are never loaded", id="dn-url"),
        pytest.param("dn: cn=a\njpegPhoto:<http://example.com/a.jpg\n", 2, "cn=a", "URLs are never loaded", id="url"),
        pytest.param("dn: cn=a\nthis line has no colon\n", 2, "cn=a", "the line has no ':'", id="no-colon"),
        pytest.param(
            "dn: cn=a\nfull name: x\n", 2, "cn=a", "'full name' is not an attribute description", id="bad-attribute"
        ),
        pytest.param(
            "dn: cn=a\ncn: a\ndn: cn=b\ncn: b\n",
            3,
            "cn=a",
            "a second 'dn:' line inside the record; expected a blank line between records",
            id="second-dn",
        ),
        pytest.param(
            "dn: cn=a\ncn: a\nchangetype: add\n",
            3,
            "cn=a",
            "'changetype:' must come right after the 'dn:' line",
            id="late-changetype",
        ),
        pytest.param(
            "dn: cn=a\nchangetype: delete\ncn: a\n",
            3,
            "cn=a",
            "unexpected line after 'changetype: delete'",
            id="delete-with-more",
        ),
        pytest.param(
            "dn: cn=a\nchangetype: modrdn\ndeleteoldrdn: 1\n",
            3,
            "cn=a",
            "the modrdn record has no 'newrdn:' line",
            id="modrdn-without-newrdn",
        ),
        pytest.param(
            "dn: cn=a\nchangetype: modrdn\nnewrdn: cn=b\n",
            3,
            "cn=a",
            "the modrdn record has no 'deleteoldrdn: 0' or 'deleteoldrdn: 1' line",
            id="modrdn-without-deleteoldrdn",
        ),
        pytest.param(
            "dn: cn=a\nchangetype: modrdn\nnewrdn: cn=b\ndeleteoldrdn: yes\n",
            4,
            "cn=a",
            "deleteoldrdn is 'yes'; expected 0 or 1",
            id="modrdn-bad-flag",
        ),
        pytest.param(
            "dn: cn=a\nchangetype: modrdn\nnewrdn: cn=b\nnewrdn: cn=c\ndeleteoldrdn: 1\n",
            4,
            "cn=a",
            "'newrdn:' appears twice",
            id="modrdn-twice",
        ),
        pytest.param(
            "dn: cn=a\nchangetype: modrdn\nnewrdn: cn=b\ndeleteoldrdn: 1\ncn: b\n",
            5,
            "cn=a",
            "unexpected 'cn:' in a modrdn record",
            id="modrdn-extra",
        ),
        pytest.param(
            "dn: cn=a\ncontrol: 1.2.840.113556.1.4.805 true\nchangetype: delete\n",
            2,
            "cn=a",
            "LDAP controls ('control:') are not supported",
            id="control",
        ),
        pytest.param(
            "dn: cn=a\nchangetype:: bW9kaWZ5\n",
            2,
            "cn=a",
            "'changetype:' takes a plain word, not base64 or a URL",
            id="base64-changetype",
        ),
    ],
)
def test_malformed(text: str, line: int, dn: str | None, words: str) -> None:
    e = error(text)
    assert (e.line, e.dn) == (line, dn)
    assert words in str(e)
    assert str(e).startswith(f"LDIF line {line}" + ("" if dn is None else f" (record dn: {dn!r})") + ": ")


def test_error_message_names_line_dn_problem_and_expectation() -> None:
    e = error("dn: CN=User1,CN=Users,DC=contoso,DC=com\nchangetype: modify\nreplace: homeMTA\nhomeMDB: x\n")
    assert issubclass(LdifError, ValueError)
    assert e.problem == (
        "a value line for 'homeMDB' inside the 'replace: homeMTA' part (line 3); expected 'homeMTA: <value>' or '-'"
    )
    assert str(e) == (
        "LDIF line 4 (record dn: 'CN=User1,CN=Users,DC=contoso,DC=com'): a value line for 'homeMDB' inside the "
        "'replace: homeMTA' part (line 3); expected 'homeMTA: <value>' or '-'"
    )


def test_error_line_numbers_count_crlf_bom_and_comment_lines() -> None:
    e = error("\ufeff# c\r\n folded\r\n\r\ndn: cn=a\r\nchangetype: bogus\r\n")
    assert e.line == 5


# ---------------------------------------------------------------- writing: the exact format


def test_write_entry_ldifde_export_format() -> None:
    assert entry_text(USER1, {"homeMTA": [SOURCE_MTA], "msExchHomeServerName": [SOURCE_SERVER]}) == (
        "dn: CN=User1,CN=Users,DC=contoso,DC=com\n"
        "changetype: add\n"
        "homeMTA: CN=Microsoft MTA,CN=Exchange1,CN=Servers,CN=AG1,CN=Administrative G\n"
        " roups,CN=Organization,CN=Microsoft Exchange,CN=Services,CN=Configuration,DC\n"
        " =contoso,DC=com\n"
        "msExchHomeServerName: /o=Organization/ou=AG1/cn=Configuration/cn=Servers/cn=\n"
        " Exchange1\n"
        "\n"
    )


def test_write_entry_without_changetype_is_a_content_record() -> None:
    text = entry_text("cn=a", {"cn": ["a", "b"]}, changetype_add=False)
    assert text == "dn: cn=a\ncn: a\ncn: b\n\n"
    assert records(text) == [AddRecord("cn=a", {"cn": ["a", "b"]}, 1)]


def test_fold_boundaries() -> None:
    for n in (76, 77, 76 + 75, 76 + 76):
        value = "x" * (n - len("cn: "))
        lines = entry_text("cn=a", {"cn": [value]}).split("\n")[2:-2]
        assert all(len(line) <= 76 for line in lines)
        assert "".join(line[1:] if i else line for i, line in enumerate(lines)) == "cn: " + value
        assert len(lines) == {76: 1, 77: 2, 151: 2, 152: 3}[n]


@pytest.mark.parametrize(
    ("value", "line"),
    [
        ("plain value", "description: plain value"),
        ("", "description:"),
        (" leading space", "description:: IGxlYWRpbmcgc3BhY2U="),
        (":colon", "description:: OmNvbG9u"),
        ("<angle", "description:: PGFuZ2xl"),
        ("trailing ", "description:: dHJhaWxpbmcg"),
        ("café", "description:: Y2Fmw6k="),
        ("a\rb", "description:: YQ1i"),
        ("a\nb", "description:: YQpi"),
        ("a\x00b", "description:: YQBi"),
        ("a\tb", "description:: YQli"),
        ("inner: colon < and # hash", "description: inner: colon < and # hash"),
        (b"ABC", "description:: QUJD"),
        (b"", "description::"),
    ],
)
def test_values_that_are_not_safe_strings_go_base64(value: Value, line: str) -> None:
    assert entry_text("cn=a", {"description": [value]}) == f"dn: cn=a\nchangetype: add\n{line}\n\n"


def test_unsafe_dn_goes_base64() -> None:
    assert entry_text("cn=é", {"cn": ["é"]}) == "dn:: Y249w6k=\nchangetype: add\ncn:: w6k=\n\n"
    assert entry_text("", {"cn": ["a"]}) == "dn:\nchangetype: add\ncn: a\n\n"


def test_write_modify_delete_modrdn() -> None:
    out = io.StringIO()
    ldif.write_modify(out, "cn=a", [Change("replace", "homeMDB", ["x"]), Change("delete", "mail", [])])
    ldif.write_delete(out, "cn=b")
    ldif.write_modrdn(out, "cn=c", "cn=d", True, "ou=é")
    ldif.write_modrdn(out, "cn=e", "cn=f", False)
    assert out.getvalue() == (
        "dn: cn=a\nchangetype: modify\nreplace: homeMDB\nhomeMDB: x\n-\ndelete: mail\n-\n\n"
        "dn: cn=b\nchangetype: delete\n\n"
        "dn: cn=c\nchangetype: modrdn\nnewrdn: cn=d\ndeleteoldrdn: 1\nnewsuperior:: b3U9w6k=\n\n"
        "dn: cn=e\nchangetype: modrdn\nnewrdn: cn=f\ndeleteoldrdn: 0\n\n"
    )
    assert records(out.getvalue()) == [
        ModifyRecord("cn=a", [Change("replace", "homeMDB", ["x"]), Change("delete", "mail", [])], 1),
        DeleteRecord("cn=b", 9),
        ModRdnRecord("cn=c", "cn=d", True, "ou=é", 12),
        ModRdnRecord("cn=e", "cn=f", False, None, 18),
    ]


def test_write_record_writes_back_every_record_of_rfc_example_6() -> None:
    parsed = records(RFC_EXAMPLE_6.replace("jpegphoto:< file:///usr/local/directory/photos/fiona.jpg\n", ""))
    out = io.StringIO()
    for rec in parsed:
        ldif.write_record(out, rec)
    assert [(type(r), r.dn) for r in records(out.getvalue())] == [(type(r), r.dn) for r in parsed]
    assert [_without_line(r) for r in records(out.getvalue())] == [_without_line(r) for r in parsed]


def _without_line(rec: Record) -> Record:
    return dataclasses.replace(rec, line=0)


@pytest.mark.parametrize(
    ("attrs", "words"),
    [
        ({"full name": ["x"]}, "is not an attribute description"),
        ({"cn": []}, "needs a non-empty sequence of values"),
        ({"cn": "abc"}, "needs a non-empty sequence of values"),
        ({"changetype": ["add"]}, "is an LDIF keyword"),
        ({"DN": ["cn=x"]}, "is an LDIF keyword"),
        ({"cn": ["\ud800"]}, "cannot be encoded as UTF-8"),
    ],
)
def test_write_entry_refuses_what_could_not_be_read_back(attrs: dict[str, list[Value]], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        entry_text("cn=a", attrs)


def test_write_refuses_wrong_types() -> None:
    with pytest.raises(TypeError):
        entry_text("cn=a", {"cn": [1]})  # type: ignore[list-item, unused-ignore]
    with pytest.raises(ValueError, match="unknown modify operation"):
        ldif.write_modify(io.StringIO(), "cn=a", [Change("increment", "x", [])])  # type: ignore[arg-type, unused-ignore]


def test_write_entry_with_no_attributes_is_written_as_ldifde_does() -> None:
    assert entry_text("cn=a", {}) == "dn: cn=a\nchangetype: add\n\n"
    assert records(entry_text("cn=a", {})) == [AddRecord("cn=a", {}, 1)]


# ---------------------------------------------------------------- round trips


def round_trip(dn: str, attrs: dict[str, list[Value]]) -> list[Record]:
    return records(entry_text(dn, attrs))


def test_round_trip_unicode_leading_spaces_binary_and_long_values() -> None:
    guid = uuid.UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0").bytes_le
    attrs: dict[str, list[Value]] = {
        "displayName": ["Jürgen Müller", "小笠原 ロドニー", "emoji 🙂"],
        "description": [" leading", "  two leading", "trailing ", ":colon", "<angle", "", "#hash"],
        "info": ["line one\r\nline two\n", "tab\there", "nul\x00byte"],
        "objectGUID": [guid],
        "msExchMailboxGUID": [bytes(16)],
        "objectSid": [bytes(range(256))],
        "notes": ["x" * 100_000, "é" * 10_000],
        "jpegPhoto": [b"\xff\xd8\xff" + bytes(range(256)) * 40],
    }
    text = entry_text(" CN=Jürgen, DC=contoso ", attrs)
    assert all(len(line) <= 76 and line.isascii() for line in text.split("\n"))
    assert records(text) == [AddRecord(" CN=Jürgen, DC=contoso ", attrs, 1)]


def test_round_trip_non_canonical_types_keep_their_octets() -> None:
    # A str on a binary attribute needing base64 comes back as its UTF-8 bytes; UTF-8 bytes on a
    # text attribute come back as str. Same octets, the canonical type.
    assert round_trip("cn=a", {"objectGUID": ["é"], "cn": [b"abc"]}) == [
        AddRecord("cn=a", {"objectGUID": ["é".encode()], "cn": ["abc"]}, 1)
    ]


ATTR_NAMES = st.one_of(
    st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}(;[A-Za-z0-9-]{1,8}){0,2}", fullmatch=True),
    st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,5}){0,6}", fullmatch=True),
    st.sampled_from(
        ["objectGUID", "objectSid", "msExchMailboxGUID", "msExchMasterAccountSid", "unicodePwd", "userPassword"]
    ),
    st.sampled_from(["userCertificate;binary", "homeMDB", "homeMTA", "msExchHomeServerName", "cn;lang-ja"]),
).filter(lambda a: a.lower() not in {"dn", "changetype", "control"})

NOT_UTF8 = st.binary().map(lambda b: b + b"\xff")  # 0xFF never occurs in UTF-8


def canonical_values(attr: str) -> st.SearchStrategy[Value]:
    if ldif.is_binary_attribute(attr):
        return st.binary()
    return st.one_of(st.text(), NOT_UTF8)


@st.composite
def entries(draw: st.DrawFn) -> tuple[str, dict[str, list[Value]]]:
    dn = draw(st.text())
    names = draw(st.lists(ATTR_NAMES, max_size=6, unique=True))
    attrs = {name: draw(st.lists(canonical_values(name), min_size=1, max_size=4)) for name in names}
    return dn, attrs


@settings(max_examples=300, deadline=None)
@given(entries(), st.booleans())
def test_property_write_then_parse_gives_the_same_entry(entry: tuple[str, dict[str, list[Value]]], add: bool) -> None:
    dn, attrs = entry
    text = entry_text(dn, attrs, changetype_add=add)
    assert all(len(line) <= 76 and line.isascii() for line in text.split("\n"))
    assert records(text) == [AddRecord(dn, attrs, 1)]


@settings(max_examples=100, deadline=None)
@given(st.lists(entries(), max_size=5))
def test_property_many_entries_stream_back_in_order(many: list[tuple[str, dict[str, list[Value]]]]) -> None:
    out = io.StringIO()
    for dn, attrs in many:
        ldif.write_entry(out, dn, attrs)
    lines = out.getvalue().split("\n")
    parsed = list(ldif.parse(lines))
    assert [(r.dn, r.attrs) for r in parsed if isinstance(r, AddRecord)] == many
    assert all(lines[r.line - 1].startswith("dn:") for r in parsed)


@st.composite
def changes(draw: st.DrawFn) -> Change:
    attr = draw(ATTR_NAMES)
    ops: list[Op] = ["add", "replace", "delete"]
    op = draw(st.sampled_from(ops))
    return Change(op, attr, draw(st.lists(canonical_values(attr), max_size=3)))


@settings(max_examples=200, deadline=None)
@given(st.text(), st.lists(changes(), max_size=5))
def test_property_write_modify_then_parse(dn: str, parts: list[Change]) -> None:
    out = io.StringIO()
    ldif.write_modify(out, dn, parts)
    assert records(out.getvalue()) == [ModifyRecord(dn, parts, 1)]


def octets(value: Value) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


@settings(max_examples=200, deadline=None)
@given(st.text(), st.dictionaries(ATTR_NAMES, st.lists(st.one_of(st.text(), st.binary()), min_size=1, max_size=3)))
def test_property_any_str_or_bytes_keeps_its_octets(dn: str, attrs: dict[str, list[Value]]) -> None:
    (rec,) = round_trip(dn, attrs)
    assert isinstance(rec, AddRecord)
    assert rec.dn == dn
    assert {a: [octets(v) for v in vs] for a, vs in rec.attrs.items()} == {
        a: [octets(v) for v in vs] for a, vs in attrs.items()
    }


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("dn:cx -#\n\r <=ab\ufeff\u00a0")) | st.characters(), max_size=200))
def test_property_parse_raises_nothing_but_ldif_error(text: str) -> None:
    try:
        list(ldif.parse(text))
    except LdifError as e:
        assert e.line >= 1
