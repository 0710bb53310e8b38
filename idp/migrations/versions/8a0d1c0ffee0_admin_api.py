"""admin API tokens and console

Revision ID: 8a0d1c0ffee0
Revises: 7f3ed1a0c0de
Create Date: 2026-11-28 11:20:00
"""

from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401
import idp.models  # noqa: F401


revision = '8a0d1c0ffee0'
down_revision = '7f3ed1a0c0de'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
