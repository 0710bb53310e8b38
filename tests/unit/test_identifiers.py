"""E-mail addresses (also SCIM userNames) as account identifiers: look-alikes made with invisible, control, bidi
or space characters, or with stray dots, are refused; one normalisation (NFKC + case folding) makes the key."""

from __future__ import annotations

import pytest

from idp.accounts import InvalidEmail, clean_email, identifier_problem, invisible_characters, normalise_email

INVISIBLE = "Email addresses cannot contain invisible or control characters."

# One sample from each range of the Unicode Default_Ignorable_Code_Point set (first and last where they differ).
DEFAULT_IGNORABLE = [
    "\u00ad", "\u034f", "\u061c", "\u115f", "\u1160", "\u17b4", "\u17b5", "\u180b", "\u180e", "\u180f",
    "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202e", "\u2060", "\u2064", "\u2065",
    "\u206f", "\u3164", "\ufe00", "\ufe0f", "\ufeff", "\uffa0", "\ufff0", "\ufff8", "\U0001bca0",
    "\U0001bca3", "\U0001d173", "\U0001d17a", "\U000e0000", "\U000e0001", "\U000e0041", "\U000e007f",
    "\U000e0100", "\U000e01ef", "\U000e0fff",
]
CONTROL = ["\x00", "\x01", "\x07", "\x1b", "\x7f", "\x85", "\x9f"]  # Cc (tab/CR/LF only trimmed at the ends)
FORMAT = ["\u0600", "\u06dd", "\U000110bd", "\U0001d173", "\ufff9", "\ufffb"]  # Cf
BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e",
        "\u200f", "\u061c"]
OTHER = ["\ue000", "\U000f0000", "\ud800", "\udfff", "\u0378", "\ufffe", "\uffff", "\ufdd0", "\u2028",
         "\u2029", "\u2800"]  # private use, surrogates, unassigned and noncharacters, separators, Braille blank
SPACES = ["\u00a0", "\u3000", "\u2000", "\u2007", "\u200a", "\u202f", "\u205f", "\u1680", " "]


