"""Secret rotation: retained_keys, the derived keys of earlier IDHUB_SECRET_KEYs that stored keyed hashes need

Revision ID: e3a1fed00024
Revises: e3a1fed00023
Create Date: 2026-12-07 17:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = 'e3a1fed00024'
down_revision = 'e3a1fed00023'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'retained_keys',
        sa.Column('id', sa.String(80), primary_key=True),
        sa.Column('purpose', sa.String(64), nullable=False),
        sa.Column('key_id', sa.String(16), nullable=False),
        sa.Column('sealed', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('retained_keys')
