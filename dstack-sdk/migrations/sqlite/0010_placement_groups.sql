-- Placement groups of cloud cluster fleets (dstack's PlacementGroupModel): created with the
-- first instance of an empty `placement: cluster` fleet, reused by its later instances, and
-- deleted in the cloud once the fleet is gone (or when an attempt did not use them).
CREATE TABLE placement_groups (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    fleet_id TEXT NOT NULL REFERENCES fleets (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    backend TEXT NOT NULL,
    region TEXT NOT NULL,
    backend_data TEXT,
    created_at TEXT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at TEXT
);
CREATE INDEX placement_groups_fleet ON placement_groups (fleet_id) WHERE deleted = FALSE;
