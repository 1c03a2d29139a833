-- Adoption on a production schema (issue 18): the downloader's table keeps its own rules.
--
-- 1. A cancelled SKU is a row in collage_cancellations, for the upload it cancelled, not an
--    image_status of its own: a CHECK constraint on image_status may refuse any value but the
--    downloader's. SKUs an earlier version marked 'cancelled' move there, back to 'uploaded'.
-- 2. A build is queued by AFTER triggers, which fire only for rows that were written: an
--    INSERT ... ON CONFLICT DO UPDATE used to queue a job for the row it proposed (a phantom id
--    from the sequence) as well as for the row it updated. BEFORE triggers still count the
--    upload generation and stamp uploaded_at, so that the row written carries them.
-- 3. The function those triggers run is SECURITY DEFINER: the downloader's role, which only
--    writes raw_products, needs no rights on the queue's tables.

SET LOCAL lock_timeout = '10s';

CREATE TABLE IF NOT EXISTS collage_cancellations (
    product_id   bigint PRIMARY KEY,
    generation   bigint NOT NULL,  -- the upload cancelled: a new upload ends the cancellation
    cancelled_at timestamptz NOT NULL DEFAULT now(),
    cancelled_by text NOT NULL
);

DROP TRIGGER IF EXISTS raw_products_upload_inserted ON raw_products;
DROP TRIGGER IF EXISTS raw_products_upload_status ON raw_products;
DROP TRIGGER IF EXISTS raw_products_upload_urls ON raw_products;

-- With the triggers gone, this is not a new upload of those SKUs: their generation stays.
INSERT INTO collage_cancellations (product_id, generation, cancelled_at, cancelled_by)
SELECT id, upload_generation, updated_at,
       coalesce(substring(error_message FROM '^cancelled by (.*); `collage requeue'), 'an operator')
  FROM raw_products WHERE image_status = 'cancelled'
    ON CONFLICT (product_id) DO NOTHING;
UPDATE raw_products SET image_status = 'uploaded', error_message = NULL
 WHERE image_status = 'cancelled';

-- A new upload (BEFORE the row is written): count the generation, stamp it.
CREATE OR REPLACE FUNCTION collage_new_upload() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.upload_generation IS DISTINCT FROM OLD.upload_generation THEN
        RETURN NEW;  -- counted already by the other trigger of this statement
    END IF;
    NEW.upload_generation := CASE WHEN TG_OP = 'UPDATE' THEN OLD.upload_generation + 1 ELSE 1 END;
    NEW.uploaded_at := now();
    RETURN NEW;
END;
$$;

-- A new upload written (AFTER): its retry rounds start afresh (the hourly retry marks its own
-- transaction with collage.hourly_retry and keeps the count), a cancellation of an older upload
-- ends, and its build is queued.
CREATE OR REPLACE FUNCTION collage_queue_upload() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
BEGIN
    IF current_setting('collage.hourly_retry', true) IS DISTINCT FROM 'on' THEN
        DELETE FROM collage_retry_rounds WHERE product_id = NEW.id;
    END IF;
    DELETE FROM collage_cancellations WHERE product_id = NEW.id;
    PERFORM collage_enqueue(NEW.id, 0, NULL, NEW.upload_generation, NEW.brand);
    RETURN NULL;
END;
$$;

DO $$
DECLARE
    path text := format('pg_catalog, %I, pg_temp', current_schema());
BEGIN
    EXECUTE format('ALTER FUNCTION collage_new_upload() SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION collage_queue_upload() SET search_path = %s', path);
END;
$$;

CREATE TRIGGER raw_products_upload_inserted
    BEFORE INSERT ON raw_products
    FOR EACH ROW WHEN (NEW.image_status = 'uploaded')
    EXECUTE FUNCTION collage_new_upload();

-- Fires whenever the statement sets image_status, even to the value it had.
CREATE TRIGGER raw_products_upload_status
    BEFORE UPDATE OF image_status ON raw_products
    FOR EACH ROW WHEN (NEW.image_status = 'uploaded')
    EXECUTE FUNCTION collage_new_upload();

-- New photos on a SKU that is still 'uploaded' (runs after _status: triggers go by name).
CREATE TRIGGER raw_products_upload_urls
    BEFORE UPDATE OF image_urls ON raw_products
    FOR EACH ROW WHEN (NEW.image_status = 'uploaded' AND OLD.image_urls IS DISTINCT FROM NEW.image_urls)
    EXECUTE FUNCTION collage_new_upload();

CREATE TRIGGER raw_products_upload_queued
    AFTER INSERT ON raw_products
    FOR EACH ROW WHEN (NEW.image_status = 'uploaded')
    EXECUTE FUNCTION collage_queue_upload();

CREATE TRIGGER raw_products_upload_requeued
    AFTER UPDATE ON raw_products
    FOR EACH ROW WHEN (NEW.image_status = 'uploaded'
                       AND NEW.upload_generation IS DISTINCT FROM OLD.upload_generation)
    EXECUTE FUNCTION collage_queue_upload();

