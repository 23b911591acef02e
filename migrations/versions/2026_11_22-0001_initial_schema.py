"""Initial schema: projects, runs, tags, chunked scalar series, array records, events, batches, tokens.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-22 12:54:30.173841
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('api_token',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('project', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_token')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_token_token_hash'))
    )
    op.create_table('project',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_project')),
    sa.UniqueConstraint('name', name=op.f('uq_project_name'))
    )
    op.create_table('run',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=500), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('optimizer', sa.String(length=200), nullable=True),
    sa.Column('host', sa.String(length=255), nullable=True),
    sa.Column('world_size', sa.Integer(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=True),
    sa.Column('summary', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_step', sa.BigInteger(), nullable=True),
    sa.Column('alerts_count', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], name=op.f('fk_run_project_id_project'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run'))
    )
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_run_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_run_status'), ['status'], unique=False)

    op.create_table('array_record',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=512), nullable=False),
    sa.Column('layer', sa.String(length=512), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('time', sa.Float(), nullable=True),
    sa.Column('shape', sa.JSON(), nullable=False),
    sa.Column('values', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_array_record_run_id_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_array_record')),
    sa.UniqueConstraint('run_id', 'key', 'layer', 'step', name=op.f('uq_array_record_run_id_key_layer_step'))
    )
    op.create_table('batch',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('batch_id', sa.String(length=200), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_batch_run_id_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_batch')),
    sa.UniqueConstraint('run_id', 'batch_id', name=op.f('uq_batch_run_id_batch_id'))
    )
    op.create_table('event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('level', sa.String(length=32), nullable=False),
    sa.Column('key', sa.String(length=512), nullable=True),
    sa.Column('layer', sa.String(length=512), nullable=True),
    sa.Column('step', sa.BigInteger(), nullable=True),
    sa.Column('time', sa.Float(), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_event_run_id_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_event'))
    )
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.create_index('ix_event_run_id_id', ['run_id', 'id'], unique=False)

    op.create_table('run_tag',
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('tag', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_run_tag_run_id_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'tag', name=op.f('pk_run_tag'))
    )
    with op.batch_alter_table('run_tag', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_tag_tag'), ['tag'], unique=False)

    op.create_table('series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=512), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('first_step', sa.BigInteger(), nullable=True),
    sa.Column('last_step', sa.BigInteger(), nullable=True),
    sa.Column('first_time', sa.Float(), nullable=True),
    sa.Column('last_time', sa.Float(), nullable=True),
    sa.Column('last_value', sa.LargeBinary(), nullable=True),
    sa.Column('n_chunks', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_series_run_id_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_series')),
    sa.UniqueConstraint('run_id', 'key', name=op.f('uq_series_run_id_key'))
    )
    op.create_table('series_chunk',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('step_min', sa.BigInteger(), nullable=False),
    sa.Column('step_max', sa.BigInteger(), nullable=False),
    sa.Column('ordered', sa.Boolean(), nullable=False),
    sa.Column('time_min', sa.Float(), nullable=True),
    sa.Column('time_max', sa.Float(), nullable=True),
    sa.Column('steps', sa.LargeBinary(), nullable=False),
    sa.Column('times', sa.LargeBinary(), nullable=False),
    sa.Column('values', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['series_id'], ['series.id'], name=op.f('fk_series_chunk_series_id_series'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_series_chunk')),
    sa.UniqueConstraint('series_id', 'seq', name=op.f('uq_series_chunk_series_id_seq'))
    )
    with op.batch_alter_table('series_chunk', schema=None) as batch_op:
        batch_op.create_index('ix_series_chunk_series_id_step_min', ['series_id', 'step_min'], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        # Point blobs are read whole and are mostly incompressible floats: storing them
        # uncompressed out of line (EXTERNAL) skips pglz on every read of a long series.
        for table, column in (("series_chunk", "steps"), ("series_chunk", "times"),
                              ("series_chunk", "values"), ("array_record", "values")):
            op.execute(f'ALTER TABLE {table} ALTER COLUMN "{column}" SET STORAGE EXTERNAL')



def downgrade() -> None:
    with op.batch_alter_table('series_chunk', schema=None) as batch_op:
        batch_op.drop_index('ix_series_chunk_series_id_step_min')

    op.drop_table('series_chunk')
    op.drop_table('series')
    with op.batch_alter_table('run_tag', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_tag_tag'))

    op.drop_table('run_tag')
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_index('ix_event_run_id_id')

    op.drop_table('event')
    op.drop_table('batch')
    op.drop_table('array_record')
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_status'))
        batch_op.drop_index(batch_op.f('ix_run_project_id'))
        batch_op.drop_index(batch_op.f('ix_run_created_at'))

    op.drop_table('run')
    op.drop_table('project')
    op.drop_table('api_token')
