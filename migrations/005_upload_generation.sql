-- Every write that sets image_status = 'uploaded' starts a new generation of the SKU, whether or
-- not anything else changed: the downloader stores originals under fixed keys, so a re-download
-- often writes the same image_urls. The job carries the generation it builds, and its result is
-- written only while the row, locked, still has that generation (collage/products.py).
--
-- Also: the project's functions run with a pinned search_path (pg_catalog first, then the schema
-- they were created in, pg_temp last), so that nothing on a caller's path can shadow
-- procrastinate_jobs or a built-in.

-- Adding a column with a constant default does not rewrite the table; do not queue behind a long
-- transaction on it for more than a few seconds either (collage migrate can simply run again).
SET LOCAL lock_timeout = '10s';

-- Columns of this project's own: raw_products' other columns belong to the downloader.
ALTER TABLE raw_products ADD COLUMN IF NOT EXISTS upload_generation bigint NOT NULL DEFAULT 0;
ALTER TABLE raw_products ADD COLUMN IF NOT EXISTS uploaded_at timestamptz;

DROP TRIGGER IF EXISTS raw_products_enqueue_on_insert ON raw_products;
DROP TRIGGER IF EXISTS raw_products_enqueue_on_update ON raw_products;
DROP FUNCTION IF EXISTS collage_enqueue_uploaded();
DROP FUNCTION IF EXISTS collage_enqueue(bigint, integer, interval);

-- Queue a build of the SKU's current generation (or of `generation`). At most one build waits per
-- SKU (the queueing lock 'product:<id>'): a newer generation takes over the waiting job, bringing
-- it forward and starting its attempts again; an older one is absorbed. Returns the job's id, or
-- NULL when the waiting job already covers it.
CREATE FUNCTION collage_enqueue(
    product_id bigint,
    attempt integer DEFAULT 0,
    run_after interval DEFAULT NULL,
    generation bigint DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    job_id bigint;
    lock_name text := 'product:' || product_id;
    wanted bigint := generation;
BEGIN
    IF wanted IS NULL THEN
        SELECT p.upload_generation INTO wanted FROM raw_products p WHERE p.id = product_id;
    END IF;
    INSERT INTO procrastinate_jobs AS j
        (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at)
    VALUES (
        'collage', 'collage.build', 0, lock_name, lock_name,
        jsonb_build_object('product_id', product_id, 'attempt', attempt, 'generation', wanted),
        CASE WHEN run_after IS NULL THEN NULL ELSE now() + run_after END
    )
    ON CONFLICT (queueing_lock) WHERE status = 'todo'
    DO UPDATE SET scheduled_at = EXCLUDED.scheduled_at, args = EXCLUDED.args
        WHERE coalesce((EXCLUDED.args ->> 'generation')::bigint, 0)
                  > coalesce((j.args ->> 'generation')::bigint, -1)
           OR (coalesce((EXCLUDED.args ->> 'generation')::bigint, 0)
                  = coalesce((j.args ->> 'generation')::bigint, -1)
               AND j.scheduled_at IS NOT NULL AND EXCLUDED.scheduled_at IS NULL)
    RETURNING id INTO job_id;
    RETURN job_id;
END;
$$;

-- A new upload: count the generation, remember when, give the SKU its automatic retry rounds
-- afresh (the hourly retry marks its own transaction with collage.hourly_retry and keeps the
-- count) and queue its build, all before the row is written.
CREATE FUNCTION collage_new_upload() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.upload_generation IS DISTINCT FROM OLD.upload_generation THEN
        RETURN NEW;  -- counted already by the other trigger of this statement
    END IF;
    NEW.upload_generation := CASE WHEN TG_OP = 'UPDATE' THEN OLD.upload_generation + 1 ELSE 1 END;
    NEW.uploaded_at := now();
    IF current_setting('collage.hourly_retry', true) IS DISTINCT FROM 'on' THEN
        DELETE FROM collage_retry_rounds WHERE product_id = NEW.id;
    END IF;
    PERFORM collage_enqueue(NEW.id, 0, NULL, NEW.upload_generation);
    RETURN NEW;
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

DO $$
DECLARE
    path text := format('pg_catalog, %I, pg_temp', current_schema());
BEGIN
    EXECUTE format('ALTER FUNCTION collage_enqueue(bigint, integer, interval, bigint) SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION collage_new_upload() SET search_path = %s', path);
END;
$$;
