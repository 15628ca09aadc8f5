//! Text formats of the `/ingest` API: `folded` (`a;b;c 100` — frames root first, then a space
//! and a count) and `lines` (one `a;b;c` stack per line, each counting 1).

use super::ProfileError;
use super::limits::Budget;
use super::model::{MAX_STACK_DEPTH, ProfileBuilder};
use super::pprof::sample_cost;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Folded,
    Lines,
}

/// Adds every line of `body` as a sample whose value is its count times `scale` (the sampling
/// period for CPU and wall profiles, see `push.rs`). Stacks keep their first (root-most)
/// [`MAX_STACK_DEPTH`] frames, and every sample is charged to `budget`.
pub fn parse(
    body: &[u8],
    format: Format,
    scale: i64,
    b: &mut ProfileBuilder,
    budget: &mut Budget,
) -> Result<(), ProfileError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ProfileError::Malformed(format!("{format:?} profile is not UTF-8: {e}")))?;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| ProfileError::Malformed(format!("line {}: {why}: {line:?}", n + 1));
        let (stack, count) = match format {
            Format::Lines => (line, 1),
            Format::Folded => {
                let (stack, count) =
                    line.rsplit_once(' ').ok_or_else(|| bad("expected \"a;b;c <count>\""))?;
                let count: i64 =
                    count.trim().parse().map_err(|_| bad("the count is not an integer"))?;
                if count < 0 {
                    return Err(bad("negative count"));
                }
                (stack, count)
            }
        };
        let value = count
            .checked_mul(scale)
            .ok_or_else(|| bad("the count times the sampling period overflows 64 bits"))?;
        // Frames past the cap are never interned, so a line of a million `;` costs nothing.
        let frames: Vec<u32> =
            stack.split(';').take(MAX_STACK_DEPTH).map(|f| b.function(f)).collect();
        budget.charge(sample_cost(frames.len(), 1))?;
        b.sample(frames, vec![value], Vec::new());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        body: &str,
        format: Format,
        scale: i64,
    ) -> Result<super::super::model::Profile, ProfileError> {
        let mut b = ProfileBuilder::new(vec!["t".into()], 0, vec![]);
        parse(body.as_bytes(), format, scale, &mut b, &mut Budget::new(1 << 20, 8))?;
        Ok(b.finish())
    }

    #[test]
    fn folded_lines_become_scaled_samples_with_shared_function_names() {
        let p = run("main;work;leaf 3\r\nmain;idle 1\n\n", Format::Folded, 10).unwrap();
        assert_eq!(p.functions, vec!["main", "work", "leaf", "idle"]);
        assert_eq!(p.samples[0].frames, vec![0, 1, 2]);
        assert_eq!(p.samples[0].values, vec![30]);
        assert_eq!(p.samples[1].frames, vec![0, 3]);
    }

    #[test]
    fn frames_may_contain_spaces_the_count_is_after_the_last_one() {
        let p = run("main;GET /a b 2\n", Format::Folded, 1).unwrap();
        assert_eq!(p.functions, vec!["main", "GET /a b"]);
        assert_eq!(p.samples[0].values, vec![2]);
    }

    #[test]
    fn lines_format_counts_each_line_once() {
        let p = run("a;b\na;b\n", Format::Lines, 1).unwrap();
        assert_eq!(p.samples.len(), 2);
        assert_eq!(p.samples[1].values, vec![1]);
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let e = run("a;b 1\nno-count\n", Format::Folded, 1).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(run("a;b x\n", Format::Folded, 1).is_err());
        assert!(run("a;b -1\n", Format::Folded, 1).is_err());
        assert!(matches!(
            parse(
                b"\xff\xfe 1",
                Format::Folded,
                1,
                &mut ProfileBuilder::default(),
                &mut Budget::new(1 << 20, 8)
            ),
            Err(ProfileError::Malformed(_))
        ));
    }

    #[test]
    fn overflowing_counts_are_refused_not_saturated() {
        let e = run("a;b 9223372036854775807\n", Format::Folded, 10_000_000).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        assert!(run("a;b 99999999999999999999\n", Format::Folded, 1).is_err());
    }

    #[test]
    fn very_deep_lines_keep_the_root_most_frames_and_intern_no_more() {
        let line =
            format!("{} 1\n", (0..100_000).map(|i| format!("f{i}")).collect::<Vec<_>>().join(";"));
        let p = run(&line, Format::Folded, 1).unwrap();
        assert_eq!(p.samples[0].frames.len(), MAX_STACK_DEPTH);
        assert_eq!(p.functions.len(), MAX_STACK_DEPTH);
        assert_eq!(p.functions[0], "f0");
    }

    #[test]
    fn many_stacks_past_the_budget_are_refused() {
        // 4 bytes a line, ~90 bytes a sample decoded: 256 KiB of lines under a 256 KiB budget.
        let body = "a 1\n".repeat(64 * 1024);
        let mut b = ProfileBuilder::new(vec!["t".into()], 0, vec![]);
        let e = parse(body.as_bytes(), Format::Folded, 1, &mut b, &mut Budget::new(256 << 10, 1));
        assert!(matches!(e, Err(ProfileError::TooComplex { .. })), "{e:?}");
    }
}
