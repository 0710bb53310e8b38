"""Invisible and control characters in passwords: refused, and never counted towards the rules (NIST SP 800-63B
5.1.1.2 allows spaces and any printable Unicode, which still count)."""

from __future__ import annotations

import pytest

from idp import passwords
from idp.passwords import Hasher, check


def keys(pw: str, **kw) -> list[str]:
    return [r.key for r in check(pw, **kw)]


def test_four_zero_width_spaces_do_not_make_a_short_password_long_enough():
    broken = keys("\u200b" * 4 + "Aa1!")
    assert "invisible" in broken and "length" in broken
    assert passwords.INVISIBLE.text == "No invisible or control characters"


@pytest.mark.parametrize("ch", ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u034f", "\u061c",
                                "\u115f", "\u3164", "\ufe0f", "\uffa0", "\U000e0041", "\U0001d173", "\u202e",
                                "\u2066", "\u200e", "\x00", "\x07", "\x1b", "\x7f", "\x85", "\t", "\n", "\r",
                                "\ue000", "\ud800", "\u0378", "\ufffe", "\u2028", "\u2029", "\u1680", "\u2800"],
                         ids=lambda c: f"U+{ord(c):04X}")
def test_invisible_and_control_characters_are_refused(ch):
    for pw in (f"Long-En{ch}ough-Pass-9", f"{ch}Long-Enough-Pass-9", f"Long-Enough-Pass-9{ch}"):
        assert keys(pw) == ["invisible"], (ch, keys(pw))


@pytest.mark.parametrize("pw", ["Aa1! éé  x", "correct Horse battery 9!", "Ünïcödé Pass 9", "Aa1!\u00a0ééé x",
                                "Aa1!\u3000ééé\u2009x", "Пароль-Надёжный-7", "密码Pass-word9",
                                "Caf\u0065\u0301-Pass-12"])
def test_spaces_and_accented_letters_are_allowed_and_count(pw):
    assert check(pw) == []


def test_spaces_count_towards_the_length():
    assert keys("Aa1!   ") == ["length"]  # 7 characters
    assert keys("Aa1!    ") == []  # 8 characters, four of them spaces
    assert keys("Aa1!\u00a0\u2003\u3000 ") == []  # spaces NFKC maps to U+0020 count the same


def test_the_rule_is_not_part_of_the_always_shown_checklist():
    assert "invisible" not in [r.key for r in passwords.RULES]


def test_existing_hashes_of_such_passwords_still_verify():
    """The rule is about new passwords: one set before it (e.g. imported) still signs in."""
    h = Hasher(time_cost=1, memory_cost=1024)
    stored = h.hash("Old\u200bPassword-1")
    assert h.verify(stored, "Old\u200bPassword-1")
