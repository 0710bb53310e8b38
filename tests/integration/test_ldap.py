"""LDAP connections against a real OpenLDAP slapd: bind authentication, escaped filters, groups, TLS."""

import pytest

from federation import ldap
from federation.base import UpstreamError
from tests.helpers.slapd import PASSWORDS, SUFFIX, Slapd


@pytest.fixture(scope="module")
def slapd():
    server = Slapd(tls=True).start()
    yield server
    server.stop()


def refused(conn, username, password, check="bind"):
    with pytest.raises(UpstreamError) as e:
        ldap.authenticate(conn, username, password)
    assert e.value.check == check, (e.value.check, e.value.message)
    return e.value


def test_good_password(slapd):
    ident = ldap.authenticate(slapd.conn(), "ada", PASSWORDS["ada"])
    assert ident.email == "ada@acme.test" and ident.name == "Ada Lovelace"
    assert (ident.given_name, ident.family_name) == ("Ada", "Lovelace")
    assert len(ident.subject) == 36 and ident.subject.count("-") == 4  # entryUUID, not the DN or the email
    assert set(ident.groups) == {"engineers", "admins"}  # from memberOf (the memberof overlay)
    assert ident.claims["dn"] == f"uid=ada,ou=people,{SUFFIX}" and ident.mfa is False


def test_subject_is_stable(slapd):
    a = ldap.authenticate(slapd.conn(), "ada", PASSWORDS["ada"]).subject
    b = ldap.authenticate(slapd.conn(), "ada", PASSWORDS["ada"]).subject
    c = ldap.authenticate(slapd.conn(), "bob", PASSWORDS["bob"]).subject
    assert a == b != c


def test_group_search_base(slapd):
    conn = slapd.conn(group_search_base=f"ou=groups,{SUFFIX}")
    assert ldap.authenticate(conn, "bob", PASSWORDS["bob"]).groups == ("admins",)


def test_wrong_password(slapd):
    refused(slapd.conn(), "ada", PASSWORDS["bob"])
    refused(slapd.conn(), "ada", PASSWORDS["ada"] + " ")


def test_empty_password_refused_before_contacting_the_server(slapd):
    # an empty simple bind is an anonymous bind that "succeeds"; the module must never send it
    down = slapd.conn(url="ldap://127.0.0.1:1")  # nothing listens: a network attempt would be "unavailable"
    for pw in ("", None):
        err = refused(down, "ada", pw)
        assert "empty" in err.message
    refused(slapd.conn(), "ada", "")


def test_entry_without_password(slapd):
    refused(slapd.conn(), "nopass", "anything at all")


def test_unknown_user_looks_like_wrong_password(slapd):
    err = refused(slapd.conn(), "nobody", "whatever-password")
    assert err.hint == ldap.HINTS["bind"]


@pytest.mark.parametrize("username", ["*", "a*", "*)(uid=*", ")(uid=*", "ada)(|(uid=*", "ada)(objectClass=*",
                                      "*)(|(objectClass=*", "\\2a", "ada\x00", "\x00", "ada\n", " ada", "x" * 300])
def test_injection_in_username(slapd, username):
    # every one of these would match ada (or everyone) if put into the filter unescaped
    refused(slapd.conn(), username, PASSWORDS["ada"])


def test_wildcard_cannot_pick_another_user(slapd):
    # "st*" would match "star" unescaped; the password of star must not sign in a user named "st*"
    refused(slapd.conn(), "st*", PASSWORDS["star"])
    assert ldap.authenticate(slapd.conn(), "star", PASSWORDS["star"]).email == "star@acme.test"


def test_ambiguous_filter_refused(slapd):
    # a filter that matches several entries is refused rather than picking one
    conn = slapd.conn(user_filter="(|(uid={username})(objectClass=inetOrgPerson))")
    refused(conn, "ada", PASSWORDS["ada"])


def test_bad_user_filter_is_config_error(slapd):
    refused(slapd.conn(user_filter="(uid=ada)"), "ada", PASSWORDS["ada"], check="config")


def test_server_down_is_unavailable(slapd):
    refused(slapd.conn(url="ldap://127.0.0.1:1"), "ada", PASSWORDS["ada"], check="unavailable")


def test_wrong_service_password(slapd):
    refused(slapd.conn(bind_password="wrong"), "ada", PASSWORDS["ada"], check="service_bind")


def test_start_tls_with_ca(slapd):
    conn = slapd.conn(start_tls=True, ca_file=slapd.ca_file)
    assert ldap.authenticate(conn, "ada", PASSWORDS["ada"]).email == "ada@acme.test"


def test_start_tls_without_trusted_ca_is_unavailable(slapd):
    # the server's certificate is from a test CA the system store does not know: fail closed
    refused(slapd.conn(start_tls=True), "ada", PASSWORDS["ada"], check="unavailable")


def test_ldaps_with_ca(slapd):
    conn = slapd.conn(url=slapd.ldaps_url, ca_file=slapd.ca_file)
    assert ldap.authenticate(conn, "ada", PASSWORDS["ada"]).email == "ada@acme.test"
    refused(slapd.conn(url=slapd.ldaps_url), "ada", PASSWORDS["ada"], check="unavailable")  # untrusted CA
    refused(slapd.conn(url=slapd.ldaps_url, start_tls=True, ca_file=slapd.ca_file), "ada", PASSWORDS["ada"],
            check="config")


def test_attribute_map(slapd):
    conn = slapd.conn(attribute_map={"uid": "email", "cn": "name"})
    ident = ldap.authenticate(conn, "ada", PASSWORDS["ada"])
    assert ident.email == "" and ident.name == "Ada Lovelace"  # uid is no address: never guessed
    conn = slapd.conn(attribute_map={"uid": "subject"})
    assert ldap.authenticate(conn, "ada", PASSWORDS["ada"]).subject == "ada"


def test_test_connection(slapd):
    checks = ldap.test_connection(slapd.conn(group_search_base=f"ou=groups,{SUFFIX}", start_tls=True,
                                             ca_file=slapd.ca_file))
    assert [c[0] for c in checks] == ["config", "connect", "service_bind", "user_search_base", "group_search_base",
                                      "user_filter"]
    assert all(ok for _, ok, _ in checks)
    assert "StartTLS" in checks[1][2]
    bad = ldap.test_connection(slapd.conn(bind_password="wrong"))
    assert bad[-1][:2] == ("service_bind", False)
    down = ldap.test_connection(slapd.conn(url="ldap://127.0.0.1:1"))
    assert down[-1][:2] == ("unavailable", False)
    missing = ldap.test_connection(slapd.conn(user_search_base=f"ou=nowhere,{SUFFIX}"))
    assert ("user_search_base", False) in [c[:2] for c in missing]


def test_server_that_never_answers_is_unavailable(slapd):
    import socket

    with socket.socket() as s:  # accepts TCP connections (backlog) but never speaks LDAP
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        refused(slapd.conn(url=f"ldap://127.0.0.1:{port}", timeout=1), "ada", PASSWORDS["ada"], check="unavailable")
