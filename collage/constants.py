"""Names and timings that SQL and Python share, written once.

The migrations are plain SQL and cannot import these: tests/unit/test_constants.py reads every
migration and fails when one spells a name or a number differently.
"""

from __future__ import annotations

QUEUE = "collage"
# The periodic jobs have a queue and a worker of their own in every worker process: they never
# wait for a build slot, however long the builds take.
MAINTENANCE_QUEUE = "collage_maintenance"
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

# Maintenance jobs also go ahead of builds where one worker takes both queues (Procrastinate's
# own `procrastinate worker`): it takes higher priority first.
MAINTENANCE_PRIORITY = 100

# SIGTERM lets running builds finish for this long before they are queued again.
GRACEFUL_TIMEOUT_S = 60
# Then an upload already in flight is given this long to land before its SKU is handed over.
HANDOVER_S = 30
# And Procrastinate this long to record what it aborted: the whole drain is the sum.
SHUTDOWN_SLACK_S = 10


def drain_s(graceful_timeout_s: float) -> float:
    """How long a worker may take to stop after SIGTERM, given its grace period."""
    return graceful_timeout_s + HANDOVER_S + SHUTDOWN_SLACK_S


DRAIN_S = drain_s(GRACEFUL_TIMEOUT_S)

# A running job's worker holds a session advisory lock (LIVENESS_LOCK_SPACE, job id) for it on a
# connection of its own: PostgreSQL drops the lock the moment that connection dies (a killed
# worker, an OOM kill), and the rescue then takes the job back within seconds.
LIVENESS_LOCK_SPACE = 73_240_195
RESCUE_EVERY_S = 5
HEARTBEAT_EVERY_S = 5
# A job whose lock is gone is dead once its worker has also missed three heartbeats (a worker
# whose lock connection is just reconnecting keeps beating).
DEAD_WORKER_S = 3 * HEARTBEAT_EVERY_S
# A worker still holding its locks but silent this long has vanished with its sockets open (a
# host lost): its jobs are rescued too. It must exceed the drain, during which no heartbeat is
# sent but the locks are held.
STALLED_WORKER_S = 120
# Three missed heartbeats: the worker counts as not alive in `collage health` and the views.
HEARTBEAT_MAX_AGE_S = 30
# A SKU whose builds killed their worker this many times (per upload) is marked 'error'.
MAX_WORKER_DEATHS = 3


def sku_lock(product_id: int) -> str:
    """The lock and queueing lock of a SKU's build jobs."""
    return f"{LOCK_PREFIX}{product_id}"
