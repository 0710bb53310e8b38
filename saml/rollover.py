"""Operator commands of the SAML IdP: stage the next signing key (key and certificate rollover), and refresh the
metadata of SPs registered by ``metadata_url``.

    idhub saml stage --workspace acme --at 2026-12-15T00:00:00Z      (or python -m saml.rollover …)
    idhub saml status --workspace acme
    idhub saml refresh-metadata --workspace acme [--max-age 86400]

The new certificate is published in the workspace's metadata at once (two signing certificates), signs from
``--at`` on, and the old certificate leaves the metadata a week after the switch. ``--at`` must be at least
``saml.keys.MIN_PUBLISH`` (7 days and 1 hour) away: SPs may keep our metadata until its validUntil (7 days after
each fetch) or for its cacheDuration (PT24H), and must have fetched the new certificate before it signs. Uses the
same environment as ``idhub`` (``IDHUB_DATABASE_URL``, ``IDHUB_SECRET_KEY``, …); ``cli`` is attached to ``idhub``
as ``idhub saml``.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from saml.config import REFRESH_AFTER, refresh_metadata
from saml.keys import MIN_PUBLISH, ROLLOVER_RETIRE, human_duration, rollover_rule


def _hub():
    from config.settings import SettingsError, load_settings
    from idp.wiring import build_hub

    try:
        return build_hub(load_settings())
    except SettingsError as exc:
        click.echo(f"idhub: configuration error: {exc}", err=True)
        sys.exit(2)


def _service(slug: str):
    from idp.accounts import workspace_by_slug
    from saml import install

    hub = _hub()
    svc = install(hub)
    with hub.db() as db:
        ws = workspace_by_slug(db, slug)
    if ws is None:
        click.echo(f"idhub: no workspace {slug!r}", err=True)
        sys.exit(2)
    return hub, svc, ws


def _fingerprint(cert_pem: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    return x509.load_pem_x509_certificate(cert_pem.encode()).fingerprint(hashes.SHA256()).hex(":")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """SAML signing keys: rollover."""


@cli.command("stage")
@click.option("--workspace", "slug", required=True)
@click.option("--at", "at", required=True,
              help="when the new key starts signing (ISO 8601, UTC if no zone; at least "
                   f"{human_duration(MIN_PUBLISH)} from now)")
def stage(slug, at):
    """Stage the next signing key: published in the metadata now, signing from --at (7 days and 1 hour away at
    least: SPs may use a copy of the metadata that long without fetching it again)."""
    try:
        when = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {at!r}", param_hint="--at") from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    _hub, svc, ws = _service(slug)
    try:
        cert = svc.keys.stage_next(ws, when)
    except ValueError as exc:
        click.echo(f"idhub: {exc}", err=True)
        sys.exit(1)
    click.echo(f"staged: new signing certificate {_fingerprint(cert)}, published now, signing from "
               f"{when.isoformat()}; the old one is unpublished {ROLLOVER_RETIRE.days} days after that")


@cli.command("status")
@click.option("--workspace", "slug", required=True)
def status(slug):
    """The current signing certificate and a staged one, by SHA-256 fingerprint."""
    _hub, svc, ws = _service(slug)
    st = svc.keys.state(ws)
    svc.keys.nameid_salt(ws)  # stores the NameID salt of a workspace set up before it existed (see saml.keys)
    click.echo(f"current: {_fingerprint(st.current[1])}")
    if st.next is not None:
        click.echo(f"next:    {_fingerprint(st.next[1])} signs from {st.next_active_at.isoformat()}")
    click.echo(f"rule:    {rollover_rule()}")


@cli.command("revoke-key")
@click.option("--workspace", "slug", required=True)
@click.option("--key", "key_id", default=None,
              help="the certificate's SHA-256 fingerprint (as `status` prints it); default: the key signing now")
@click.option("--yes", is_flag=True, help="revoke without asking")
def revoke_key(slug, key_id, yes):
    """Emergency revocation of a compromised signing key: it leaves the metadata now and never signs again on any
    node; the staged next key (if any) or a new key signs from now on. SPs must load the new metadata before they
    accept idhub's responses again. Audited."""
    _hub, svc, ws = _service(slug)
    if not yes:
        click.confirm(f"Revoke the SAML signing key of {slug}? Apps reject sign-ins until they have the new "
                      "certificate", abort=True)
    done = svc.keys.revoke(ws, key_id)
    if done is None:
        click.echo(f"idhub: {slug} publishes no SAML signing key {key_id!r}", err=True)
        sys.exit(2)
    click.echo(f"revoked {done['revoked']}; signing now with {done['signing']} (give the apps the new metadata)")


@cli.command("refresh-metadata")
@click.option("--workspace", "slug", required=True)
@click.option("--max-age", default=REFRESH_AFTER, show_default=True, help="seconds; 0 fetches every SP again")
def refresh(slug, max_age):
    """Fetch again the metadata of SPs registered by metadata_url (run it daily, e.g. from cron)."""
    hub, _svc, ws = _service(slug)
    with hub.db() as db:
        done = refresh_metadata(db, ws, max_age=max_age, audit=hub.audit)
    if done:
        from idp.invalidation import SAML_APPS

        hub.changed(SAML_APPS, ws.slug)
    for entity in done:
        click.echo(f"refreshed: {entity}")


if __name__ == "__main__":
    cli()
