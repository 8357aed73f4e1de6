//! dstack 0.22 wire types, one file per resource.
//!
//! Requests parse leniently (unknown keys are ignored); responses emit every field, nulls
//! included, with dstack's datetime and UUID formats.

pub mod backends;
pub mod common;
pub mod configurations;
pub mod datetime;
pub mod errors;
pub mod fleets;
pub mod gateways;
pub mod instances;
pub mod jobs;
pub mod logs;
pub mod offers;
pub mod profiles;
pub mod projects;
pub mod resources;
pub mod runs;
pub mod secrets;
pub mod users;
pub mod volumes;
