"""admin.forms: the service's errors in each field's own words, and durations as a number and a unit."""

from __future__ import annotations

import pytest

from admin.forms import form_errors, humanise, join_duration, split_duration
from admin.service import AdminError, invalid
from idp.configfile import Validator, validate_policies


def test_every_validator_error_lands_under_its_field_in_plain_words():
    v = Validator()
    validate_policies(v, {"ip_allowlist": ["10.0.0.0/8", "10.0.0.1/8", "nonsense"], "session_idle_timeout": "1s"},
                      "policies", "enterprise")
    fe = form_errors(invalid(v.errors, "policies"), {"ip_allowlist": "10.0.0.0/8\n10.0.0.1/8\nnonsense"},
                     {"ip_allowlist": "Allowed networks", "session_idle_timeout": "Idle timeout"})
    assert fe.get("ip_allowlist") == ["10.0.0.1/8 has host bits set — did you mean 10.0.0.0/8?",
                                      "nonsense is not a network address such as 10.0.0.0/8 or 2001:db8::/32."]
    assert fe.get("session_idle_timeout") == ["Idle timeout must be between 1 minute and 400 days."]
    assert fe.general == [] and fe.count() == 3


@pytest.mark.parametrize("message, value, said", [
    ("must match [a-z0-9-]+ (1-63 characters, no leading or trailing '-')", "-x",
     "Short name may only use lowercase letters, digits and hyphens, and cannot start or end with a hyphen."),
    ("required", "", "Short name is required."),
    ("a connection with this slug exists", "okta", "Another connection already uses this short name."),
])
def test_messages_say_what_to_do(message, value, said):
    assert humanise("Short name", message, value) == said


def test_an_error_for_a_field_the_form_lacks_is_said_above_it():
    fe = form_errors(AdminError(422, "invalid", "unknown field", "grant_types"), {}, {"name": "Name"})
    assert fe.general == ["Unknown field."] and fe.by_field == {}


@pytest.mark.parametrize("seconds, shown", [(2592000, ("30", "days")), (43200, ("12", "hours")),
                                            (5400, ("90", "minutes")), (None, ("", "hours"))])
def test_stored_seconds_are_shown_in_the_largest_unit_that_fits(seconds, shown):
    assert split_duration(seconds) == shown


def test_a_number_and_a_unit_become_the_config_file_syntax():
    assert join_duration("30", "days") == "30d" and join_duration("8", "hours") == "8h"
    assert join_duration("", "days") is None
    assert join_duration("12h", "") == "12h"  # a client without the unit field
    v = Validator()
    assert v.duration(join_duration("1.5", "hours"), "d") is None and v.errors  # refused, not guessed
