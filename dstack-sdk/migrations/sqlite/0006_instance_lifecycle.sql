-- Instance and fleet lifecycle (dstack-api.md §4.4, §5.6, §5.7).

-- When an unreachable cloud instance is given up and terminated with `unreachable`
-- (first failed health check + 20 min; NULL while reachable; never set for SSH instances).
ALTER TABLE instances ADD COLUMN termination_deadline TEXT;

-- When the fleet pipeline last consolidated the fleet with its `nodes` spec; the back-off
-- between attempts (1, 2, 5, 10, then 30 min by `consolidation_attempt`) counts from here.
ALTER TABLE fleets ADD COLUMN last_consolidated_at TEXT;

-- Cloud instances created before idle termination existed were stored with an idle time of
-- 0; give them dstack's fleet default (3 days) rather than terminating them at once.
UPDATE instances SET termination_idle_time = 259200
 WHERE termination_policy = 'DESTROY_AFTER_IDLE' AND termination_idle_time = 0;
