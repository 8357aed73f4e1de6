//! Job and runner logs: a bounded in-memory tail backed by a JSON-lines file, so that
//! `pull?timestamp=` can hand out anything newer than a timestamp — after an agent restart, or
//! after the server was away long enough for the memory tail to roll over — plus the line
//! assembly and ANSI stripping applied to captured output.

use std::collections::VecDeque;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::agent::error::{AgentError, AgentResult};
use crate::agent::protocol::LogEvent;

/// One persisted event: `t` timestamp (ms), `m` base64 message, `o` the source offset
/// consumed up to and including this event (job output only).
#[derive(Serialize, Deserialize)]
struct Line {
    t: i64,
    m: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<u64>,
}

/// An append-only event log: memory tail + JSON-lines file.
#[derive(Debug)]
pub struct LogStream {
    path: PathBuf,
    memory: VecDeque<LogEvent>,
    memory_bytes: usize,
    max_memory_bytes: usize,
    /// The newest event dropped from memory (it and older ones are on disk only).
    evicted_up_to: Option<i64>,
    last_timestamp: Option<i64>,
    last_offset: u64,
}

impl LogStream {
    /// Opens (or creates on first append) the stream at `path`, loading its tail.
    pub fn open(path: impl Into<PathBuf>, max_memory_bytes: usize) -> AgentResult<Self> {
        let mut stream = Self {
            path: path.into(),
            memory: VecDeque::new(),
            memory_bytes: 0,
            max_memory_bytes,
            evicted_up_to: None,
            last_timestamp: None,
            last_offset: 0,
        };
        if stream.path.exists() {
            let mut events = Vec::new();
            read_lines(&stream.path, |line| {
                if let Some(o) = line.o {
                    stream.last_offset = o;
                }
                events.push(decode(line)?);
                Ok(true)
            })?;
            for e in events {
                stream.last_timestamp = Some(e.timestamp);
                stream.push_memory(e);
            }
        }
        Ok(stream)
    }

    /// Appends events (in timestamp order) and records `offset` as consumed.
    pub fn append(&mut self, events: Vec<LogEvent>, offset: Option<u64>) -> AgentResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        let n = events.len();
        for (i, e) in events.iter().enumerate() {
            let line = Line {
                t: e.timestamp,
                m: base64::engine::general_purpose::STANDARD.encode(&e.message),
                o: if i + 1 == n { offset } else { None },
            };
            serde_json::to_writer(&mut buf, &line).map_err(|e| AgentError::json("log line", e))?;
            buf.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| AgentError::io("cannot open log file", &self.path, e))?;
        f.write_all(&buf)
            .map_err(|e| AgentError::io("cannot write log file", &self.path, e))?;
        if let Some(o) = offset {
            self.last_offset = o;
        }
        for e in events {
            self.last_timestamp = Some(e.timestamp);
            self.push_memory(e);
        }
        Ok(())
    }

    fn push_memory(&mut self, e: LogEvent) {
        self.memory_bytes += e.message.len();
        self.memory.push_back(e);
        while self.memory_bytes > self.max_memory_bytes && self.memory.len() > 1 {
            if let Some(old) = self.memory.pop_front() {
                self.memory_bytes -= old.message.len();
                self.evicted_up_to = Some(old.timestamp);
            }
        }
    }

    /// The newest event's timestamp.
    pub fn last_timestamp(&self) -> Option<i64> {
        self.last_timestamp
    }

    /// The source offset consumed so far (job output).
    pub fn last_offset(&self) -> u64 {
        self.last_offset
    }

    /// Events newer than `after` and not newer than `until`, oldest first, while `budget`
    /// (message bytes) lasts; at least one event is returned when any qualifies. The second
    /// value tells whether the budget cut the answer short.
    pub fn since(
        &self,
        after: i64,
        until: i64,
        budget: &mut usize,
    ) -> AgentResult<(Vec<LogEvent>, bool)> {
        let in_memory = self.evicted_up_to.is_none_or(|t| after >= t);
        let mut out = Vec::new();
        let mut truncated = false;
        let mut take = |e: LogEvent, out: &mut Vec<LogEvent>| -> bool {
            if e.timestamp <= after || e.timestamp > until {
                return true;
            }
            if !out.is_empty() && e.message.len() > *budget {
                truncated = true;
                return false;
            }
            *budget = budget.saturating_sub(e.message.len());
            out.push(e);
            true
        };
        if in_memory {
            let start = self.memory.partition_point(|e| e.timestamp <= after);
            for e in self.memory.range(start..) {
                if !take(e.clone(), &mut out) {
                    break;
                }
            }
        } else {
            read_lines(&self.path, |line| {
                if line.t <= after {
                    return Ok(true);
                }
                Ok(take(decode(line)?, &mut out))
            })?;
        }
        Ok((out, truncated))
    }
}

