-- Enqueue a collage job in the same transaction that marks a SKU 'uploaded'.
--
-- collage_enqueue() is the only place that knows how Procrastinate stores a job (its
-- procrastinate_jobs table and the partial unique index behind queueing locks). Procrastinate's
-- SQL is not a public API: tests/test_enqueue.py fails if an upgrade changes what this relies on.
--
-- One SKU has one lock ('product:<id>'): Procrastinate runs at most one job per lock, and the
-- queueing lock of the same name keeps at most one job waiting. A second upload while a job
-- waits is absorbed by the waiting job, which reads the row when it starts; if that job was
-- parked for a retry later on, the new upload brings it forward and resets its attempts.
CREATE OR REPLACE FUNCTION collage_enqueue(
    product_id bigint,
    attempt integer DEFAULT 0,
    run_after interval DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    job_id bigint;
    lock_name text := 'product:' || product_id;
BEGIN
    INSERT INTO procrastinate_jobs
        (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at)
    VALUES (
        'collage', 'collage.build', 0, lock_name, lock_name,
        jsonb_build_object('product_id', product_id, 'attempt', attempt),
        CASE WHEN run_after IS NULL THEN NULL ELSE now() + run_after END
    )
    ON CONFLICT (queueing_lock) WHERE status = 'todo'
    DO UPDATE SET scheduled_at = NULL, args = EXCLUDED.args
        WHERE procrastinate_jobs.scheduled_at IS NOT NULL AND EXCLUDED.scheduled_at IS NULL
    RETURNING id INTO job_id;
    RETURN job_id;
END;
$$;

CREATE OR REPLACE FUNCTION collage_enqueue_uploaded() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- A new upload gives the SKU its automatic retry rounds afresh; the hourly retry itself
    -- (which marks its transaction with SET LOCAL collage.hourly_retry) keeps the count.
    IF current_setting('collage.hourly_retry', true) IS DISTINCT FROM 'on' THEN
        DELETE FROM collage_retry_rounds WHERE product_id = NEW.id;
    END IF;
    PERFORM collage_enqueue(NEW.id);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS raw_products_enqueue_on_insert ON raw_products;
CREATE TRIGGER raw_products_enqueue_on_insert
    AFTER INSERT ON raw_products
    FOR EACH ROW WHEN (NEW.image_status = 'uploaded')
    EXECUTE FUNCTION collage_enqueue_uploaded();

DROP TRIGGER IF EXISTS raw_products_enqueue_on_update ON raw_products;
CREATE TRIGGER raw_products_enqueue_on_update
    AFTER UPDATE OF image_status, image_urls ON raw_products
    FOR EACH ROW WHEN (
        NEW.image_status = 'uploaded'
        AND (OLD.image_status IS DISTINCT FROM 'uploaded'
             OR OLD.image_urls IS DISTINCT FROM NEW.image_urls)
    )
    EXECUTE FUNCTION collage_enqueue_uploaded();

-- One row per finished build attempt: what the sweep's scraper_logs summary, `collage show`
-- and the demo read. Pruned with the finished jobs.
CREATE TABLE IF NOT EXISTS collage_outcomes (
    id          bigserial PRIMARY KEY,
    product_id  bigint NOT NULL,
    job_id      bigint,
    outcome     text NOT NULL CHECK (outcome IN ('built', 'error', 'retry', 'superseded')),
    error_class text,
    message     text,
    photos      integer,
    bytes_out   bigint,
    duration_s  double precision,
    finished_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS collage_outcomes_finished_idx ON collage_outcomes (finished_at);
CREATE INDEX IF NOT EXISTS collage_outcomes_product_idx ON collage_outcomes (product_id, finished_at);

-- How many times the hourly retry has put an errored SKU back: it gives up after a few rounds
-- so a SKU that is truly broken waits for a person (`collage requeue` clears the count).
CREATE TABLE IF NOT EXISTS collage_retry_rounds (
    product_id    bigint PRIMARY KEY,
    rounds        integer NOT NULL,
    last_retry_at timestamptz NOT NULL DEFAULT now()
);
