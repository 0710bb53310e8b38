"""SCIM: indexes for the hot paths

Revision ID: b6c05c1a0001
Revises: a5a3150110a1
Create Date: 2026-11-28 11:20:00
"""

from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401
import idp.models  # noqa: F401


revision = 'b6c05c1a0001'
down_revision = 'a5a3150110a1'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
