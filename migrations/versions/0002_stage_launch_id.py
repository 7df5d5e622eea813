"""Record the launcher's id of a stage's process (a pid, a Slurm job id) on the stage.

Revision ID: 0002
Revises: 0001
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("stages") as batch_op:
        batch_op.add_column(sa.Column("launch_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stages") as batch_op:
        batch_op.drop_column("launch_id")
