"""The app launcher (``/w/{ws}/apps``): which apps a user sees, in which order, filtered. Plain Python.

A tile is shown for an app that

- the user may use: ``policies.engine.may_use`` on the app's ``assigned_groups``, the answer every door (OIDC
  authorize, refresh, userinfo; SAML SSO and IdP-initiated launch) gives; an app the user may not use is never
  named on the page;
- is listed: ``apps[].show_in_launcher`` (default true);
- can be opened from idhub: an OIDC app at its ``initiate_login_uri`` (OIDC Core 4, Third-Party Initiated Login,
  with ``iss``), or else at the origin of its first http(s) redirect URI (the app's home, which starts its own
  sign-in); a SAML app with ``idp_initiated: true`` through IdP-initiated SSO (the launch POST). An app without
  either (a SAML app that only accepts its own AuthnRequests, a client with only a custom-scheme redirect URI or
  none) has no tile: there is nothing to open.

The order is the admin's: the config file's ``apps`` order (``launcher_position``), then apps registered over the
admin API or console, oldest first. ``q`` keeps the tiles whose name, slug or description contains it (case-
insensitive). The protocols register a ``reader`` each (``hub.launcher.readers``): ``(db, ws) -> [Entry]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode, urlsplit

from policies.engine import may_use

Q_MAX = 100  # a longer search is cut to this


@dataclass(frozen=True)
class Entry:
    protocol: str  # "oidc" | "saml"
    slug: str
    name: str
    assigned_groups: tuple[str, ...] | None
    show_in_launcher: bool = True
    description: str | None = None
    position: int | None = None  # the config file's order; None: registered over the API (after those)
    created_at: datetime | None = None
    url: str | None = None  # an OIDC tile's link; None with a SAML app (the launch POST)
    launchable: bool = True
    require_mfa: bool = False

    @property
    def title(self) -> str:
        return self.name or self.slug

    @property
    def initial(self) -> str:
        return next((c.upper() for c in self.title if c.isalnum()), "?")

    def why(self, user_groups: Iterable[str]) -> str:
        """Why a user (``user_groups``) may use the app: "everyone", or "via Engineering, Sales"."""
        if self.assigned_groups is None:
            return "everyone"
        return "via " + ", ".join(g for g in self.assigned_groups if g in set(user_groups))


def oidc_url(initiate_login_uri: str | None, redirect_uris: Iterable[str], issuer: str) -> str | None:
    """Where an OIDC app's tile opens (see the module's docstring); None: it cannot be opened from idhub."""
    if initiate_login_uri:
        sep = "&" if urlsplit(initiate_login_uri).query else "?"
        return initiate_login_uri + sep + urlencode({"iss": issuer})
    for uri in redirect_uris or ():
        parts = urlsplit(uri) if isinstance(uri, str) else None
        if parts is not None and parts.scheme in ("https", "http") and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}/"
    return None


def sort_key(e: Entry) -> tuple:
    return (e.position is None, e.position or 0, e.created_at or datetime.min, e.slug)


def tiles(entries: Iterable[Entry], user_groups: Iterable[str] | None, q: str = "") -> list[Entry]:
    """The tiles for a user in groups ``user_groups`` (None: unknown, only apps open to everyone), in order."""
    groups = set(user_groups or ())
    needle = (q or "").strip()[:Q_MAX].casefold()
    out = [e for e in entries if e.show_in_launcher and e.launchable
           and (may_use(e.assigned_groups, groups) if user_groups is not None else e.assigned_groups is None)]
    if needle:
        out = [e for e in out if needle in e.title.casefold() or needle in e.slug.casefold()
               or needle in (e.description or "").casefold()]
    return sorted(out, key=sort_key)


def usable_by(entries: Iterable[Entry], user_groups: Iterable[str]) -> list[tuple[Entry, str]]:
    """Every app (listed or not) a user may use, and why: for the admin console's user page."""
    groups = set(user_groups)
    return [(e, e.why(groups)) for e in sorted(entries, key=sort_key) if may_use(e.assigned_groups, groups)]


def assigned_to(entries: Iterable[Entry], group: str) -> list[Entry]:
    """The apps assigned to a group: for the admin console's group page."""
    return [e for e in sorted(entries, key=sort_key) if e.assigned_groups is not None and group in e.assigned_groups]


class Launcher:
    def __init__(self, hub):
        self.hub = hub
        self.readers: list[Callable] = []  # (db, ws) -> [Entry]

    def entries(self, ws) -> list[Entry]:
        with self.hub.db() as db:
            return [e for read in self.readers for e in read(db, ws)]

    def for_user(self, ws, user_id: str, q: str = "") -> list[Entry]:
        """The tiles of ``user_id``; their groups read once, and only when an app is assigned to groups."""
        entries = self.entries(ws)
        groups = self.hub.group_names(ws.id, user_id) if any(e.assigned_groups is not None for e in entries) else ()
        return tiles(entries, groups, q)
