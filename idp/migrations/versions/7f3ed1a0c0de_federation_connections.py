"""federation: upstream connections and identity links

Revision ID: 7f3ed1a0c0de
Revises: 309bd3b806a0
Create Date: 2026-11-28 11:20:00
"""

from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401
import idp.models  # noqa: F401


revision = '7f3ed1a0c0de'
down_revision = '309bd3b806a0'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
