"""Finishing a rotation of ``IDHUB_SECRET_KEY`` (``idhub secrets rotate``). Plain Python.

While ``IDHUB_SECRET_KEY_PREVIOUS`` lists the earlier keys, everything made with them keeps working (see
``idp.crypto``). ``rotate`` moves what is stored over to the current key, so that the earlier ones can be removed:

* every value sealed with ``SecretBox`` (authenticator-app secrets, OIDC and SAML private keys, upstream
  connections' client secrets and bind passwords, the retained keys themselves) is decrypted and encrypted again
  under the current key — in batches of ``batch`` rows, each committed on its own, walking each table in primary-key
  order; a value already under the current key is left alone, so a run that stops half-way is simply run again;
* the derived keys of ``RETAINED_PURPOSES`` (keyed hashes idhub cannot recompute: admin API tokens, backup codes;
  and the OIDC ``sid`` apps compare at logout) of every earlier key are stored sealed under the current one;
* a SAML workspace whose pairwise NameID salt was still derived from the secret key gets it stored.

A value that no listed key opens (made under a key nobody listed, or damaged) is counted as ``unreadable`` and left
as it is: the command never destroys what it cannot read. ``check`` counts without writing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select, update

from idp.crypto import RETAINED_BOX, RETAINED_PURPOSES, derive_key, key_id, secret_box, secret_keys

BATCH = 500


@dataclass
class Count:
    current: int = 0  # already under the current key
    previous: int = 0  # under an earlier key (check), or moved to the current one (rotate)
    unreadable: int = 0  # opened by no listed key


@dataclass
class Report:
    sealed: dict[str, Count] = field(default_factory=dict)
    retained_added: int = 0
    retained_missing: list[str] = field(default_factory=list)  # check: "<purpose>:<key id>" not stored yet
    nameid_salts: int = 0

    @property
    def pending(self) -> bool:
        """Something still needs an earlier key (or cannot be read at all)."""
        return (any(c.previous or c.unreadable for c in self.sealed.values()) or bool(self.retained_missing)
                or bool(self.nameid_salts))

    def lines(self, done: bool) -> list[str]:
        verb = "re-encrypted" if done else "under a previous key"
        out = [f"{name}: {c.current} under the current key, {c.previous} {verb}, {c.unreadable} unreadable"
               for name, c in self.sealed.items()]
        if done:
            out.append(f"retained keys stored: {self.retained_added}")
            out.append(f"SAML NameID salts stored: {self.nameid_salts}")
        else:
            out.append("retained keys missing: " + (", ".join(self.retained_missing) or "none"))
            out.append(f"SAML NameID salts still derived from the secret key: {self.nameid_salts}")
        return out


def _targets():
    """(name, model, primary-key column, sealed columns, SecretBox purpose, JSON dict of tokens?)"""
    from federation.config import SECRET_PURPOSE
    from federation.models import FederationConnection
    from idp.mfa.models import MfaTotp
    from idp.models import RetainedKey
    from oidc.models import OidcKey
    from saml.models import SamlKey

    return [
        ("authenticator apps", MfaTotp, MfaTotp.user_id, ("secret_enc", "pending_secret_enc"), "mfa-totp", False),
        ("OIDC signing keys", OidcKey, OidcKey.kid, ("private_enc",), "oidc-keys", False),
        ("SAML signing keys", SamlKey, SamlKey.workspace_id, ("private_enc", "next_private_enc"), "saml-keys", False),
        ("connection secrets", FederationConnection, FederationConnection.id, ("secrets",), SECRET_PURPOSE, True),
        ("retained keys", RetainedKey, RetainedKey.id, ("sealed",), RETAINED_BOX, False),
    ]


def _reseal(box, value, count: Count, is_dict: bool):
    """The new value of a column (or None: unchanged), counting what was found."""
    if value is None:
        return None
    if is_dict:
        new, changed = dict(value), False
        for k, token in value.items():
            got = _reseal(box, token, count, False)
            if got is not None:
                new[k], changed = got, True
        return new if changed else None
    try:
        got = box.reseal(value)
    except ValueError:
        count.unreadable += 1
        return None
    if got is None:
        count.current += 1
        return None
    count.previous += 1
    return got


def _walk(hub, write: bool, batch: int, report: Report) -> None:
    for name, model, pk, columns, purpose, is_dict in _targets():
        box = secret_box(hub.settings, purpose)
        count = report.sealed.setdefault(name, Count())
        after = None
        while True:
            with hub.db() as db:
                q = select(model).order_by(pk).limit(batch)
                if after is not None:
                    q = q.where(pk > after)
                rows = list(db.scalars(q))
                if not rows:
                    break
                for row in rows:
                    changes = {}
                    for col in columns:
                        new = _reseal(box, getattr(row, col), count, is_dict)
                        if new is not None:
                            changes[col] = new
                    if changes and write:
                        # only if the row still holds what was read: a value rewritten meanwhile (by a node, which
                        # always writes under the current key) is left as it now is
                        cond = [getattr(model, c) == getattr(row, c) for c in changes if not is_dict]
                        db.execute(update(model).where(pk == getattr(row, pk.key), *cond).values(**changes))
                after = getattr(rows[-1], pk.key)
                if write:
                    db.commit()
            if len(rows) < batch:
                break


def _retain(hub, write: bool, report: Report) -> None:
    from idp.models import RetainedKey

    box = secret_box(hub.settings, RETAINED_BOX)
    with hub.db() as db:
        have = set(db.scalars(select(RetainedKey.id)))
        for master in secret_keys(hub.settings)[1:]:
            kid = key_id(master)
            for purpose in RETAINED_PURPOSES:
                rid = f"{purpose}:{kid}"
                if rid in have:
                    continue
                if not write:
                    report.retained_missing.append(rid)
                    continue
                sealed = box.encrypt(derive_key(master, purpose))
                db.add(RetainedKey(id=rid, purpose=purpose, key_id=kid, sealed=sealed))
                have.add(rid)
                report.retained_added += 1
        if write:
            db.commit()


def _nameid_salts(hub, write: bool, report: Report) -> None:
    from saml.keys import LEGACY_NAMEID_PURPOSE
    from saml.models import SamlKey

    oldest = secret_keys(hub.settings)[-1]  # the one the NameIDs issued so far were made with
    with hub.db() as db:
        ids = list(db.scalars(select(SamlKey.workspace_id).where(SamlKey.nameid_salt.is_(None))))
        report.nameid_salts = len(ids)
        if write and ids:
            db.execute(update(SamlKey).where(SamlKey.workspace_id.in_(ids), SamlKey.nameid_salt.is_(None))
                       .values(nameid_salt=derive_key(oldest, LEGACY_NAMEID_PURPOSE)))
            db.commit()


def check(hub) -> Report:
    report = Report()
    _walk(hub, False, BATCH, report)
    _retain(hub, False, report)
    _nameid_salts(hub, False, report)
    return report


def rotate(hub, batch: int = BATCH) -> Report:
    report = Report()
    _retain(hub, True, report)  # first: hashes made under an earlier key verify through these once it is gone
    _nameid_salts(hub, True, report)
    _walk(hub, True, batch, report)
    if getattr(hub, "keyring", None) is not None:
        hub.keyring.invalidate()
    return report
