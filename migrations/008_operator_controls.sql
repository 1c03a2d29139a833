-- Operators' controls: pause and resume (everything, or a brand), and fair shares across brands.
--
-- Pause: a paused build waits with scheduled_at = 'infinity' (never due, never lost); new
-- uploads keep being queued that way; resuming makes them due again. The state lives here, so
-- it survives worker restarts.
--
-- Fair shares: a job's priority is minus its tag. A brand's next tag follows its last waiting
-- one, but never starts before the tag at the head of the queue: a brand that just arrived is
-- served next to the head, whatever the backlog of another brand, and each brand keeps its own
-- order (start-time fair queueing). Tags restart from 0 whenever the queue drains. Within one
-- transaction a brand's tags come from a transaction-local setting, so a 100,000-row UPDATE
-- looks the queue up once per brand, not once per row.

CREATE TABLE IF NOT EXISTS collage_pauses (
    scope     text PRIMARY KEY,  -- '*' for everything, else a brand
    paused_at timestamptz NOT NULL DEFAULT now(),
    paused_by text NOT NULL,
    reason    text
);

CREATE OR REPLACE FUNCTION collage_paused(brand text) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (SELECT 1 FROM collage_pauses WHERE scope IN ('*', brand))
$$;

CREATE OR REPLACE FUNCTION collage_next_tag(brand text) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    setting text := 'collage.tag_' || md5(coalesce(brand, ''));
    last text := current_setting(setting, true);
    head bigint;
    tail bigint;
    tag bigint;
BEGIN
    IF last IS NOT NULL AND last <> '' THEN
        tag := last::bigint + 1;
    ELSE
        SELECT -max(j.priority) INTO head FROM procrastinate_jobs j
         WHERE j.status = 'todo' AND j.task_name = 'collage.build' AND j.priority <= 0
           AND (j.scheduled_at IS NULL OR j.scheduled_at <= now());
        SELECT -min(j.priority) INTO tail FROM procrastinate_jobs j
         WHERE j.status = 'todo' AND j.task_name = 'collage.build'
           AND j.args ->> 'brand' = brand;
        tag := greatest(coalesce(head, 0), coalesce(tail + 1, 0));
    END IF;
    PERFORM set_config(setting, tag::text, true);
    RETURN tag;
END;
$$;

DROP FUNCTION IF EXISTS collage_enqueue(bigint, integer, interval, bigint);

-- As in 005, and: the job carries its brand; its priority is its brand's next tag; a paused
-- brand's job waits until resumed.
CREATE FUNCTION collage_enqueue(
    product_id bigint,
    attempt integer DEFAULT 0,
    run_after interval DEFAULT NULL,
    generation bigint DEFAULT NULL,
    brand text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    job_id bigint;
    lock_name text := 'product:' || product_id;
    wanted bigint := generation;
    owner text := brand;
    due timestamptz;
BEGIN
    IF wanted IS NULL OR owner IS NULL THEN
        SELECT coalesce(wanted, p.upload_generation), coalesce(owner, p.brand)
          INTO wanted, owner FROM raw_products p WHERE p.id = product_id;
    END IF;
    due := CASE
        WHEN collage_paused(owner) THEN 'infinity'::timestamptz
        WHEN run_after IS NOT NULL THEN now() + run_after
    END;
    INSERT INTO procrastinate_jobs AS j
        (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at)
    VALUES (
        'collage', 'collage.build', -least(collage_next_tag(owner), 2000000000), lock_name,
        lock_name,
        jsonb_build_object(
            'product_id', product_id, 'attempt', attempt, 'generation', wanted, 'brand', owner
        ),
        due
    )
    ON CONFLICT (queueing_lock) WHERE status = 'todo'
    DO UPDATE SET scheduled_at = EXCLUDED.scheduled_at, args = EXCLUDED.args
        WHERE coalesce((EXCLUDED.args ->> 'generation')::bigint, 0)
                  > coalesce((j.args ->> 'generation')::bigint, -1)
           OR (coalesce((EXCLUDED.args ->> 'generation')::bigint, 0)
                  = coalesce((j.args ->> 'generation')::bigint, -1)
               AND j.scheduled_at IS NOT NULL
               AND (EXCLUDED.scheduled_at IS NULL OR EXCLUDED.scheduled_at < j.scheduled_at))
    RETURNING id INTO job_id;
    RETURN job_id;
END;
$$;

CREATE OR REPLACE FUNCTION collage_new_upload() RETURNS trigger
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
    PERFORM collage_enqueue(NEW.id, 0, NULL, NEW.upload_generation, NEW.brand);
    RETURN NEW;
END;
$$;

DO $$
DECLARE
    path text := format('pg_catalog, %I, pg_temp', current_schema());
BEGIN
    EXECUTE format('ALTER FUNCTION collage_enqueue(bigint, integer, interval, bigint, text) SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION collage_new_upload() SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION collage_next_tag(text) SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION collage_paused(text) SET search_path = %s', path);
END;
$$;

-- The views, with pauses: a paused job is neither waiting nor a retry for later.
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
       (SELECT now() - min(e.at)
          FROM procrastinate_jobs t JOIN procrastinate_events e ON e.job_id = t.id AND e.type = 'deferred'
         WHERE t.status = 'todo' AND (t.scheduled_at IS NULL OR t.scheduled_at <= now())
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
       (SELECT count(*) FROM raw_products WHERE image_status = 'cancelled') AS skus_cancelled
  FROM procrastinate_jobs j
  LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
 WHERE j.queue_name = 'collage' AND j.status IN ('todo', 'doing', 'failed');
