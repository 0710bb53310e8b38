"""The SCIM filter parser and its translation to SQL: precedence, bounds, escaping, bound parameters only."""

from __future__ import annotations

import pytest
from sqlalchemy import false, select, true
from sqlalchemy.dialects import postgresql, sqlite

from idp.models import User
from scim.errors import InvalidFilter, InvalidPath
from scim.filters import (
    MAX_COMPARISONS,
    Compare,
    Logic,
    Not,
    ValuePath,
    compare_constant,
    escape_like,
    matches,
    parse_filter,
    parse_patch_path,
)
from scim.schemas import GROUP, USER
from scim.service import ScimService, describe_size


def translate(text: str, rt=USER):
    svc = ScimService(hub=None)
    tr = svc._translator(rt, None)
    return tr.condition(parse_filter(text))


def sql(cond, dialect=postgresql.dialect()) -> str:
    return str(select(User.id).where(cond).compile(dialect=dialect))


def test_and_binds_tighter_than_or():
    node = parse_filter('title pr or userName eq "a" and active eq true')
    assert isinstance(node, Logic) and node.op == "or"
    assert isinstance(node.items[1], Logic) and node.items[1].op == "and"


def test_not_grouping_and_value_paths():
    node = parse_filter('not (userName eq "a") and emails[type eq "work" and value co "x"]')
    assert isinstance(node.items[0], Not)
    vp = node.items[1]
    assert isinstance(vp, ValuePath) and vp.path.attr == "emails" and vp.expr.op == "and"


def test_keywords_case_insensitive_and_json_strings():
    node = parse_filter('userName EQ "a\\"b" AND active Eq True')
    assert node.items[0] == Compare(node.items[0].path, "eq", 'a"b')
    assert node.items[1].value is True


@pytest.mark.parametrize("text", [
    "", "   ", 'userName eq "x" or 1=1', "userName eq 'x'", 'userName ~ "x"', 'userName eq "x" junk',
    "(" * 9 + 'userName eq "x"' + ")" * 9,
    " and ".join(['userName eq "x"'] * (MAX_COMPARISONS + 1)),
    "a" * 3000, 'emails[value[type eq "x"]]', 'emails.value[type eq "x"]', 'userName eq "\x00"',
])
def test_refused(text):
    with pytest.raises(InvalidFilter):
        parse_filter(text)


def test_deep_nesting_is_refused_without_recursion_error():
    with pytest.raises(InvalidFilter):
        parse_filter("(" * 5000 + 'userName eq "x"' + ")" * 5000)
    with pytest.raises(InvalidFilter):
        parse_filter("not (" * 100 + 'userName eq "x"' + ")" * 100)


@pytest.mark.parametrize("text", ['foo eq "x"', 'password eq "x"', "password pr", 'name eq "x"',
                                  'urn:x:y:userName eq "x"', 'groups.nope eq "x"', 'active co "t"',
                                  'meta.created gt "not a date"', 'userName eq true'])
def test_unknown_or_forbidden_attributes_are_invalid_filter(text):
    with pytest.raises(InvalidFilter):
        translate(text)


def test_values_are_bound_parameters_never_sql():
    evil = "x' OR '1'='1"
    for text in (f'userName eq "{evil}"', f'title co "{evil}"', f'emails[value sw "{evil}"]'):
        compiled = sql(translate(text))
        assert "1'='1" not in compiled and "%(" in compiled


def test_like_patterns_escaped():
    assert escape_like("100%_a\\b") == "100\\%\\_a\\\\b"
    compiled = select(User.id).where(translate('displayName co "50%_off"')).compile(dialect=sqlite.dialect())
    assert "ESCAPE" in str(compiled)
    assert "%50\\%\\_off%" in compiled.params.values()


def test_user_name_compared_folded():
    compiled = select(User.id).where(translate('userName eq "ＡLICE@Acme.Test"')).compile(dialect=sqlite.dialect())
    assert "alice@acme.test" in compiled.params.values()


