//! # dstack-sdk
//!
//! The async Rust core of dstack: one library that every front end (the `dstack-server`
//! binary, the Python, Node and Swift bindings, and your own Rust programs) wraps.
//!
//! | module | what it holds |
//! |---|---|
//! | [`models`] | the dstack 0.22 wire types (users, projects, backends, fleets, runs, offers, …) |
//! | [`spec`] | parsing and defaulting of user input: shorthands, `.dstack.yml`, server `config.yml` |
//! | [`offers`] | gpuhunt-format catalogs, a columnar index, and the gpuhunt-exact matcher |
//!
//! ```
//! use dstack_sdk::spec::parse_gpu_spec;
//! let gpu = parse_gpu_spec("A100:80GB:2").unwrap();
//! assert_eq!(gpu.name.as_deref(), Some(&["A100".to_string()][..]));
//! ```
#![warn(missing_docs)]

#[cfg(feature = "agent")]
pub mod agent;
#[cfg(feature = "backends")]
pub mod backends;
#[cfg(any(feature = "client", feature = "engine"))]
pub mod client;
#[cfg(feature = "engine")]
pub mod engine;
pub mod error;
#[cfg(feature = "http")]
pub mod http;
pub mod models;
pub mod offers;
pub mod routes;
pub mod spec;
#[cfg(feature = "ssh")]
pub mod ssh;

pub use error::{Error, ErrorKind, HttpShape, Result};

/// The dstack release whose API this SDK speaks.
pub const DSTACK_VERSION: &str = "0.22.5";

/// The version our server reports: `<dstack version>-v<our build>`.
pub const SERVER_VERSION: &str = "0.22.5-v1";
