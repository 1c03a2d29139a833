"""SQL on collage_progress: how far a SKU's build got, and how often its worker died there.

A worker that dies takes its memory with it: what it was doing must already be in the
database for the rescue to say, and to stop rescuing a SKU that kills every worker.
"""

from __future__ import annotations

from psycopg import AsyncConnection


async def note(conn: AsyncConnection, product_id: int, generation: int, step: str) -> None:
    """Record the step a build is at; a new upload starts its count of deaths afresh."""
    await conn.execute(
        """
        INSERT INTO collage_progress AS p (product_id, generation, step) VALUES (%s, %s, %s)
        ON CONFLICT (product_id) DO UPDATE
           SET deaths = CASE WHEN p.generation = EXCLUDED.generation THEN p.deaths ELSE 0 END,
               generation = EXCLUDED.generation, step = EXCLUDED.step, updated_at = now()
        """,
        [product_id, generation, step],
    )


async def count_death(conn: AsyncConnection, product_id: int, generation: int) -> tuple[int, str]:
    """Count one more worker death during this upload's build; return the count and the step."""
    cur = await conn.execute(
        """
        INSERT INTO collage_progress AS p (product_id, generation, step, deaths)
        VALUES (%s, %s, 'before its first step', 1)
        ON CONFLICT (product_id) DO UPDATE
           SET deaths = CASE WHEN p.generation = EXCLUDED.generation THEN p.deaths + 1 ELSE 1 END,
               step = CASE WHEN p.generation = EXCLUDED.generation THEN p.step
                           ELSE EXCLUDED.step END,
               generation = EXCLUDED.generation, updated_at = now()
        RETURNING deaths, step
        """,
        [product_id, generation],
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


async def forget(conn: AsyncConnection, product_id: int) -> None:
    """The build's result is recorded: its progress and deaths are history."""
    await conn.execute("DELETE FROM collage_progress WHERE product_id = %s", [product_id])


async def prune(conn: AsyncConnection, *, older_than_hours: int) -> None:
    """Forget the progress of builds abandoned long ago (their SKUs were settled otherwise)."""
    await conn.execute(
        "DELETE FROM collage_progress WHERE updated_at < now() - %s * interval '1 hour'",
        [older_than_hours],
    )
