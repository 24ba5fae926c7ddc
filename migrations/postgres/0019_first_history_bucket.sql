-- A collector's history is read newest first, bucket by bucket (ADR 0081): a page that did not
-- fill walked down to the oldest bucket of the whole history. `first_bucket` is at or below the
-- bucket of the collector's first transition, so its pages stop there (ADR 0082). NULL: unknown,
-- the whole history is walked.
ALTER TABLE collectors ADD COLUMN first_bucket BIGINT;
-- The history lock every writer takes before it appends (src/store/cluster.rs, HISTORY_LOCK):
-- while the migration holds it, no transition is between taking its position and committing, so
-- the reads below see every position handed out. A node still running the old version waits.
SELECT pg_advisory_xact_lock(122528461582436);
-- First the bucket the history has reached, for every record: any transition not yet stored will
-- come after it. Then, for every record with a history, the bucket of its oldest transition.
UPDATE collectors SET first_bucket = (SELECT COALESCE(MAX(seq), 0) >> 12 FROM transitions);
UPDATE collectors SET first_bucket = f.seq >> 12
FROM (SELECT collector_id, MIN(seq) AS seq FROM transitions GROUP BY collector_id) AS f
WHERE f.collector_id = collectors.id;
