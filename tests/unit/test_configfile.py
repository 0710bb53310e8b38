import copy

import pytest
from sqlalchemy import func, select

from idp.configfile import ConfigError, apply, validate
from idp.db import make_engine, make_sessionmaker
from idp.models import Group, GroupMember, User, Workspace
from idp.schema import upgrade
from tests.conftest import BASE_CONFIG, fast_hasher


def errors_of(doc) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        validate(doc)
    return exc.value.errors


def test_contract_example_paths_are_named():
    doc = copy.deepcopy(BASE_CONFIG)
    ws = doc["workspaces"][0]
    ws["apps"] = [
        {"slug": "wiki", "name": "Wiki", "protocol": "oidc", "client_id": "wiki",
         "redirect_uris": ["http://127.0.0.1:8081/callback"]},
        {"slug": "crm", "name": "CRM", "protocol": "oidc", "client_id": "crm", "redirect_uris": ["/relative"]},
    ]
    assert errors_of(doc) == ["workspaces[0].apps[1].redirect_uris[0]: not an absolute URL"]


def test_every_error_is_reported_at_once():
    doc = {"workspaces": [{
        "slug": "Bad Slug", "name": "x", "plan": "gold", "domains": ["not a domain"],
        "policies": {"require_mfa": "yes", "mfa_methods": ["carrier-pigeon"],
                     "ip_allowlist": ["10.0.0.1/8", "0.0.0.0/0", "nonsense"],
                     "session_idle_timeout": "forever"},
        "groups": [{"name": "eng"}],
        "users": [{"email": "not-an-email", "password": "password", "role": "root", "groups": ["sales"]}],
        "surprise": 1,
    }]}
    errs = errors_of(doc)
    expected = [
        "workspaces[0].surprise: unknown key",
        "workspaces[0].slug: must match",
        "workspaces[0].plan: must be one of free, pro, enterprise",
        "workspaces[0].domains[0]: not a domain name",
        "workspaces[0].policies.require_mfa: must be true or false",
        "workspaces[0].policies.mfa_methods[0]: must be one of",
        "workspaces[0].policies.ip_allowlist[0]: has host bits set",
        "workspaces[0].policies.ip_allowlist[1]: over-broad",
        "workspaces[0].policies.ip_allowlist[2]: not a valid CIDR",
        "workspaces[0].policies.session_idle_timeout: must be a duration",
        "workspaces[0].users[0].email: not a valid email address",
        "workspaces[0].users[0].password: breaks a password rule",
        "workspaces[0].users[0].role: must be one of member, admin",
        "workspaces[0].users[0].groups[0]: unknown group 'sales'",
    ]
    for e in expected:
        assert any(x.startswith(e) for x in errs), (e, errs)


def test_ip_allowlist_needs_enterprise():
    doc = {"workspaces": [{"slug": "s", "name": "S", "plan": "pro", "policies": {"ip_allowlist": ["10.0.0.0/8"]}}]}
    assert errors_of(doc) == ["workspaces[0].policies.ip_allowlist: IP allowlisting needs the enterprise plan"]


def test_duplicate_emails_after_normalisation():
    doc = {"workspaces": [{"slug": "s", "name": "S", "users": [{"email": "A@x.test"}, {"email": "a@X.TEST"}]}]}
    assert errors_of(doc) == ["workspaces[0].users[1].email: duplicate (addresses are compared case-insensitively)"]


@pytest.mark.parametrize("doc", [None, [], "text", {"workspaces": "x"}, {"workspaces": [None]}, {}])
def test_malformed_documents(doc):
    assert errors_of(doc)


def test_apply_is_idempotent_and_keeps_user_changed_passwords(tmp_path):
    url = f"sqlite:///{tmp_path}/c.db"
    upgrade(url)
    sm = make_sessionmaker(make_engine(url))
    hasher = fast_hasher()
    ws = validate(BASE_CONFIG)
    with sm() as db:
        apply(db, ws, hasher)
        db.commit()
    with sm() as db:
        alice = db.scalar(select(User).where(User.email == "alice@acme.test"))
        alice.password_hash = hasher.hash("Changed-By-Alice-1!")
        db.commit()
    with sm() as db:
        apply(db, ws, hasher)
        db.commit()
    with sm() as db:
        assert db.scalar(select(func.count()).select_from(Workspace)) == 2
        assert db.scalar(select(func.count()).select_from(User)) == 3
        assert db.scalar(select(func.count()).select_from(Group)) == 1
        assert db.scalar(select(func.count()).select_from(GroupMember)) == 1
        alice = db.scalar(select(User).where(User.email == "alice@acme.test"))
        assert hasher.verify(alice.password_hash, "Changed-By-Alice-1!")


def test_scim_tokens_are_validated_and_applied(tmp_path, monkeypatch):
    from scim.models import ScimToken

    doc = copy.deepcopy(BASE_CONFIG)
    doc["workspaces"][0]["scim_tokens"] = [{"name": "workday", "token": "short"}]
    assert any(e.startswith("workspaces[0].scim_tokens[0].token: at least") for e in errors_of(doc))
    doc["workspaces"][1]["scim_tokens"] = [{"name": "okta", "token": "t" * 40}]
    assert "workspaces[1].scim_tokens: SCIM provisioning needs the enterprise plan" in errors_of(doc)
    monkeypatch.setenv("IDHUB_TEST_SCIM_TOKEN", "w" * 48)
    doc = copy.deepcopy(BASE_CONFIG)
    doc["workspaces"][0]["scim_tokens"] = [{"name": "workday", "token_env": "IDHUB_TEST_SCIM_TOKEN"}]
    url = f"sqlite:///{tmp_path}/t.db"
    upgrade(url)
    sm = make_sessionmaker(make_engine(url))
    with sm() as db:
        apply(db, validate(doc), fast_hasher())
        db.commit()
    with sm() as db:
        tokens = list(db.scalars(select(ScimToken)))
        assert [t.name for t in tokens] == ["workday"]
        assert all("w" * 48 not in str(v) for t in tokens for v in vars(t).values())  # stored hashed


def test_saml_apps_are_validated_with_the_other_errors():
    doc = copy.deepcopy(BASE_CONFIG)
    doc["workspaces"][0]["apps"] = [{"slug": "payroll", "name": "Payroll", "protocol": "saml",
                                     "metadata_xml": "<md:EntityDescriptor not xml"}]
    errs = errors_of(doc)
    assert errs and all(e.startswith("workspaces[0].apps[0]") for e in errs), errs
