"""Names and timings that SQL and Python share, written once.

The migrations are plain SQL and cannot import these: tests/unit/test_constants.py reads every
migration and fails when one spells a name or a number differently.
"""

from __future__ import annotations

QUEUE = "collage"
BUILD_TASK = "collage.build"
SWEEP_TASK = "collage.sweep"
RETRY_ERRORS_TASK = "collage.retry_errors"
RESCUE_TASK = "collage.rescue"
CLEANUP_TASK = "collage.cleanup"

# Where collages are written: never a photo to read.
COLLAGE_PREFIX = "collages"

# One lock per SKU: Procrastinate runs one job per lock, and the queueing lock of the same name
# keeps one waiting. SQL builds it as 'product:' || id.
LOCK_PREFIX = "product:"

# Set (locally) by the hourly retry's transaction: the trigger then keeps the SKU's rounds count.
HOURLY_RETRY_SETTING = "collage.hourly_retry"

# Maintenance jobs go ahead of a backlog of builds (Procrastinate takes higher priority first).
MAINTENANCE_PRIORITY = 100

# SIGTERM lets running builds finish for this long before they are queued again.
GRACEFUL_TIMEOUT_S = 60
# Procrastinate sends a heartbeat every 10 s; a worker without one for this long is dead and its
# jobs are rescued. It must exceed the drain at shutdown, during which no heartbeat is sent.
STALLED_WORKER_S = 120
# Three missed heartbeats: the worker counts as not alive in `collage health` and the views.
HEARTBEAT_MAX_AGE_S = 30


def sku_lock(product_id: int) -> str:
    """The lock and queueing lock of a SKU's build jobs."""
    return f"{LOCK_PREFIX}{product_id}"
