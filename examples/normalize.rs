//! Normalise a JSONL corpus of user inputs with dstack-sdk's spec parsers.
//!
//! ```text
//! cargo run -p dstack-sdk --example normalize -- tests/oracle/corpus/spec_values.jsonl
//! ```
//!
//! Each input line is `{"kind": K, "input": V}`; each output line is `{"ok": <normalised
//! json>}` or `{"err": "<message>"}`, in order — the same as `tests/oracle/dstack_normalize.py`
//! prints with the real dstack. Reads standard input when no file is given.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::ExitCode;

use serde_json::{Value, json};

fn normalize_line(line: &str) -> Value {
    let case: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return json!({"err": format!("bad corpus line: {e}")}),
    };
    let Some(kind) = case.get("kind").and_then(Value::as_str) else {
        return json!({"err": "corpus line has no kind"});
    };
    let input = case.get("input").cloned().unwrap_or(Value::Null);
    match dstack_sdk::spec::normalize::normalize(kind, input) {
        Ok(v) => json!({ "ok": v }),
        Err(e) => json!({ "err": e }),
    }
}

fn run(reader: Box<dyn BufRead>, out: &mut impl Write) -> std::io::Result<()> {
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        writeln!(out, "{}", normalize_line(&line))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let readers: Vec<Box<dyn BufRead>> = if paths.is_empty() {
        vec![Box::new(BufReader::new(std::io::stdin()))]
    } else {
        let mut v: Vec<Box<dyn BufRead>> = Vec::new();
        for p in &paths {
            match std::fs::File::open(p) {
                Ok(f) => v.push(Box::new(BufReader::new(f))),
                Err(e) => {
                    eprintln!("cannot open {p}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        v
    };
    for r in readers {
        if let Err(e) = run(r, &mut out) {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = out.flush() {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
