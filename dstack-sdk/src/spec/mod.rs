//! Parsing and defaulting of user input: resource shorthands, `.dstack.yml` configurations,
//! requirement building and combination, and the server's `config.yml`.

pub mod combine;
pub mod common;
pub mod configuration;
pub mod cron;
pub mod duration;
pub mod error;
pub mod fleets;
pub mod gateways;
pub mod lax;
pub mod net;
pub mod normalize;
pub mod paths;
pub mod profiles;
pub mod query;
pub mod resources;
pub mod run_configuration;
pub mod server_config;
pub mod shorthand;
pub mod volumes;

pub use error::{FieldPath, SpecError};
pub use shorthand::{
    parse_compute_capability, parse_cpu_spec, parse_disk_spec, parse_gpu_spec, parse_memory,
    parse_memory_range, parse_range_int,
};
