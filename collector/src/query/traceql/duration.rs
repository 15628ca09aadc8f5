//! Go-style duration strings (`time.ParseDuration`), as used by TraceQL
//! duration literals and by Tempo's `minDuration` / `maxDuration` parameters.

const NANOS_PER_UNIT: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("\u{00b5}s", 1_000), // µs, MICRO SIGN
    ("\u{03bc}s", 1_000), // μs, GREEK SMALL LETTER MU
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// The unit suffixes accepted by [`parse_duration`], for error messages.
pub(crate) const UNITS_HELP: &str = "ns, us, µs, ms, s, m, h";

/// Fraction digits beyond this many cannot change the result by a whole
/// nanosecond (the largest unit is 3.6e12 ns), so they are ignored.
const MAX_FRACTION_DIGITS: u32 = 18;

/// Parses a Go-style duration into nanoseconds: an optional sign, then one
/// or more `<decimal number><unit>` parts (`300ms`, `1.5h`, `2h45m`, `1m0s`,
/// `-1.5s`); units are `ns`, `us` (or `µs`/`μs`), `ms`, `s`, `m`, `h`. As in
/// Go, a lone `0` needs no unit. Returns `None` for anything else, including
/// values outside the `i64` nanosecond range. Fractions are truncated to
/// whole nanoseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        // integer part
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        rest = after_int;
        // fraction part
        let mut frac_digits = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            let (digits, after_frac) = after_dot.split_at(frac_len);
            frac_digits = digits;
            rest = after_frac;
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return None;
        }
        // unit: everything up to the next digit or '.'
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let (unit, after_unit) = rest.split_at(unit_len);
        rest = after_unit;
        let unit_nanos = NANOS_PER_UNIT.iter().find(|(name, _)| *name == unit).map(|(_, n)| *n)?;

        let mut int_value: u128 = 0;
        for d in int_digits.bytes() {
            int_value = int_value.checked_mul(10)?.checked_add(u128::from(d - b'0'))?;
            if int_value > u128::from(u64::MAX) {
                return None;
            }
        }
        let mut frac_value: u128 = 0;
        let mut scale: u128 = 1;
        for d in frac_digits.bytes().take(MAX_FRACTION_DIGITS as usize) {
            frac_value = frac_value * 10 + u128::from(d - b'0');
            scale *= 10;
        }
        total = total
            .checked_add(int_value.checked_mul(unit_nanos)?)?
            .checked_add(frac_value * unit_nanos / scale)?;
        if total > u128::from(u64::MAX) {
            return None;
        }
    }
    if negative {
        // i64::MIN's magnitude is one more than i64::MAX
        if total > u128::from(i64::MAX.unsigned_abs()) + 1 {
            return None;
        }
        i64::try_from(-(total as i128)).ok()
    } else {
        i64::try_from(total).ok()
    }
}
