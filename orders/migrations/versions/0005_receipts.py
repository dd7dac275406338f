"""receipts: immutable receipt documents numbered per store without gaps

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SALE = "kind = 'sale'"
_REFUSED = "receipts are immutable"

# The database refuses to change an issued receipt, whoever asks (a script, a console).
_PG_FUNCTION = f"""
CREATE FUNCTION receipts_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{_REFUSED}' USING ERRCODE = 'restrict_violation';
END
$$
"""
_PG_TRIGGER = (
    "CREATE TRIGGER receipts_immutable BEFORE UPDATE OR DELETE ON receipts"
    " FOR EACH ROW EXECUTE FUNCTION receipts_immutable()"
)
_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER receipts_no_{verb.lower()} BEFORE {verb} ON receipts"
    f" BEGIN SELECT RAISE(ABORT, '{_REFUSED}'); END"
    for verb in ("UPDATE", "DELETE")
]


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "receipt_counters",
        sa.Column("store_id", sa.String(length=200), nullable=False),
        sa.Column("last_number", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("store_id"),
    )
    op.create_table(
        "receipts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("store_id", sa.String(length=200), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("refund_id", sa.String(length=40), nullable=True),
        sa.Column("tax_rate_bp", sa.Integer(), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"]),
        sa.ForeignKeyConstraint(["refund_id"], ["refunds.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("refund_id"),
        sa.UniqueConstraint("store_id", "number", name="uq_receipts_store_number"),
    )
    with op.batch_alter_table("receipts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_receipts_order_id"), ["order_id"], unique=False)
        batch_op.create_index(
            "uq_receipts_one_sale",
            ["order_id"],
            unique=True,
            postgresql_where=sa.text(_SALE),
            sqlite_where=sa.text(_SALE),
        )
    if op.get_context().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS receipts_immutable ON receipts")
        op.execute("DROP FUNCTION IF EXISTS receipts_immutable()")
    else:
        for verb in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS receipts_no_{verb}")
    with op.batch_alter_table("receipts", schema=None) as batch_op:
        batch_op.drop_index("uq_receipts_one_sale")
        batch_op.drop_index(batch_op.f("ix_receipts_order_id"))
    op.drop_table("receipts")
    op.drop_table("receipt_counters")