def test_patch_paths():
    p = parse_patch_path('emails[type eq "work"].value')
    assert p.attr == "emails" and p.filter_sub == "value" and isinstance(p.value_filter, Compare)
    p = parse_patch_path("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value")
    assert p.uri.endswith("enterprise:2.0:User") and p.attr == "manager" and p.sub == "value"
    for bad in ("", "emails[type eq", 'emails[type eq "x"]junk', "a.b.c", 'emails[type eq "x"].a.b'):
        with pytest.raises(InvalidPath):
            parse_patch_path(bad)


def test_in_memory_matching_of_value_filters():
    emails = USER.attr("emails")
    node = parse_patch_path('emails[type eq "WORK" and not (primary eq true)]').value_filter
    assert matches(node, {"type": "work", "value": "a"}, emails)
    assert not matches(node, {"type": "work", "primary": True}, emails)
    assert not matches(node, {"type": "home"}, emails)


@pytest.mark.parametrize("literal", ["\\u0000", "a\\u0000b", "\\u0001", "\\u001f", "\\u007f", "\\ud800", "\\udfff",
                                     "\\u000b"])
def test_string_values_with_characters_no_attribute_holds_are_refused(literal):
    for text in (f'userName eq "{literal}"', f'title co "x{literal}"', f'emails[value eq "{literal}"]'):
        with pytest.raises(InvalidFilter, match="control characters"):
            parse_filter(text)
    with pytest.raises(InvalidPath):
        parse_patch_path(f'emails[value eq "{literal}"].type')


def test_tab_line_feed_and_non_ascii_are_fine():
    node = parse_filter('title eq "a\\tb\\nc\\r" and displayName eq "\\u00e9\\ud83d\\ude00"')
    assert node.items[0].value == "a\tb\nc\r" and node.items[1].value == "\u00e9\U0001f600"


def test_case_exact_substrings_compare_code_points():
    """LIKE ignores ASCII case on SQLite: a case-exact attribute's co/sw/ew also checks the exact substring."""
    for text, fn in (('externalId co "Ab"', "replace("), ('externalId sw "Ab"', "substr("),
                     ('externalId ew "Ab"', "substr(")):
        compiled = sql(translate(text), sqlite.dialect())
        assert "LIKE" in compiled and fn in compiled, text
    assert "replace(" not in sql(translate('title co "Ab"'), sqlite.dialect())  # compared lower-cased
    assert "replace(" not in sql(translate('externalId co ""'), sqlite.dialect())


def test_constant_comparisons():
    assert compare_constant("User", "eq", "user") is true()
    assert compare_constant("User", "eq", "Group") is false()
    assert compare_constant("User", "eq", "user", case_exact=True) is false()
    assert compare_constant("User", "ne", "Group") is true()
    assert compare_constant("User", "sw", "us") is true()
    assert compare_constant("User", "pr", None) is true()
    assert compare_constant("User", "eq", None) is false()
    with pytest.raises(InvalidFilter):
        compare_constant("User", "eq", True)


def test_relations_complex_presence_and_meta_translate():
    # one EXISTS per value filter: both comparisons apply to the same membership
    assert sql(translate('groups[value eq "g" and display eq "x"]')).count("EXISTS") == 1
    assert sql(translate('members[value eq "u" and display eq "x" and type eq "User"]', GROUP)).count("EXISTS") == 1
    assert "given_name" in sql(translate("name pr")) and "scim_values" in sql(translate("name pr"))
    assert "EXISTS" in sql(translate("addresses pr"))
    assert sql(translate('meta.resourceType eq "User"')).endswith("WHERE true")  # decided without a column
    assert sql(translate('meta.resourceType eq "Group"')).endswith("WHERE false")
    translate("meta.version pr")
    for text, rt in (('meta.version eq "x"', USER), ('meta.version eq "x"', GROUP), ('groups[nope eq "x"]', USER),
                     ('members[nope eq "x"]', GROUP), ('groups[display[value eq "x"]]', USER), ('meta eq "x"', USER),
                     ('name co "x"', USER)):
        with pytest.raises(InvalidFilter):
            translate(text, rt)


def test_sizes_are_described_exactly():
    assert [describe_size(n) for n in (1024 * 1024, 256 * 1024, 5000, 4096)] == [
        "1 MiB", "256 KiB", "5000 bytes", "4 KiB"]
