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
