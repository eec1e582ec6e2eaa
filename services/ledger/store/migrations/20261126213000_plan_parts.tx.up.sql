-- A job is finished only once its whole plan is known: outcomes can be
-- applied before the plan (redelivery after a crash reorders events), and a
-- plan may come in parts. plan_parts is the number of parts announced,
-- planned_parts the parts applied so far.
ALTER TABLE jobs ADD COLUMN plan_parts integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN planned_parts integer[] NOT NULL DEFAULT '{}';
UPDATE jobs SET plan_parts = 1, planned_parts = '{1}' WHERE planned;
