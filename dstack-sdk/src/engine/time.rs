//! Timestamps as stored: RFC 3339 UTC text with microseconds, which sorts as text.

use chrono::{DateTime, Utc};

/// Now, truncated to microseconds (the precision that round-trips through the store).
pub(crate) fn now() -> DateTime<Utc> {
    let n = Utc::now();
    DateTime::from_timestamp_micros(n.timestamp_micros()).unwrap_or(n)
}

/// The stored text form.
pub(crate) fn to_db(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses the stored text form (`None` for garbage, which the schema never writes).
pub(crate) fn from_db(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
