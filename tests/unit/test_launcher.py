"""idp.launcher without Flask: who sees which tile, in which order, filtered; where an OIDC tile opens."""

from idp.launcher import Entry, assigned_to, oidc_url, tiles, usable_by


def e(slug, groups=None, pos=None, **kw):
    return Entry("oidc", slug, slug.title(), groups, position=pos, **kw)


def test_assignment_visibility_launchable_and_order():
    apps = [e("zeta", pos=1), e("alpha", ("eng",), pos=0), e("api-only"), e("hidden", show_in_launcher=False, pos=2),
            e("native", launchable=False, pos=3), e("sales", ("sales",), pos=4)]
    assert [t.slug for t in tiles(apps, {"eng"})] == ["alpha", "zeta", "api-only"]
    assert [t.slug for t in tiles(apps, set())] == ["zeta", "api-only"]
    assert [t.slug for t in tiles(apps, None)] == ["zeta", "api-only"]  # groups unknown: only apps for everyone
    assert [t.slug for t in tiles(apps, {"eng"}, "  ZET ")] == ["zeta"]


def test_why_and_group_pages():
    apps = [e("wiki", ("eng", "ops")), e("chat")]
    assert [(a.slug, why) for a, why in usable_by(apps, {"eng"})] == [("chat", "everyone"), ("wiki", "via eng")]
    assert [a.slug for a in assigned_to(apps, "ops")] == ["wiki"]
    assert e("wiki").initial == "W" and Entry("oidc", "x", "", None).initial == "X"


def test_oidc_url():
    iss = "https://id.example/w/acme"
    assert oidc_url("https://app.example/login", [], iss) == "https://app.example/login?iss=https%3A%2F%2Fid.example%2Fw%2Facme"
    assert oidc_url("https://app.example/login?x=1", [], iss).startswith("https://app.example/login?x=1&iss=")
    assert oidc_url(None, ["com.example.app:/cb", "https://app.example/auth/cb"], iss) == "https://app.example/"
    assert oidc_url(None, ["com.example.app:/cb"], iss) is None
