"""refunds polled like payments: next_check_at, attempts, check_failures, last_error

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("check_failures", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(sa.Column("last_error", sa.String(length=500), nullable=True))
        batch_op.create_index("ix_refunds_due", ["status", "next_check_at"], unique=False)
    # Refunds already in flight are due at once (the old reconciler retried them every 30 s).
    op.execute(
        "UPDATE refunds SET next_check_at = updated_at WHERE status IN ('REQUESTED', 'PENDING')"
    )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_index("ix_refunds_due")
        batch_op.drop_column("last_error")
        batch_op.drop_column("check_failures")
        batch_op.drop_column("attempts")
        batch_op.drop_column("next_check_at")
