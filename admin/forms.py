"""What the admin console's forms say when the service refuses them: every error at once, each under its field, in
that field's own words ("Short name may only use lowercase letters, digits and hyphens"), never the config file's
paths (``slug: must match [a-z0-9-]+``). Plain Python: ``admin.console`` hands it an ``AdminError`` and what was
typed. Also the durations the forms show as a number and a unit."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

PATH_RE = re.compile(r"^([a-z_]+)(?:\[(\d+)\])?(?:\.(.+))?$")


@dataclass
class FormErrors:
    """The errors of one submitted form: by input name (shown under the input) and the rest (above the form)."""

    by_field: dict[str, list[str]] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.by_field or self.general)

    def get(self, name: str) -> list[str]:
        return self.by_field.get(name, [])

    def count(self) -> int:
        return len(self.general) + sum(len(v) for v in self.by_field.values())

    def add(self, name: str | None, message: str) -> None:
        if name:
            self.by_field.setdefault(name, []).append(message)
        else:
            self.general.append(message)


def sentence(text: str) -> str:
    """A message as a sentence: a capital first letter (not for a first word such as ``saml.test``) and a stop."""
    text = text.strip()
    if not text:
        return text
    if re.match(r"^[a-z]+\b(?![.:/@_-])", text):
        text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?)" else text + "."


def _item(values, name: str, index: int | None) -> str | None:
    """What was typed on line ``index`` of a one-a-line field (or the field itself)."""
    raw = values.get(name) if values is not None else None
    if raw is None:
        return None
    if index is None:
        return str(raw).strip()
    lines = [x.strip() for x in str(raw).replace(",", "\n").splitlines() if x.strip()]
    return lines[index] if index < len(lines) else None


def _cidr(value: str | None, message: str) -> str | None:
    shown = value or "This network"
    if "host bits" in message:
        try:
            net = ipaddress.ip_network(value or "", strict=False)
        except ValueError:
            return f"{shown} has host bits set: give the network address."
        return f"{shown} has host bits set — did you mean {net}?"
    if "not a valid CIDR" in message:
        return f"{shown} is not a network address such as 10.0.0.0/8 or 2001:db8::/32."
    if "/0 allows every address" in message:
        return f"{shown} allows every address: leave the list empty to allow any network."
    if "over-broad" in message:
        return f"{shown} is too broad: use a prefix of /8 or longer (IPv4) or /16 or longer (IPv6)."
    return None


EXAMPLES = {"Redirect URIs": "https://app.example.com/callback", "Issuer URL": "https://example.okta.com",
            "Server URL": "ldaps://ldap.example.com", "Metadata URL": "https://idp.example.com/saml/metadata",
            "ACS URL": "https://app.example.com/saml/acs", "Groups endpoint": "https://graph.microsoft.com/v1.0/me/memberOf"}
THINGS = {"workspace": "workspace", "app": "app", "connection": "connection", "group": "group",
          "SCIM token": "token"}


def humanise(label: str, message: str, value: str | None) -> str:
    """One service error about the field labelled ``label`` (``value``: what was typed there) in plain words."""
    m = message.strip()
    if m == "required":
        return f"{label} is required."
    if m.startswith("must match [a-z0-9-]+"):
        return f"{label} may only use lowercase letters, digits and hyphens, and cannot start or end with a hyphen."
    cidr = _cidr(value, m)
    if cidr:
        return cidr
    if m in ("not an absolute URL", "not a usable URL"):
        example = EXAMPLES.get(label, "https://app.example.com")
        return (f"“{value}” is not a full address such as {example}." if value else
                f"{label} must be a full address such as {example}.")
    if m == "must not contain a fragment":
        return f"{value or label} must not contain a # part."
    if m.startswith("must be a duration"):
        return f"{label}: enter a whole number and choose minutes, hours or days."
    if m == "must be between 1 minute and 400 days":
        return f"{label} must be between 1 minute and 400 days."
    if m == "must not be longer than session_max_lifetime":
        return (f"{label} cannot be longer than the time after which everyone signs in again: shorten it, or "
                "lengthen the other.")
    long = re.match(r"^longer than (\d+) characters$", m)
    if long:
        return f"{label} is too long: at most {long.group(1)} characters."
    if m == "contains control characters":
        return f"{label} contains characters that are not allowed (such as line breaks)."
    if m.lower().startswith("malformed xml"):
        return (f"{label} is not complete XML: paste the whole metadata document, from <EntityDescriptor … to "
                "</EntityDescriptor>.")
    if m.startswith("give exactly one of metadata_xml or metadata_url"):
        return "Paste the metadata or give its URL, not both" + (
            " (or the entity ID and ACS URL)." if "entity_id" in m else ".")
    if "needs metadata_xml or metadata_file, or entity_id with acs_url" in m:
        return "Paste the app's metadata, give its metadata URL, or fill in both its entity ID and ACS URL."
    taken = re.match(r"^an? (workspace|app|connection|group|SCIM token) with this (slug|name) exists$", m)
    if taken:
        return f"Another {THINGS[taken.group(1)]} already uses this {label[0].lower() + label[1:]}."
    if m == "an app with this SAML entity ID exists" or m == "another app has this SAML entity ID":
        return "Another app is already registered with this entity ID."
    if m == "must be a string" or m == "must be a list":
        return f"{label} is not valid."
    if m.startswith(("must ", "points to ", "is ")):
        return f"{label} {m}" + ("" if m[-1] in ".)" else ".")
    return sentence(m)


def form_errors(exc, values, labels: dict[str, str], names: dict[str, str] | None = None) -> FormErrors:
    """Every error of ``exc`` (an ``AdminError``) for a form whose inputs are ``labels`` (input name -> its label).
    ``names`` maps a service field to the input it came from where they differ. An error about a field the form
    does not show is said above the form, with the field's label when there is one."""
    out = FormErrors()
    for err in getattr(exc, "errors", None) or [{"field": exc.field, "message": exc.message}]:
        path, message = err.get("field") or "", err.get("message") or ""
        m = PATH_RE.match(path)
        base, index = (m.group(1), int(m.group(2)) if m.group(2) else None) if m else (None, None)
        name = (names or {}).get(base, base) if base else None
        if m and m.group(3):  # a nested key (attribute_map.upn): under the field, naming the key
            if name in labels:
                out.add(name, f"{labels[name]}: {m.group(3)} {message}" + ("" if message[-1:] in ".)" else "."))
            else:
                out.add(None, sentence(f"{path}: {message}"))
            continue
        if name in labels:
            out.add(name, humanise(labels[name], message, _item(values, name, index)))
        else:
            out.add(None, humanise(labels.get(name or "", "This setting"), message, None)
                    if message in ("required",) else sentence(message))
    return out


# ---- durations: a number and a unit ------------------------------------------------------------------------
DURATION_UNITS = (("minutes", "m", 60), ("hours", "h", 3600), ("days", "d", 86400))


def split_duration(seconds) -> tuple[str, str]:
    """Stored seconds as the form's (number, unit): the largest unit that divides them (``2592000`` -> 30 days)."""
    if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds <= 0:
        return "", "hours"
    for unit, _suffix, n in reversed(DURATION_UNITS):
        if seconds % n == 0:
            return str(seconds // n), unit
    return str(max(1, round(seconds / 60))), "minutes"


def join_duration(number: str, unit: str) -> str | None:
    """The form's number and unit as a config-file duration (``30`` days -> ``30d``); empty: None (not set).
    Anything else is handed on as typed, for the validator to refuse."""
    number = (number or "").strip()
    if not number:
        return None
    suffix = {u: s for u, s, _n in DURATION_UNITS}.get(unit)
    if not unit:  # no unit field (a script posting the config file's syntax, "12h"): as typed
        return number[:40]
    if suffix is None or not number.isdigit() or len(number) > 6:
        return f"{number} {unit}"[:40]
    return f"{int(number)}{suffix}"
