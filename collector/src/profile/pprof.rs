//! pprof (perftools.profiles) decoding into the normalized [`Profile`]: symbolized stacks,
//! one value per sample type, and the string labels of every sample.

use std::collections::HashMap;

use prost::Message;

use super::limits::Budget;
use super::model::{Label, MAX_STACK_DEPTH, Profile, ProfileBuilder, ProfileType, Sample};
use super::{ProfileError, wire};

/// Messages generated from `proto/perftools/profiles/profile.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}

/// Before this, a pprof `time_nanos` is taken as unset: old pyroscope agents wrote
/// microseconds there, which land in 1970.
const MIN_PLAUSIBLE_TIME_NS: i64 = 365 * 24 * 3600 * 1_000_000_000;

/// Decodes a pprof body, gzip-compressed (as Go's runtime writes it) or plain, within the push's
/// budget: inflation counts against the push's sum, and the decoded message is charged before
/// prost allocates it. Returns the message and its charge (release it once it is dropped).
pub fn decode(raw: &[u8], budget: &mut Budget) -> Result<(pb::Profile, usize), ProfileError> {
    let inflated;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        inflated = budget.gunzip(raw)?;
        inflated.as_slice()
    } else {
        raw
    };
    let cost = wire::scan(bytes, wire::Message::Pprof, budget).map_err(|e| match e {
        ProfileError::Malformed(m) => ProfileError::Malformed(format!("pprof: {m}")),
        e => e,
    })?;
    let p =
        pb::Profile::decode(bytes).map_err(|e| ProfileError::Malformed(format!("pprof: {e}")))?;
    Ok((p, cost))
}

/// Decodes and converts one pprof profile, charging what it produces to `budget`.
pub fn read(raw: &[u8], ctx: Context<'_>, budget: &mut Budget) -> Result<Profile, ProfileError> {
    let (decoded, cost) = decode(raw, budget)?;
    let profile = to_profile(&decoded, ctx, budget);
    drop(decoded);
    budget.release(cost);
    profile
}

/// How to read one pprof profile.
pub struct Context<'a> {
    /// The profile type name (`__name__`, e.g. `process_cpu`); derived from the sample types
    /// when absent, as Pyroscope does for `/ingest`.
    pub name: Option<&'a str>,
    pub labels: Vec<Label>,
    /// Used when the profile carries no plausible `time_nanos`.
    pub default_time_ns: i64,
    /// Sample type renames (`display-name` of a `sample_type_config`).
    pub renames: &'a HashMap<String, String>,
}

struct Strings<'a>(&'a [String]);

impl<'a> Strings<'a> {
    fn get(&self, i: i64) -> Result<&'a str, ProfileError> {
        usize::try_from(i).ok().and_then(|i| self.0.get(i)).map(|s| s.as_str()).ok_or_else(|| {
            ProfileError::Malformed(format!(
                "pprof: string index {i} outside a string table of {} entries",
                self.0.len()
            ))
        })
    }
}

/// The profile type name Pyroscope gives a pprof pushed without `__name__`.
fn metric_name(sample_types: &[String]) -> String {
    if sample_types.iter().any(|t| t == "wall") {
        return "wall".into();
    }
    for st in sample_types {
        let name = if st.contains("cpu") {
            "process_cpu"
        } else if st.contains("alloc_") || st.contains("inuse_") || st == "space" || st == "objects"
        {
            "memory"
        } else if st.contains("mutex_") {
            "mutex"
        } else if st.contains("block_") {
            "block"
        } else if st.contains("goroutines") {
            "goroutines"
        } else {
            continue;
        };
        return name.into();
    }
    sample_types.last().cloned().unwrap_or_else(|| "unknown".into())
}

