"""Workspace policies: the engine every entry point asks (see engine.py)."""

from policies.engine import (  # noqa: F401
    ALLOW,
    DENY,
    ENROLL,
    MFA,
    Decision,
    PolicyContext,
    PolicyEngine,
)
