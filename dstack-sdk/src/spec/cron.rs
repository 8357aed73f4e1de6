//! Validation of crontab expressions (`schedule.cron`) with the rules dstack applies
//! (APScheduler 3's `CronTrigger.from_crontab`): five whitespace-separated fields — minute,
//! hour, day of month, month, day of week (0 = Monday … 6 = Sunday, or `mon`…`sun`).

use std::sync::LazyLock;

use regex::Regex;

struct FieldRule {
    name: &'static str,
    min: i64,
    max: i64,
}

const FIELDS: [FieldRule; 5] = [
    FieldRule {
        name: "minute",
        min: 0,
        max: 59,
    },
    FieldRule {
        name: "hour",
        min: 0,
        max: 23,
    },
    FieldRule {
        name: "day",
        min: 1,
        max: 31,
    },
    FieldRule {
        name: "month",
        min: 1,
        max: 12,
    },
    FieldRule {
        name: "day_of_week",
        min: 0,
        max: 6,
    },
];

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

static ALL_RE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"^\*(?:/(\d+))?\n?$").ok());
static RANGE_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^(\d+)(?:-(\d+))?(?:/(\d+))?\n?$").ok());
static NAME_RANGE_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?i)^([a-z]+)(?:-([a-z]+))?").ok());
static LAST_RE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"(?i)^last").ok());

fn num(s: Option<regex::Match<'_>>) -> Result<Option<i64>, String> {
    match s {
        None => Ok(None),
        Some(m) => m
            .as_str()
            .parse()
            .map(Some)
            .map_err(|_| format!("Invalid number {}", m.as_str())),
    }
}

fn check_step(step: Option<i64>) -> Result<(), String> {
    if step == Some(0) {
        return Err("Increment must be higher than 0".into());
    }
    Ok(())
}

fn validate_range(
    rule: &FieldRule,
    expr: &str,
    first: i64,
    last: Option<i64>,
    step: Option<i64>,
) -> Result<(), String> {
    check_step(step)?;
    let last = if last.is_none() && step.is_none() {
        Some(first)
    } else {
        last
    };
    if let Some(l) = last
        && first > l
    {
        return Err("The minimum value in a range must not be higher than the maximum".into());
    }
    let ctx = |m: String| format!("Error validating expression {expr:?}: {m}");
    let total = rule.max - rule.min;
    if let Some(s) = step
        && s > total
    {
        return Err(ctx(format!(
            "the step value ({s}) is higher than the total range of the expression ({total})"
        )));
    }
    if first < rule.min {
        return Err(ctx(format!(
            "the first value ({first}) is lower than the minimum value ({})",
            rule.min
        )));
    }
    if let Some(l) = last
        && l > rule.max
    {
        return Err(ctx(format!(
            "the last value ({l}) is higher than the maximum value ({})",
            rule.max
        )));
    }
    // APScheduler treats a last value of 0 as "unset" here (`self.last or MAX`).
    let range = match last {
        Some(l) if l != 0 => l,
        _ => rule.max,
    } - first;
    if let Some(s) = step
        && s > range
    {
        return Err(ctx(format!(
            "the step value ({s}) is higher than the total range of the expression ({range})"
        )));
    }
    Ok(())
}

fn named(list: &[&str], name: &str, what: &str) -> Result<i64, String> {
    let lower = name.to_lowercase();
    list.iter()
        .position(|x| *x == lower)
        .map(|i| i as i64)
        .ok_or_else(|| format!("Invalid {what} name \"{name}\""))
}

fn compile_expression(index: usize, expr: &str) -> Result<(), String> {
    let rule = &FIELDS[index];
    let re = |r: &LazyLock<Option<Regex>>| r.as_ref().and_then(|re| re.captures(expr));
    if let Some(c) = re(&ALL_RE) {
        let step = num(c.get(1))?;
        check_step(step)?;
        let total = rule.max - rule.min;
        if let Some(s) = step
            && s > total
        {
            return Err(format!(
                "Error validating expression {expr:?}: the step value ({s}) is higher than \
                 the total range of the expression ({total})"
            ));
        }
        return Ok(());
    }
    if let Some(c) = re(&RANGE_RE) {
        let first = num(c.get(1))?.unwrap_or(0);
        return validate_range(rule, expr, first, num(c.get(2))?, num(c.get(3))?);
    }
    match rule.name {
        "day" if re(&LAST_RE).is_some() => return Ok(()),
        "month" | "day_of_week" => {
            if let Some(c) = re(&NAME_RANGE_RE) {
                let (list, what, base): (&[&str], &str, i64) = if rule.name == "month" {
                    (&MONTHS, "month", 1)
                } else {
                    (&WEEKDAYS, "weekday", 0)
                };
                let first = named(list, c.get(1).map_or("", |m| m.as_str()), what)? + base;
                let last = match c.get(2) {
                    Some(m) if !m.as_str().is_empty() => {
                        Some(named(list, m.as_str(), what)? + base)
                    }
                    _ => None,
                };
                return validate_range(rule, expr, first, last, None);
            }
        }
        _ => {}
    }
    Err(format!(
        "Unrecognized expression \"{expr}\" for field \"{}\"",
        rule.name
    ))
}

/// Validates a crontab expression; the error says what is wrong.
pub fn validate_cron(expr: &str) -> Result<(), String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "Wrong number of fields; got {}, expected 5",
            fields.len()
        ));
    }
    for (i, field) in fields.iter().enumerate() {
        for part in field.split(',') {
            compile_expression(i, part.trim_matches(' '))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_cron;

    #[test]
    fn crons() {
        for ok in [
            "0 * * * *",
            "*/5 1-3 * jan-mar mon-fri",
            "0 0 last * *",
            "0 0 1,15 * 0-6",
            "0 12 * * sun",
        ] {
            assert!(validate_cron(ok).is_ok(), "{ok}");
        }
        for bad in [
            "0 * * *",
            "60 * * * *",
            "* * * * 7",
            "*/0 * * * *",
            "* * 0 * *",
            "x * * * *",
            "5-1 * * * *",
        ] {
            assert!(validate_cron(bad).is_err(), "{bad}");
        }
    }
}