/// Converts a decoded pprof profile. Out-of-range string, location or function references are
/// errors: a profile that refers to things it does not contain is damaged, not partial. Stacks
/// are cut to [`MAX_STACK_DEPTH`] while they are expanded, and every sample is charged to
/// `budget` before it is kept.
pub fn to_profile(
    p: &pb::Profile,
    ctx: Context<'_>,
    budget: &mut Budget,
) -> Result<Profile, ProfileError> {
    let strings = Strings(&p.string_table);
    let mut sample_types = Vec::with_capacity(p.sample_type.len());
    for st in &p.sample_type {
        let t = strings.get(st.r#type)?;
        let t = ctx.renames.get(t).map(|s| s.as_str()).unwrap_or(t);
        sample_types.push((t.to_string(), strings.get(st.unit)?.to_string()));
    }
    if sample_types.is_empty() && !p.sample.is_empty() {
        return Err(ProfileError::Malformed("pprof: samples without sample types".into()));
    }
    let name = match ctx.name {
        Some(n) => n.to_string(),
        None => metric_name(&sample_types.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>()),
    };
    let (period_type, period_unit) = match &p.period_type {
        Some(pt) => (strings.get(pt.r#type)?, strings.get(pt.unit)?),
        None => ("", ""),
    };
    let types = sample_types
        .iter()
        .map(|(t, u)| {
            ProfileType {
                name: name.clone(),
                sample_type: t.clone(),
                sample_unit: u.clone(),
                period_type: period_type.into(),
                period_unit: period_unit.into(),
            }
            .id()
        })
        .collect();
    let time_ns =
        if p.time_nanos >= MIN_PLAUSIBLE_TIME_NS { p.time_nanos } else { ctx.default_time_ns };
    let mut b = ProfileBuilder::new(types, time_ns, ctx.labels);

    // The index maps and the per-location frame cache below.
    let entries = p.function.len().saturating_add(p.location.len());
    budget.charge(entries.saturating_mul(INDEX_ENTRY_COST))?;
    let functions: HashMap<u64, &pb::Function> = p.function.iter().map(|f| (f.id, f)).collect();
    let locations: HashMap<u64, &pb::Location> = p.location.iter().map(|l| (l.id, l)).collect();
    // Frames of each location, innermost first, resolved once.
    let mut frames_of: HashMap<u64, Vec<u32>> = HashMap::new();
    for s in &p.sample {
        if s.value.len() != sample_types.len() {
            return Err(ProfileError::Malformed(format!(
                "pprof: a sample has {} values for {} sample types",
                s.value.len(),
                sample_types.len()
            )));
        }
        // Root first: locations are leaf first and a location's lines innermost first, so both
        // are walked backwards, and expansion stops at the depth cap — an inlined location
        // referenced many times never materialises more than the cap.
        let mut stack: Vec<u32> = Vec::with_capacity(s.location_id.len().min(MAX_STACK_DEPTH));
        for id in s.location_id.iter().rev() {
            if !frames_of.contains_key(id) {
                let loc = locations.get(id).ok_or_else(|| {
                    ProfileError::Malformed(format!(
                        "pprof: sample refers to missing location {id}"
                    ))
                })?;
                let frames = location_frames(loc, &functions, &strings, &mut b)?;
                frames_of.insert(*id, frames);
            }
            let room = MAX_STACK_DEPTH.saturating_sub(stack.len());
            if let Some(f) = frames_of.get(id).filter(|_| room > 0) {
                stack.extend(f.iter().rev().take(room));
            }
        }
        let mut labels = Vec::new();
        for l in &s.label {
            // Numeric labels (e.g. bytes of an allocation) are not label values to select on.
            if l.str == 0 {
                continue;
            }
            let key = strings.get(l.key)?;
            if !key.is_empty() {
                let value = strings.get(l.str)?;
                budget.charge(LABEL_COST.saturating_add(key.len()).saturating_add(value.len()))?;
                labels.push(Label::new(key, value));
            }
        }
        budget.charge(sample_cost(stack.len(), s.value.len()))?;
        b.sample(stack, s.value.clone(), labels);
    }
    Ok(b.finish())
}

/// What indexing one function or location costs (hash map entries, the cached frame list).
const INDEX_ENTRY_COST: usize = 64;

/// What a kept label costs beyond its two strings' bytes.
const LABEL_COST: usize = std::mem::size_of::<Label>();

/// What a kept sample costs: the struct, its frames and its values.
pub fn sample_cost(frames: usize, values: usize) -> usize {
    std::mem::size_of::<Sample>()
        .saturating_add(frames.saturating_mul(std::mem::size_of::<u32>()))
        .saturating_add(values.saturating_mul(std::mem::size_of::<i64>()))
}

fn location_frames(
    loc: &pb::Location,
    functions: &HashMap<u64, &pb::Function>,
    strings: &Strings<'_>,
    b: &mut ProfileBuilder,
) -> Result<Vec<u32>, ProfileError> {
    if loc.line.is_empty() {
        // Unsymbolized: the address is all there is.
        return Ok(vec![b.function(&format!("0x{:x}", loc.address))]);
    }
    let mut out = Vec::with_capacity(loc.line.len());
    for line in &loc.line {
        let f = functions.get(&line.function_id).ok_or_else(|| {
            ProfileError::Malformed(format!(
                "pprof: location {} refers to missing function {}",
                loc.id, line.function_id
            ))
        })?;
        let mut name = strings.get(f.name)?;
        if name.is_empty() {
            name = strings.get(f.system_name)?;
        }
        out.push(b.function(if name.is_empty() { "unknown" } else { name }));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn budget() -> Budget {
        Budget::new(1 << 20, 8)
    }

    /// A CPU profile like Go's: samples/count and cpu/nanoseconds, stacks main→work→leaf and
    /// main→idle, the first labelled with a span.
    pub fn cpu_profile(time_nanos: i64) -> pb::Profile {
        let strings: Vec<String> = [
            "",
            "samples",
            "count",
            "cpu",
            "nanoseconds",
            "main",
            "work",
            "leaf",
            "idle",
            "span_id",
            "0102030405060708",
            "thread",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let func = |id: u64, name: i64| pb::Function { id, name, ..Default::default() };
        let loc = |id: u64, f: u64| pb::Location {
            id,
            line: vec![pb::Line { function_id: f, line: 1, column: 0 }],
            ..Default::default()
        };
        pb::Profile {
            sample_type: vec![
                pb::ValueType { r#type: 1, unit: 2 },
                pb::ValueType { r#type: 3, unit: 4 },
            ],
            sample: vec![
                pb::Sample {
                    location_id: vec![3, 2, 1],
                    value: vec![2, 20_000_000],
                    label: vec![
                        pb::Label { key: 9, str: 10, ..Default::default() },
                        pb::Label { key: 11, num: 7, ..Default::default() },
                    ],
                },
                pb::Sample { location_id: vec![4, 1], value: vec![1, 10_000_000], label: vec![] },
            ],
            location: vec![loc(1, 1), loc(2, 2), loc(3, 3), loc(4, 4)],
            function: vec![func(1, 5), func(2, 6), func(3, 7), func(4, 8)],
            string_table: strings,
            time_nanos,
            period_type: Some(pb::ValueType { r#type: 3, unit: 4 }),
            period: 10_000_000,
            ..Default::default()
        }
    }

    fn frames(p: &Profile, i: usize) -> Vec<&str> {
        p.samples[i].frames.iter().map(|f| p.functions[*f as usize].as_str()).collect()
    }

    #[test]
    fn cpu_pprof_yields_both_profile_types_root_first_stacks_and_string_labels() {
        let renames = HashMap::new();
        let ctx = Context { name: None, labels: vec![], default_time_ns: 5, renames: &renames };
        let p = to_profile(&cpu_profile(0), ctx, &mut budget()).unwrap();
        assert_eq!(
            p.profile_types,
            vec![
                "process_cpu:samples:count:cpu:nanoseconds",
                "process_cpu:cpu:nanoseconds:cpu:nanoseconds"
            ]
        );
        assert_eq!(p.time_ns, 5, "1970 times fall back to the push time");
        assert_eq!(frames(&p, 0), vec!["main", "work", "leaf"]);
        assert_eq!(frames(&p, 1), vec!["main", "idle"]);
        assert_eq!(p.samples[0].values, vec![2, 20_000_000]);
        assert_eq!(p.samples[0].labels, vec![Label::new("span_id", "0102030405060708")]);
    }

    #[test]
    fn inlined_lines_expand_innermost_last_from_the_root() {
        let mut prof = cpu_profile(0);
        // Location 3 holds leaf inlined into work: lines are innermost first.
        prof.location[2].line.push(pb::Line { function_id: 2, line: 9, column: 0 });
        let renames = HashMap::new();
        let ctx =
            Context { name: Some("x"), labels: vec![], default_time_ns: 0, renames: &renames };
        let p = to_profile(&prof, ctx, &mut budget()).unwrap();
        assert_eq!(frames(&p, 0), vec!["main", "work", "work", "leaf"]);
        assert!(p.profile_types[0].starts_with("x:"));
    }

    #[test]
    fn gzip_and_plain_pprof_decode_alike_and_garbage_is_malformed() {
        use std::io::Write;
        let raw = cpu_profile(1).encode_to_vec();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&raw).unwrap();
        let gz = enc.finish().unwrap();
        let b = || Budget::new(1 << 20, 8);
        assert_eq!(decode(&raw, &mut b()).unwrap().0, decode(&gz, &mut b()).unwrap().0);
        assert!(matches!(decode(b"\xff\xff\xff", &mut b()), Err(ProfileError::Malformed(_))));
        assert!(matches!(decode(&gz, &mut Budget::new(10, 8)), Err(ProfileError::TooLarge { .. })));
    }

    #[test]
    fn dangling_references_are_malformed() {
        let renames = HashMap::new();
        let mut prof = cpu_profile(0);
        prof.sample[0].location_id.push(99);
        let ctx = Context { name: None, labels: vec![], default_time_ns: 0, renames: &renames };
        assert!(matches!(to_profile(&prof, ctx, &mut budget()), Err(ProfileError::Malformed(_))));
        let mut prof = cpu_profile(0);
        prof.function[0].name = 1000;
        let ctx = Context { name: None, labels: vec![], default_time_ns: 0, renames: &renames };
        assert!(matches!(to_profile(&prof, ctx, &mut budget()), Err(ProfileError::Malformed(_))));
    }

    #[test]
    fn metric_names_follow_pyroscope() {
        let m = |v: &[&str]| metric_name(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(m(&["samples", "cpu"]), "process_cpu");
        assert_eq!(m(&["alloc_objects", "alloc_space"]), "memory");
        assert_eq!(m(&["samples", "wall"]), "wall");
        assert_eq!(m(&["contentions", "delay"]), "delay");
    }

    /// `locations` locations of `lines` inlined frames each, referenced `refs` times (round
    /// robin) by each of `samples` samples: lines × refs frames per sample before the cap.
    pub fn inlined_bomb(locations: u64, lines: usize, refs: usize, samples: usize) -> pb::Profile {
        let mut p = cpu_profile(0);
        p.location = (1..=locations)
            .map(|id| pb::Location {
                id,
                line: (0..lines)
                    .map(|i| pb::Line {
                        function_id: 1 + (i % 4) as u64,
                        line: i as i64,
                        column: 0,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        let ids = (0..refs as u64).map(|i| 1 + i % locations).collect();
        let sample = pb::Sample { location_id: ids, value: vec![1, 1], label: vec![] };
        p.sample = vec![sample; samples];
        p
    }

    #[test]
    fn inlined_frames_are_capped_while_expanding_and_keep_the_root_most() {
        let mut prof = inlined_bomb(1, 1000, 1000, 1);
        // The root: a location of its own, `work`; then the inlined ones.
        prof.location.push(pb::Location {
            id: 2,
            line: vec![pb::Line { function_id: 2, line: 1, column: 0 }],
            ..Default::default()
        });
        prof.sample[0].location_id.push(2);
        let renames = HashMap::new();
        let ctx = Context { name: None, labels: vec![], default_time_ns: 0, renames: &renames };
        let mut b = budget();
        let p = to_profile(&prof, ctx, &mut b).unwrap();
        assert_eq!(p.samples[0].frames.len(), MAX_STACK_DEPTH);
        assert_eq!(p.functions[p.samples[0].frames[0] as usize], "work");
        // Only the kept frames were charged, not the million the stack expands to.
        assert!(b.used() < 8 * MAX_STACK_DEPTH, "{}", b.used());
    }

    #[test]
    fn samples_expanding_past_the_budget_are_refused() {
        // ~50 KB on the wire, 3000 samples of 1024 frames (12 MB of frames) once expanded.
        let raw = inlined_bomb(4, 1024, 4, 3000).encode_to_vec();
        assert!(raw.len() < 64 << 10, "{}", raw.len());
        let renames = HashMap::new();
        let ctx = Context { name: None, labels: vec![], default_time_ns: 0, renames: &renames };
        let e = read(&raw, ctx, &mut Budget::new(1 << 20, 8)).unwrap_err();
        assert!(matches!(e, ProfileError::TooComplex { .. }), "{e}");
    }

    #[test]
    fn a_realistic_profile_decodes_well_within_the_budget() {
        // 10k samples of 32 distinct frames over 2000 locations: a busy Go CPU profile.
        let mut p = cpu_profile(0);
        p.function =
            (1..=2000).map(|id| pb::Function { id, name: 5, ..Default::default() }).collect();
        p.location = (1..=2000)
            .map(|id| pb::Location {
                id,
                address: 0x40_0000 + id,
                line: vec![pb::Line { function_id: id, line: 10, column: 0 }],
                ..Default::default()
            })
            .collect();
        p.sample = (0..10_000u64)
            .map(|i| pb::Sample {
                location_id: (0..32).map(|d| 1 + (i * 7 + d * 13) % 2000).collect(),
                value: vec![1, 10_000_000],
                label: vec![],
            })
            .collect();
        let raw = p.encode_to_vec();
        let renames = HashMap::new();
        let ctx = Context { name: None, labels: vec![], default_time_ns: 0, renames: &renames };
        // The budget of a push whose body limit is this very body: the default factor is
        // enough (measured: 7.8x — packed location ids widen to 8 bytes each once decoded).
        let mut b = Budget::new(raw.len(), crate::profile::limits::DEFAULT_DECODE_FACTOR);
        let (decoded, cost) = decode(&raw, &mut b).unwrap();
        let profile = to_profile(&decoded, ctx, &mut b).unwrap();
        assert_eq!(profile.samples.len(), 10_000);
        let ratio = b.used() as f64 / raw.len() as f64;
        let factor = crate::profile::limits::DEFAULT_DECODE_FACTOR as f64;
        assert!(ratio < factor, "decode costs {ratio:.1}x the body (wire estimate {cost})");
    }
}