fn decode(line: Line) -> AgentResult<LogEvent> {
    let message = base64::engine::general_purpose::STANDARD
        .decode(line.m.as_bytes())
        .map_err(|e| AgentError::Internal(format!("corrupt log line: {e}")))?;
    Ok(LogEvent {
        message,
        timestamp: line.t,
    })
}

/// Calls `f` for each well-formed line until it returns `false`; a torn last line (a crash
/// mid-write) is ignored. Returns the number of lines read.
fn read_lines(path: &Path, mut f: impl FnMut(Line) -> AgentResult<bool>) -> AgentResult<usize> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(AgentError::io("cannot open log file", path, e)),
    };
    let mut n = 0;
    for raw in std::io::BufReader::new(file).split(b'\n') {
        let raw = raw.map_err(|e| AgentError::io("cannot read log file", path, e))?;
        let Ok(line) = serde_json::from_slice::<Line>(&raw) else {
            continue;
        };
        n += 1;
        if !f(line)? {
            break;
        }
    }
    Ok(n)
}

/// Cuts captured output into line chunks: complete lines are emitted at once; an unfinished
/// line is emitted when it has waited `max_delay` or grown to `max_len` (progress bars, prompts).
#[derive(Debug)]
pub struct LineAssembler {
    pending: Vec<u8>,
    pending_since: Option<Instant>,
    max_delay: Duration,
    max_len: usize,
}

impl LineAssembler {
    /// An assembler with the given flush limits.
    pub fn new(max_delay: Duration, max_len: usize) -> Self {
        Self {
            pending: Vec::new(),
            pending_since: None,
            max_delay,
            max_len,
        }
    }

    /// Bytes held back (not yet emitted).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Feeds `data`; returns the chunks ready to emit.
    pub fn push(&mut self, data: &[u8], now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for piece in data.split_inclusive(|&b| b == b'\n') {
            if self.pending.is_empty() {
                self.pending_since = Some(now);
            }
            self.pending.extend_from_slice(piece);
            if piece.ends_with(b"\n") {
                out.push(std::mem::take(&mut self.pending));
                self.pending_since = None;
            } else {
                while self.pending.len() >= self.max_len {
                    let rest = self.pending.split_off(self.max_len);
                    out.push(std::mem::replace(&mut self.pending, rest));
                }
                if self.pending.is_empty() {
                    self.pending_since = None;
                }
            }
        }
        out
    }

    /// Emits the unfinished line if it has waited long enough.
    pub fn flush_stale(&mut self, now: Instant) -> Option<Vec<u8>> {
        let since = self.pending_since?;
        (now.duration_since(since) >= self.max_delay)
            .then(|| self.flush())
            .flatten()
    }

    /// Emits whatever is held back.
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        self.pending_since = None;
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }
}

