//! Numbers promql-parser turns into durations or timestamps (`x[5]`, `[1h:30]`, `offset 90`,
//! `@ 1700000000`) go through `Duration::from_secs_f64`, which panics on values it cannot
//! hold (`x[1e300]`, `[NaN]`). Those literals are checked in the raw text before parsing, so
//! such a query is an ordinary 400 rather than a panic (which a fuzzer or an abort-on-panic
//! build would not survive).
#![deny(clippy::arithmetic_side_effects)]

/// Seconds a duration or timestamp literal may hold at most (about 31 million years).
pub const MAX_SECONDS: f64 = 1e15;

#[derive(Debug, thiserror::Error)]
#[error("duration or timestamp {0:?} is out of range (at most {MAX_SECONDS:e} seconds)")]
pub struct LiteralError(String);

impl crate::error::Coded for LiteralError {
    fn code(&self) -> crate::error::ErrorCode {
        crate::error::ErrorCode::InvalidArgument
    }
}

/// Checks every number inside `[...]` and right after `offset` or `@`.
pub fn check_text(q: &str) -> Result<(), LiteralError> {
    let chars: Vec<char> = q.chars().collect();
    let mut i = 0usize;
    let mut brackets = 0usize;
    let mut pending = false; // after `offset` or `@`: the next number is a duration/time
    while let Some(&c) = chars.get(i) {
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '#' => {
                while chars.get(i).is_some_and(|c| *c != '\n') {
                    i = i.saturating_add(1);
                }
            }
            '[' => {
                brackets = brackets.saturating_add(1);
                i = i.saturating_add(1);
            }
            ']' => {
                brackets = brackets.saturating_sub(1);
                i = i.saturating_add(1);
            }
            '@' => {
                pending = true;
                i = i.saturating_add(1);
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == '.' => {
                let start = i;
                while chars.get(i).is_some_and(|c| {
                    c.is_ascii_alphanumeric() || *c == '_' || *c == '.' || *c == ':'
                }) || signed_exponent(&chars, i)
                {
                    i = i.saturating_add(1);
                }
                let token: String = chars.get(start..i).unwrap_or_default().iter().collect();
                if token.eq_ignore_ascii_case("offset") {
                    pending = true;
                    continue;
                }
                if brackets > 0 || pending {
                    check_number(&token)?;
                }
                pending = false;
            }
            _ => i = i.saturating_add(1),
        }
    }
    Ok(())
}

/// `+`/`-` directly after the `e` of a decimal number's exponent (`1e+5`).
fn signed_exponent(chars: &[char], i: usize) -> bool {
    matches!(chars.get(i), Some('+' | '-'))
        && i.checked_sub(1).and_then(|p| chars.get(p)).is_some_and(|c| matches!(c, 'e' | 'E'))
        && i.checked_sub(2)
            .and_then(|p| chars.get(p))
            .is_some_and(|c| c.is_ascii_digit() || *c == '.')
}

fn skip_string(chars: &[char], open: usize) -> usize {
    let quote = chars.get(open).copied();
    let mut i = open.saturating_add(1);
    while let Some(&c) = chars.get(i) {
        i = i.saturating_add(1);
        if Some(c) == quote {
            break;
        }
        if c == '\\' && quote != Some('`') {
            i = i.saturating_add(1);
        }
    }
    i
}

/// A range like `1h:30` holds two numbers; units (`5m`) are the parser's to read.
fn check_number(token: &str) -> Result<(), LiteralError> {
    for part in token.split(':') {
        let lower = part.to_ascii_lowercase();
        let lower = lower.trim_start_matches(['+', '-']);
        if matches!(lower, "inf" | "nan" | "infinity") {
            return Err(LiteralError(part.to_string()));
        }
        if let Ok(v) = part.parse::<f64>()
            && !(v.is_finite() && v.abs() <= MAX_SECONDS)
        {
            return Err(LiteralError(part.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_the_parser_cannot_turn_into_durations_are_refused() {
        for q in [
            "-_[33733333333333E333]",
            "x[1e300]",
            "rate(x[1e+300])",
            "x[NaN]",
            "max_over_time(x[1e300:1])",
            "max_over_time(x[5m:1e300])",
            "x offset 1e300",
            "x OFFSET 1e20",
            "x @ 1e300",
        ] {
            assert!(check_text(q).is_err(), "{q}");
        }
    }

    #[test]
    fn ordinary_ranges_offsets_and_numbers_pass() {
        for q in [
            "rate(x[5m])",
            "x[30]",
            "max_over_time(x[1h:30s])",
            "x offset 5m",
            "x @ 1700000000",
            "1e300 + x",
            "x{a=\"[1e300]\"}",
            "# [1e300]\nx",
            "x{le=\"+Inf\"}",
        ] {
            assert!(check_text(q).is_ok(), "{q}");
        }
    }
}
