-- New capacity for a job (dstack 0.22's placeholder instances): when a job's chosen fleet has
-- no reusable instance, a PENDING instance is reserved in the fleet for that job (this makes
-- `nodes.max` a hard limit and keeps `instance_num` unique); the job's worker then creates
-- the cloud instance and promotes the placeholder to PROVISIONING.
ALTER TABLE instances ADD COLUMN provisioning_job_id TEXT;
CREATE INDEX instances_provisioning_job ON instances (provisioning_job_id)
    WHERE provisioning_job_id IS NOT NULL;
