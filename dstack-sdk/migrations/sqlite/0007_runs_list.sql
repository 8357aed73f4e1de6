-- `runs/list` (dstack ps): an index in the list's order, so a page is read in order and the
-- LIMIT stops the scan (no sort of every run with its spec), and a revision of each run's jobs,
-- bumped by triggers on every change a run's API model shows, so that a cached model of the
-- run can be checked against one column of the run row (engine/run_json_cache.rs).
CREATE INDEX runs_list_order ON runs (submitted_at DESC, id ASC);

ALTER TABLE runs ADD COLUMN jobs_rev INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER jobs_rev_insert AFTER INSERT ON jobs BEGIN
    UPDATE runs SET jobs_rev = jobs_rev + 1 WHERE id = NEW.run_id;
END;

CREATE TRIGGER jobs_rev_delete AFTER DELETE ON jobs BEGIN
    UPDATE runs SET jobs_rev = jobs_rev + 1 WHERE id = OLD.run_id;
END;

CREATE TRIGGER jobs_rev_update AFTER UPDATE OF
    run_id, job_num, replica_num, submission_num, deployment_num, submitted_at,
    last_processed_at, finished_at, status, termination_reason, termination_reason_message,
    exit_status, job_spec_data, job_provisioning_data, job_runtime_data, instance_id
ON jobs BEGIN
    UPDATE runs SET jobs_rev = jobs_rev + 1 WHERE id = NEW.run_id;
END;
