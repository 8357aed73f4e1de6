//! Job logs (dstack-api.md §2.10): `logs/poll` over the `job_logs` table the job pipeline
//! fills. Messages are returned base64-encoded; `next_token` is the row sequence number of the
//! last event of a full page.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use crate::Error;
use crate::engine::Engine;
use crate::engine::auth::Ctx;
use crate::models::logs::{JobSubmissionLogs, LogEvent, LogEventSource, PollLogsRequest};

use super::{parse_body, to_json};

fn micros(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp_micros())
}

impl Engine {
    pub(crate) async fn logs_poll(&self, ctx: &Ctx, body: Option<Value>) -> crate::Result<Value> {
        let req: PollLogsRequest = parse_body(body)?;
        if req.limit > 1000 {
            return Err(Error::validation(
                &["body", "limit"],
                "Input should be less than or equal to 1000",
            ));
        }
        let project = ctx.project()?;
        let token = match req.next_token.as_deref() {
            None | Some("") => None,
            Some(t) => Some(t.parse::<i64>().map_err(|_| {
                Error::bad_request(format!("Invalid next_token: {t}. Must be a valid integer."))
            })?),
        };
        let source = if req.diagnose { "runner" } else { "stdout" };
        let sql = if req.descending {
            "SELECT seq, timestamp_us, message FROM job_logs WHERE project_id = $1 \
             AND job_submission_id = $2 AND log_source = $3 AND ($4 IS NULL OR seq < $4) \
             AND ($5 IS NULL OR timestamp_us > $5) AND ($6 IS NULL OR timestamp_us < $6) \
             ORDER BY seq DESC LIMIT $7"
        } else {
            "SELECT seq, timestamp_us, message FROM job_logs WHERE project_id = $1 \
             AND job_submission_id = $2 AND log_source = $3 AND ($4 IS NULL OR seq > $4) \
             AND ($5 IS NULL OR timestamp_us > $5) AND ($6 IS NULL OR timestamp_us < $6) \
             ORDER BY seq ASC LIMIT $7"
        };
        let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(sql)
            .bind(&project.id)
            .bind(req.job_submission_id.to_string())
            .bind(source)
            .bind(token)
            .bind(micros(req.start_time))
            .bind(micros(req.end_time))
            .bind(i64::from(req.limit))
            .fetch_all(self.store().reader())
            .await?;
        let next_token = if req.limit > 0 && rows.len() == req.limit as usize {
            rows.last().map(|r| r.0.to_string())
        } else {
            None
        };
        let logs = rows
            .iter()
            .map(|(_, ts, msg)| {
                let at = Utc.timestamp_micros(*ts).single().unwrap_or_default();
                LogEvent::from_bytes(at, LogEventSource::Stdout, msg)
            })
            .collect();
        to_json(&JobSubmissionLogs {
            logs,
            external_url: None,
            next_token,
        })
    }
}
