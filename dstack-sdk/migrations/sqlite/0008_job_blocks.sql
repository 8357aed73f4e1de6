-- Blocks (shared instances): a job gives its blocks back to its instance exactly once, also
-- when the engine is killed between releasing the instance and writing the job's final
-- status (the release is redone on the next tick and must not count twice).
ALTER TABLE jobs ADD COLUMN instance_released BOOLEAN NOT NULL DEFAULT FALSE;
