-- collage: no-transaction
-- Indexes on tables that staging already fills: built CONCURRENTLY so the downloader's writes
-- and the queue are not blocked while they build. Each statement runs on its own (CONCURRENTLY
-- cannot run in a transaction); a re-run after a failure is safe: `collage migrate` drops and
-- rebuilds an index that a failed CONCURRENTLY build left INVALID.

-- The sweep and the error retry look for SKUs by status.
CREATE INDEX CONCURRENTLY IF NOT EXISTS raw_products_image_status_updated_idx
    ON raw_products (image_status, updated_at)
    WHERE image_status IN ('uploaded', 'error');

CREATE INDEX CONCURRENTLY IF NOT EXISTS scraper_logs_name_started_idx
    ON scraper_logs (scraper_name, started_at DESC);

-- A SKU's jobs by their lock ('product:<id>') whatever their status: `collage show`, the
-- views, the write guard. Procrastinate's own indexes on lock cover only running jobs.
CREATE INDEX CONCURRENTLY IF NOT EXISTS collage_jobs_lock_idx ON procrastinate_jobs (lock, id DESC);
