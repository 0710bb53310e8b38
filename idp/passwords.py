"""Password rules (kb_041) and argon2id hashing. Plain Python.

Passwords are NFKC-normalised before they are checked or hashed (NIST SP 800-63B 5.1.1.2), so the same
password typed on two keyboards verifies; they are never truncated: anything over ``MAX_LENGTH``
characters is refused instead. Spaces and any visible character are allowed and count; invisible and control
characters (``idp.accounts.is_invisible``) are refused in new passwords and never count towards a rule.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from idp.accounts import is_invisible

MIN_LENGTH = 8
MAX_LENGTH = 128  # characters; bounds the hashing cost of a hostile request


@dataclass(frozen=True)
class Rule:
    key: str
    text: str


RULES = (
    Rule("length", f"At least {MIN_LENGTH} characters"),
    Rule("upper", "An uppercase letter"),
    Rule("lower", "A lowercase letter"),
    Rule("digit", "A number"),
    Rule("special", "A special character (such as ! # - _)"),
    Rule("common", "Not a commonly used password"),
)
# Reported only when broken (not in the checklist ``RULES`` shown beside every new-password field).
TOO_LONG = Rule("max", f"At most {MAX_LENGTH} characters")
INVISIBLE = Rule("invisible", "No invisible or control characters")


@cache
def common_passwords() -> frozenset[str]:
    """The 30,000 most common passwords (xato/zxcvbn frequency list), lower-cased."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


_TRAILING = re.compile(r"[\d\W_]+$")
_LEADING = re.compile(r"^[\d\W_]+")


def normalise(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


def is_common(password: str) -> bool:
    """True for a listed password, also once decorated: ``Password1!`` and ``!!dragon2024`` count."""
    low = normalise(password).lower()
    common = common_passwords()
    if low in common:
        return True
    core = _LEADING.sub("", _TRAILING.sub("", low))
    return len(core) >= 4 and core in common


def invisible(ch: str) -> bool:
    """An invisible or control character; the spaces NFKC makes U+0020 of are ordinary spaces."""
    if unicodedata.category(ch) == "Zs":
        return unicodedata.normalize("NFKC", ch) != " "
    return is_invisible(ch)


def check(password: str, *, email: str | None = None) -> list[Rule]:
    """The rules a password breaks (empty when it is acceptable)."""
    if len(password) > MAX_LENGTH:
        return [TOO_LONG]
    pw = normalise(password)
    broken = []
    if any(map(invisible, password)) or any(map(invisible, pw)):
        broken.append(INVISIBLE)
        pw = "".join(c for c in pw if not invisible(c))  # counts towards nothing
    if len(pw) < MIN_LENGTH:
        broken.append(RULES[0])
    if not any(c.isupper() for c in pw):
        broken.append(RULES[1])
    if not any(c.islower() for c in pw):
        broken.append(RULES[2])
    if not any(c.isdigit() for c in pw):
        broken.append(RULES[3])
    if not any(not c.isalnum() for c in pw):
        broken.append(RULES[4])
    local = (email or "").split("@")[0].lower()
    if is_common(pw) or (len(local) >= 4 and local in pw.lower()):
        broken.append(RULES[5])
    return broken


class Hasher:
    """argon2id with explicit parameters (OWASP: m=19 MiB, t=2, p=1) and rehash-on-login."""

    def __init__(self, time_cost: int = 2, memory_cost: int = 19 * 1024, parallelism: int = 1):
        self._ph = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        # Verified against when the account does not exist, so unknown users cost the same time.
        self._dummy = self._ph.hash("idhub-dummy-password-for-timing")

    def hash(self, password: str) -> str:
        if len(password) > MAX_LENGTH:
            raise ValueError("password too long")
        return self._ph.hash(normalise(password))

    def verify(self, stored: str | None, password: str) -> bool:
        """Constant work whether or not ``stored`` exists; False for over-long input without hashing it
        differently (the dummy hash is still computed)."""
        if len(password) > MAX_LENGTH:
            password = ""
            stored = None
        try:
            return self._ph.verify(stored or self._dummy, normalise(password)) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        try:
            return self._ph.check_needs_rehash(stored)
        except InvalidHashError:
            return True
