-- collage: no-transaction
-- What the web console's pages need to answer within 200 ms at 1,000,000 SKUs and 100,000
-- waiting jobs (bin/bench-pipeline --console measures each page with and without these). Built
-- CONCURRENTLY: neither the downloader's writes nor the queue wait while they build.

-- The queue summary (collage_queue_summary: the console's overview, `collage jobs`, the
-- metrics) counts the waiting, running and failed jobs. Without this index it reads every job
-- kept for 14 days, finished ones included (a parallel sequential scan of procrastinate_jobs);
-- with it, only the jobs it counts, from the index alone.
CREATE INDEX CONCURRENTLY IF NOT EXISTS collage_jobs_active_idx
    ON procrastinate_jobs (queue_name, status) INCLUDE (scheduled_at, worker_id)
    WHERE status IN ('todo', 'doing', 'failed');

-- The console finds a SKU by its external_id alone, whatever its brand: the (brand,
-- external_id) index of 006 cannot serve that, and the table would be read whole.
CREATE INDEX CONCURRENTLY IF NOT EXISTS raw_products_external_id_idx
    ON raw_products (external_id);

-- The summary counts the cancelled SKUs, and `collage requeue --cancelled` lists them oldest
-- first: without this index each reads the whole table (a parallel sequential scan, 150 ms at
-- 1,000,000 SKUs). Partial, like 004's for 'uploaded' and 'error': cancelled SKUs are few.
CREATE INDEX CONCURRENTLY IF NOT EXISTS raw_products_cancelled_updated_idx
    ON raw_products (image_status, updated_at)
    WHERE image_status = 'cancelled';

-- A SKU's jobs with the outcome of each (the console's SKU page, `collage show`) look
-- outcomes up by job: without this index, two sequential scans of the ledger per job.
CREATE INDEX CONCURRENTLY IF NOT EXISTS collage_outcomes_job_idx
    ON collage_outcomes (job_id, id);

-- Builds waiting out a retry's back-off (the console's failure groups): a few, found without
-- reading every waiting job (40 ms at 100,000). Paused builds wait until 'infinity': not here.
CREATE INDEX CONCURRENTLY IF NOT EXISTS collage_jobs_retry_later_idx
    ON procrastinate_jobs (scheduled_at)
    WHERE status = 'todo' AND scheduled_at IS NOT NULL AND scheduled_at <> 'infinity';