/// Removes ANSI escape sequences (CSI such as colours and cursor moves, OSC such as window
/// titles and hyperlinks, and two-byte escapes) from captured output, as dstack stores job
/// logs without them. Cursor movements and carriage returns are not interpreted.
pub fn strip_ansi(data: &[u8]) -> Vec<u8> {
    const ESC: u8 = 0x1b;
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] != ESC {
            out.push(data[i]);
            i += 1;
            continue;
        }
        match data.get(i + 1) {
            Some(b'[') => {
                // CSI: parameters and intermediates, then one final byte in 0x40..=0x7e.
                let mut j = i + 2;
                while j < data.len() && !(0x40..=0x7e).contains(&data[j]) {
                    j += 1;
                }
                i = j + 1;
            }
            Some(b']') => {
                // OSC: until BEL or ESC '\'.
                let mut j = i + 2;
                loop {
                    match data.get(j) {
                        None => break,
                        Some(0x07) => {
                            j += 1;
                            break;
                        }
                        Some(&ESC) if data.get(j + 1) == Some(&b'\\') => {
                            j += 2;
                            break;
                        }
                        Some(_) => j += 1,
                    }
                }
                i = j;
            }
            Some(_) => {
                // nF escapes: intermediates in 0x20..=0x2f, then one final byte.
                let mut j = i + 1;
                while j < data.len() && (0x20..=0x2f).contains(&data[j]) {
                    j += 1;
                }
                i = j + 1;
            }
            None => i += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: i64, m: &str) -> LogEvent {
        LogEvent {
            message: m.as_bytes().to_vec(),
            timestamp: t,
        }
    }

    #[test]
    fn memory_tail_and_disk_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job_logs.jsonl");
        let mut s = LogStream::open(&path, 10).unwrap();
        s.append(vec![ev(1, "aaaa"), ev(2, "bbbb")], Some(8))
            .unwrap();
        s.append(vec![ev(3, "cccc")], Some(12)).unwrap();
        // Only the newest events fit in 10 bytes of memory; older ones come from disk.
        let mut budget = usize::MAX;
        let (all, cut) = s.since(0, i64::MAX, &mut budget).unwrap();
        assert!(!cut);
        assert_eq!(
            all.iter().map(|e| e.timestamp).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let (newer, _) = s.since(2, i64::MAX, &mut usize::MAX.clone()).unwrap();
        assert_eq!(newer, vec![ev(3, "cccc")]);
        // Budget: at least one event, then stop.
        let mut budget = 5;
        let (some, cut) = s.since(0, i64::MAX, &mut budget).unwrap();
        assert!(cut);
        assert_eq!(some.len(), 1);
        // `until` bounds the answer.
        let (bounded, _) = s.since(0, 2, &mut usize::MAX.clone()).unwrap();
        assert_eq!(bounded.len(), 2);

        // Reopening restores events and the consumed offset.
        let s2 = LogStream::open(&path, 1024).unwrap();
        assert_eq!(s2.last_offset(), 12);
        assert_eq!(s2.last_timestamp(), Some(3));
        let (all2, _) = s2.since(0, i64::MAX, &mut usize::MAX.clone()).unwrap();
        assert_eq!(all2.len(), 3);
    }

    #[test]
    fn torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        std::fs::write(&path, "{\"t\":1,\"m\":\"aGkK\"}\n{\"t\":2,\"m\":\"a").unwrap();
        let s = LogStream::open(&path, 1024).unwrap();
        assert_eq!(s.last_timestamp(), Some(1));
    }

    #[test]
    fn line_assembly() {
        let t0 = Instant::now();
        let mut a = LineAssembler::new(Duration::from_millis(500), 8);
        assert_eq!(a.push(b"hello\nwor", t0), vec![b"hello\n".to_vec()]);
        assert_eq!(a.pending_len(), 3);
        assert_eq!(a.flush_stale(t0 + Duration::from_millis(100)), None);
        assert_eq!(a.push(b"ld\n", t0), vec![b"world\n".to_vec()]);
        assert_eq!(a.push(b"0123456789", t0), vec![b"01234567".to_vec()]);
        assert_eq!(
            a.flush_stale(t0 + Duration::from_secs(1)),
            Some(b"89".to_vec())
        );
        assert_eq!(a.flush(), None);
    }

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(strip_ansi(b"\x1b[1;32mok\x1b[0m done\n"), b"ok done\n");
        assert_eq!(
            strip_ansi(b"\x1b]0;title\x07text\x1b]8;;http://x\x1b\\link"),
            b"textlink"
        );
        assert_eq!(strip_ansi(b"a\x1b(Bb\x1b"), b"ab");
        assert_eq!(strip_ansi("ünïcode\n".as_bytes()), "ünïcode\n".as_bytes());
    }
}
