//! Job logs: [`LogEvent`], `logs/poll` request and response.
//!
//! On the wire `message` is base64 of the raw bytes; storage keeps plain text and the server
//! encodes when it reads. [`LogEvent::from_bytes`] and [`LogEvent::decode_message`] convert.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Which stream of the job a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogEventSource {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Which producer's log to read: the job's own output or the runner's diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogProducer {
    /// The runner's log (`diagnose: true`).
    Runner,
    /// The job's log.
    Job,
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    /// When the line was produced.
    #[serde(with = "crate::models::datetime")]
    pub timestamp: DateTime<Utc>,
    /// stdout or stderr.
    pub log_source: LogEventSource,
    /// The line: base64 of the raw bytes in API responses.
    pub message: String,
}

impl LogEvent {
    /// A log event whose `message` is the base64 of `bytes` (the API form).
    pub fn from_bytes(timestamp: DateTime<Utc>, log_source: LogEventSource, bytes: &[u8]) -> Self {
        Self {
            timestamp,
            log_source,
            message: B64.encode(bytes),
        }
    }

    /// Decodes the base64 `message` into raw bytes.
    pub fn decode_message(&self) -> Result<Vec<u8>, base64::DecodeError> {
        B64.decode(self.message.as_bytes())
    }
}

/// The `logs/poll` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSubmissionLogs {
    /// This page of log events.
    pub logs: Vec<LogEvent>,
    /// A link to the logs in an external viewer (CloudWatch, GCP), if any.
    #[serde(default)]
    pub external_url: Option<String>,
    /// Pass back as `next_token` to get the next page; `None` when there is no more.
    #[serde(default)]
    pub next_token: Option<String>,
}

fn default_logs_limit() -> u32 {
    100
}

/// Body of `POST /api/project/{p}/logs/poll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollLogsRequest {
    /// The run name.
    pub run_name: String,
    /// The job submission whose logs to read.
    pub job_submission_id: Uuid,
    /// Ascending: only events strictly after this time.
    #[serde(with = "crate::models::datetime::option", default)]
    pub start_time: Option<DateTime<Utc>>,
    /// Ascending: stop at events at or after this time.
    #[serde(with = "crate::models::datetime::option", default)]
    pub end_time: Option<DateTime<Utc>>,
    /// Newest first when true.
    #[serde(default)]
    pub descending: bool,
    /// The cursor from the previous page.
    #[serde(default)]
    pub next_token: Option<String>,
    /// Page size, 0..=1000 (default 100).
    #[serde(default = "default_logs_limit")]
    pub limit: u32,
    /// Read the runner's log instead of the job's.
    #[serde(default)]
    pub diagnose: bool,
}

impl PollLogsRequest {
    /// A request for the first page of `run_name`'s submission with dstack's defaults.
    pub fn new(run_name: impl Into<String>, job_submission_id: Uuid) -> Self {
        Self {
            run_name: run_name.into(),
            job_submission_id,
            start_time: None,
            end_time: None,
            descending: false,
            next_token: None,
            limit: default_logs_limit(),
            diagnose: false,
        }
    }

    /// Which producer's log this request reads.
    pub fn producer(&self) -> LogProducer {
        if self.diagnose {
            LogProducer::Runner
        } else {
            LogProducer::Job
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn poll_round_trip() {
        let resp = json!({
            "logs": [
                {"timestamp": "2025-05-06T07:08:09.010000Z", "log_source": "stdout", "message": "aGVsbG8K"},
                {"timestamp": "2025-05-06T07:08:10Z", "log_source": "stderr", "message": "/w=="}
            ],
            "external_url": null,
            "next_token": "2"
        });
        let logs: JobSubmissionLogs = serde_json::from_value(resp.clone()).unwrap();
        assert_eq!(logs.logs[0].decode_message().unwrap(), b"hello\n");
        assert_eq!(logs.logs[1].decode_message().unwrap(), vec![0xff]);
        assert_eq!(serde_json::to_value(&logs).unwrap(), resp);
        let e = LogEvent::from_bytes(logs.logs[0].timestamp, LogEventSource::Stdout, b"hello\n");
        assert_eq!(e, logs.logs[0]);
    }

    #[test]
    fn poll_request_defaults() {
        let r: PollLogsRequest = serde_json::from_value(json!({
            "run_name": "train", "job_submission_id": "3F2504E0-4F89-41D3-9A0C-0305E82C3301"
        }))
        .unwrap();
        assert_eq!(r.limit, 100);
        assert_eq!(r.producer(), LogProducer::Job);
        assert_eq!(
            serde_json::to_value(&r).unwrap()["job_submission_id"],
            json!("3f2504e0-4f89-41d3-9a0c-0305e82c3301")
        );
        assert_eq!(r, PollLogsRequest::new("train", r.job_submission_id));
    }
}