@pytest.mark.parametrize("ch", DEFAULT_IGNORABLE + CONTROL + FORMAT + BIDI + OTHER,
                         ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("where", ["al{}ice@acme.test", "alice@ac{}me.test", "{}alice@acme.test",
                                   "alice@acme.test{}", "alice{}@acme.test", "alice@{}acme.test"])
def test_invisible_and_control_characters_are_refused(ch, where):
    address = where.format(ch)
    with pytest.raises(InvalidEmail) as err:
        normalise_email(address)
    assert str(err.value) == INVISIBLE
    with pytest.raises(InvalidEmail):
        clean_email(address)
    assert invisible_characters(address)


@pytest.mark.parametrize("ch", SPACES, ids=lambda c: f"U+{ord(c):04X}")
def test_spaces_inside_an_address_are_refused(ch):
    for address in (f"al{ch}ice@acme.test", f"alice@acme{ch}.test", f"alice@acme.test{ch}x"):
        with pytest.raises(InvalidEmail) as err:
            normalise_email(address)
        assert str(err.value) == "Email addresses cannot contain spaces."


@pytest.mark.parametrize("ch", ["\u00a0", "\u3000", "\u1680", "\u2028", "\x1f"], ids=lambda c: f"U+{ord(c):04X}")
def test_only_ordinary_whitespace_is_trimmed(ch):
    assert normalise_email("  alice@acme.test\t\r\n") == "alice@acme.test"
    with pytest.raises(InvalidEmail):
        normalise_email(f"alice@acme.test{ch}")
    with pytest.raises(InvalidEmail):
        normalise_email(f"{ch}alice@acme.test")


@pytest.mark.parametrize("address,message", [
    ("alice@acme.test.", "Email addresses cannot end with a dot."),
    ("alice@acme.", "Email addresses cannot end with a dot."),
    ("alice@acme.test\uff0e", "Email addresses cannot end with a dot."),  # full-width full stop: NFKC makes "."
    ("alice@acme.test\u2024", "Email addresses cannot end with a dot."),  # one dot leader
    (".alice@acme.test", "Email addresses cannot start with a dot."),
    ("alice.@acme.test", "The part before the @ cannot end with a dot."),
    ("alice@.acme.test", "The part after the @ cannot start with a dot."),
    ("alice@acme..test", "Email addresses cannot contain two dots in a row."),
    ("al..ice@acme.test", "Email addresses cannot contain two dots in a row."),
    ("alice@acme.\uff0etest", "Email addresses cannot contain two dots in a row."),
])
def test_stray_dots_are_refused(address, message):
    with pytest.raises(InvalidEmail) as err:
        normalise_email(address)
    assert str(err.value) == message


@pytest.mark.parametrize("address", ["", "alice", "alice@", "@acme.test", "alice@acme", "a@b@acme.test",
                                     "alice@acme.test" + "x" * 250, None, 42])
def test_malformed_addresses_get_the_general_message(address):
    with pytest.raises(InvalidEmail) as err:
        normalise_email(address)
    assert str(err.value) == "Enter a valid email address."


@pytest.mark.parametrize("address,key", [
    ("alice@acme.test", "alice@acme.test"),
    ("ALICE@ACME.TEST", "alice@acme.test"),
    ("Alice.Example+tag@Acme.Test", "alice.example+tag@acme.test"),
    ("josé@exämple.com", "josé@exämple.com"),
    ("JOSÉ@EXÄMPLE.COM", "josé@exämple.com"),
    ("jose\u0301@exa\u0308mple.com", "josé@exämple.com"),  # combining accents compose (NFKC)
    ("\uff41\uff4c\uff49\uff43\uff45@acme.test", "alice@acme.test"),  # full-width letters
    ("ＡＬＩＣＥ＠ＡＣＭＥ．ＴＥＳＴ", "alice@acme.test"),
    ("straße@acme.test", "strasse@acme.test"),
    ("Ωμέγα@παράδειγμα.ελ", "ωμέγα@παράδειγμα.ελ"),
    ("用户@例子.广告", "用户@例子.广告"),
    ("d\u00e9j\u00e0-vu@acme.test", "déjà-vu@acme.test"),
])
def test_international_addresses_are_accepted_with_one_key(address, key):
    assert normalise_email(address) == key
    cleaned = clean_email(address)
    assert normalise_email(cleaned) == key
    assert not invisible_characters(address)
    assert identifier_problem(address) is None


def test_same_key_for_case_and_width_variants():
    assert normalise_email("ALICE@EXAMPLE.COM") == normalise_email("alice@example.com")
    assert normalise_email("\uff21lice@example.com") == normalise_email("alice@example.com")
    assert clean_email("  Alice@Example.com ") == "Alice@Example.com"  # the display form keeps its case


def test_identifier_problem_is_reusable_for_other_identifiers():
    assert identifier_problem("okta-user-1") is None
    assert identifier_problem("user\u200bname", "User names") == \
        "User names cannot contain invisible or control characters."
    assert identifier_problem("user name", "User names") == "User names cannot contain spaces."
    assert identifier_problem("user\ufe0fname") is not None
    assert identifier_problem("user\uffa0") is not None  # NFKC makes U+1160 (a Hangul filler)
    assert not invisible_characters("plain text with spaces")
    assert invisible_characters("text\u2066")


# ---- usernames (SCIM userNames that are not addresses) ------------------------------------------------------------
def test_usernames_follow_the_address_rules_for_what_cannot_be_seen():
    from idp.accounts import identifier_key, parse_username
    from idp.flow import identify

    assert parse_username("  E-10442\t") == ("E-10442", "e-10442")
    assert parse_username("\uff2a\uff24\uff2f\uff25") == ("JDOE", "jdoe")  # fullwidth: NFKC, one account
    for hostile in ("j doe", "jdoe\u200b", "\u202ejdoe", "jdoe\x00", "\u2800", "", "x" * 255):
        with pytest.raises(InvalidEmail):
            parse_username(hostile)
    with pytest.raises(InvalidEmail, match="cannot end with a dot"):
        parse_username("alice@acme.test.")  # with an @: an address's rules
    assert identifier_key("Alice@Acme.test") == "alice@acme.test" and identifier_key("JDoe") == "jdoe"
    assert identifier_key("j doe") is None
    assert identify("jdoe") == (None, "jdoe")
    assert identify("alice@acme..test")[0] == "Email addresses cannot contain two dots in a row."
