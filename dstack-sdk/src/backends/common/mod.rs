//! Plumbing every cloud shares (written once, used by each backend):
//!
//! | module | what |
//! |---|---|
//! | [`settings`] | [`BackendSettings`](settings::BackendSettings): server id, agent download, endpoint overrides, retry policy, catalog |
//! | [`retry`] | exponential back-off with jitter and a retry loop driven by an error classifier |
//! | [`http`] | a `reqwest` sender that retries 429 and 5xx with back-off (REST clouds) |
//! | [`endpoint`] | per-service endpoint overrides (settings or `DSTACK_<CLOUD>_ENDPOINT_URL`) |
//! | [`tags`] | the tag set every created resource carries (server, project, fleet, instance) |
//! | [`cloud_init`] | the `#cloud-config` user data and the host-agent bootstrap commands |
//! | [`offers`] | catalog rows → offers, dstack's disk defaults |
//! | [`provision`] | the offer fall-through loop (at most [`provision::MAX_OFFERS_TRIED`] offers) |

pub mod cloud_init;
pub mod endpoint;
pub mod http;
pub mod offers;
pub mod provision;
pub mod retry;
pub mod settings;
pub mod tags;