-- The views: a SKU's cancellation, and the 'uploaded' SKUs that no job covers yet (rows that
-- were 'uploaded' before the triggers existed, or written with them disabled).
CREATE OR REPLACE VIEW collage_sku_jobs AS
SELECT p.id AS product_id,
       p.brand,
       p.external_id,
       p.image_status,
       p.error_message,
       p.collage_url,
       p.updated_at,
       CASE WHEN jsonb_typeof(p.image_urls) = 'array' THEN jsonb_array_length(p.image_urls) END
           AS photos,
       j.id AS job_id,
       j.status::text AS job_status,
       (j.args ->> 'attempt')::int AS attempt,
       (SELECT count(*) FROM procrastinate_jobs a WHERE a.lock = 'product:' || p.id) AS jobs_total,
       ev.queued_at,
       j.scheduled_at AS retry_at,
       ev.started_at,
       ev.finished_at,
       o.message AS last_error,
       CASE
           WHEN j.status = 'todo' THEN now() - greatest(ev.queued_at, j.scheduled_at)
           WHEN j.status IS DISTINCT FROM 'doing' AND p.image_status = 'uploaded'
                AND c.product_id IS NULL
               THEN now() - p.updated_at
       END AS waiting_for,
       CASE WHEN j.status = 'doing' THEN now() - ev.started_at END AS running_for,
       c.cancelled_at,
       c.cancelled_by
  FROM raw_products p
  LEFT JOIN LATERAL (
        SELECT * FROM procrastinate_jobs j
         WHERE j.lock = 'product:' || p.id ORDER BY j.id DESC LIMIT 1
  ) j ON true
  LEFT JOIN LATERAL (
        SELECT min(e.at) FILTER (WHERE e.type = 'deferred') AS queued_at,
               max(e.at) FILTER (WHERE e.type = 'started') AS started_at,
               max(e.at) FILTER (WHERE e.type IN ('succeeded', 'failed', 'aborted', 'cancelled'))
                   AS finished_at
          FROM procrastinate_events e WHERE e.job_id = j.id
  ) ev ON true
  LEFT JOIN LATERAL (
        SELECT o.message FROM collage_outcomes o
         WHERE o.product_id = p.id AND o.outcome IN ('error', 'retry')
         ORDER BY o.id DESC LIMIT 1
  ) o ON true
  LEFT JOIN collage_cancellations c
    ON c.product_id = p.id AND c.generation = p.upload_generation AND p.image_status = 'uploaded';

CREATE OR REPLACE VIEW collage_queue_summary AS
SELECT count(*) FILTER (WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now()))
           AS waiting,
       count(*) FILTER (WHERE j.status = 'todo' AND j.scheduled_at > now()
                          AND j.scheduled_at <> 'infinity') AS retry_later,
       count(*) FILTER (WHERE j.status = 'doing') AS running,
       -- 120 s: collage.constants.STALLED_WORKER_S, the longest a silent worker keeps its jobs.
       count(*) FILTER (WHERE j.status = 'doing'
                          AND (w.id IS NULL OR w.last_heartbeat < now() - interval '120 seconds'))
           AS stalled,
       count(*) FILTER (WHERE j.status = 'failed') AS failed_jobs,
       -- The oldest due job is the one with the smallest id (ids grow as jobs are queued):
       -- one index probe, where min() over every waiting job's events took 70-100 ms at 100,000.
       (SELECT now() - e.at
          FROM procrastinate_jobs t JOIN procrastinate_events e ON e.job_id = t.id AND e.type = 'deferred'
         WHERE t.status = 'todo' AND (t.scheduled_at IS NULL OR t.scheduled_at <= now())
         ORDER BY t.id LIMIT 1
       ) AS oldest_waiting_for,
       -- 30 s: three missed heartbeats, as `collage health` counts them.
       (SELECT count(*) FROM procrastinate_workers
         WHERE last_heartbeat > now() - interval '30 seconds') AS workers_alive,
       (SELECT count(*) FROM raw_products WHERE image_status = 'uploaded') AS skus_uploaded,
       (SELECT count(*) FROM raw_products WHERE image_status = 'error') AS skus_error,
       (SELECT count(*) FROM collage_outcomes
         WHERE outcome = 'built' AND finished_at > now() - interval '1 hour') AS built_last_hour,
       (SELECT count(*) FROM collage_outcomes
         WHERE outcome = 'error' AND finished_at > now() - interval '1 hour') AS errors_last_hour,
       count(*) FILTER (WHERE j.status = 'todo' AND j.scheduled_at = 'infinity') AS paused,
       (SELECT coalesce(array_agg(scope ORDER BY scope), '{}') FROM collage_pauses) AS paused_scopes,
       (SELECT count(*) FROM collage_cancellations c
          JOIN raw_products p ON p.id = c.product_id AND p.upload_generation = c.generation
         WHERE p.image_status = 'uploaded') AS skus_cancelled,
       (SELECT count(*) FROM raw_products p
         WHERE p.image_status = 'uploaded'
           AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs q
                            WHERE q.lock = 'product:' || p.id AND q.status IN ('todo', 'doing'))
           AND NOT EXISTS (SELECT 1 FROM collage_cancellations c
                            WHERE c.product_id = p.id AND c.generation = p.upload_generation))
           AS skus_unqueued
  FROM procrastinate_jobs j
  LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
 WHERE j.queue_name = 'collage' AND j.status IN ('todo', 'doing', 'failed');
