//! The two push APIs, parsed into a [`Batch`]:
//!
//! - `POST /ingest?name=app.cpu{k=v}&from=&until=&format=&sampleRate=&spyName=&units=&aggregationType=`
//!   (grafana/REQUESTS.md, "Pyroscope: push") with a folded, lines or pprof body, or pprof in a
//!   `multipart/form-data` field `profile`;
//! - `push.v1.PusherService/Push` series (labels + raw pprof), as pyroscope-rs agents send.
//!
//! Profile types follow Pyroscope's ingest adapter. Folded and lines bodies take their type from
//! the suffix of `name` (`app.cpu` → service `app`, type `cpu`; no suffix means `cpu`). With a
//! sample rate (default 100 Hz), CPU and wall profiles are stored as time: each count becomes
//! `1e9 / sampleRate` nanoseconds and the type is `process_cpu:cpu:nanoseconds:cpu:nanoseconds`
//! (`wall:wall:...`). With `sampleRate=0` they stay counts (`process_cpu:samples:count::`).
//! pprof bodies carry their own sample types; the type name (`__name__`) is derived from them
//! (`cpu` → `process_cpu`, `alloc_*`/`inuse_*` → `memory`, ...), one type per sample type.

use std::collections::HashMap;

use super::folded::{self, Format};
use super::limits::{Budget, MAX_SAMPLE_TYPE_CONFIG_BYTES};
use super::model::{Batch, Label, Profile, ProfileBuilder, ProfileType};
use super::{ProfileError, multipart, pprof};

/// Query parameters of `/ingest`, validated.
#[derive(Debug, Clone)]
pub struct IngestParams {
    /// The application name: `name` up to `{`.
    pub app: String,
    pub labels: Vec<Label>,
    pub from_ns: i64,
    pub format: String,
    pub sample_rate: u32,
    pub spy_name: String,
}

fn bad(why: String) -> ProfileError {
    ProfileError::BadRequest(why)
}

/// Parses a label set `app.cpu{k=v,k2="v 2"}` into the name and its labels.
pub fn parse_label_set(s: &str) -> Result<(String, Vec<Label>), ProfileError> {
    let s = s.trim();
    let (name, rest) = match s.find('{') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(bad(format!("invalid name {s:?}: the application name is empty")));
    }
    let mut labels = Vec::new();
    if let Some(rest) = rest {
        let body = rest
            .strip_suffix('}')
            .ok_or_else(|| bad(format!("invalid name {s:?}: missing closing }}")))?;
        for pair in body.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("invalid name {s:?}: label {pair:?} is not k=v")))?;
            let k = k.trim();
            let valid = !k.is_empty()
                && k.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !valid {
                return Err(bad(format!("invalid name {s:?}: bad label name {k:?}")));
            }
            labels.push(Label::new(k, v.trim().trim_matches('"')));
        }
    }
    Ok((name.to_string(), labels))
}

/// `from`/`until`: unix seconds ("now" and milli/micro/nanoseconds are recognised by size).
fn parse_time(key: &str, v: &str, now_ns: i64) -> Result<i64, ProfileError> {
    if v == "now" {
        return Ok(now_ns);
    }
    let n: i64 = v.parse().map_err(|_| bad(format!("invalid {key} {v:?}: not a unix time")))?;
    Ok(match n.unsigned_abs() {
        0..100_000_000_000 => n.saturating_mul(1_000_000_000),
        100_000_000_000..100_000_000_000_000 => n.saturating_mul(1_000_000),
        100_000_000_000_000..100_000_000_000_000_000 => n.saturating_mul(1_000),
        _ => n,
    })
}

impl IngestParams {
    pub fn parse(q: &HashMap<String, String>, now_ns: i64) -> Result<IngestParams, ProfileError> {
        let get = |k: &str| q.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
        let name = get("name").ok_or_else(|| bad("missing required parameter name".into()))?;
        let (app, labels) = parse_label_set(name)?;
        let from_ns = match get("from") {
            Some(v) => parse_time("from", v, now_ns)?,
            None => now_ns,
        };
        if let Some(v) = get("until") {
            parse_time("until", v, now_ns)?;
        }
        let sample_rate = match get("sampleRate") {
            Some(v) => v.parse().map_err(|_| bad(format!("invalid sampleRate {v:?}")))?,
            None => 100,
        };
        Ok(IngestParams {
            app,
            labels,
            from_ns,
            format: get("format").unwrap_or("folded").to_string(),
            sample_rate,
            spy_name: get("spyName").unwrap_or("unknown").to_string(),
        })
    }

    /// Series labels: the push's labels, `service_name` (the application unless given
    /// explicitly, then `app_name` keeps the application) and the agent's `pyroscope_spy`.
    fn series_labels(&self, app: &str) -> Vec<Label> {
        let mut labels = self.labels.clone();
        let has = |n: &str| labels.iter().any(|l| l.name == n);
        if !has("service_name") {
            labels.push(Label::new("service_name", app));
        } else if !has("app_name") {
            labels.push(Label::new("app_name", app));
        }
        labels.push(Label::new("pyroscope_spy", self.spy_name.clone()));
        labels
    }
}

/// What a folded profile named with `suffix` measures: (type name, sample type, unit).
fn folded_type(suffix: &str) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match suffix {
        "cpu" | "itimer" => ("process_cpu", "samples", "count"),
        "wall" | "seconds" | "nanoseconds" | "microseconds" | "milliseconds" => {
            ("wall", "samples", "count")
        }
        "inuse_objects" => ("memory", "inuse_objects", "count"),
        "inuse_space" => ("memory", "inuse_space", "bytes"),
        "alloc_objects" => ("memory", "alloc_objects", "count"),
        "alloc_space" => ("memory", "alloc_space", "bytes"),
        "alloc_in_new_tlab_objects" => ("memory", "alloc_in_new_tlab_objects", "count"),
        "alloc_in_new_tlab_bytes" => ("memory", "alloc_in_new_tlab_bytes", "bytes"),
        "alloc_outside_tlab_objects" => ("memory", "alloc_outside_tlab_objects", "count"),
        "alloc_outside_tlab_bytes" => ("memory", "alloc_outside_tlab_bytes", "bytes"),
        "live" => ("memory", "live", "count"),
        "bytes" => ("memory", "samples", "bytes"),
        "goroutines" => ("goroutine", "goroutines", "count"),
        "mutex_count" => ("mutex", "contentions", "count"),
        "mutex_duration" => ("mutex", "delay", "nanoseconds"),
        "block_count" | "lock_count" => ("block", "contentions", "count"),
        "block_duration" | "lock_duration" => ("block", "delay", "nanoseconds"),
        "exceptions" => ("exceptions", "samples", "count"),
        _ => return None,
    })
}

/// A folded or lines body: the type comes from the name's suffix, see the module docs.
fn text_profile(
    p: &IngestParams,
    body: &[u8],
    format: Format,
    budget: &mut Budget,
) -> Result<Profile, ProfileError> {
    let (app, suffix) = match p.app.rsplit_once('.') {
        Some((app, suffix)) => (app, suffix),
        None => (p.app.as_str(), "cpu"),
    };
    let (name, mut sample_type, mut unit) = folded_type(suffix)
        .ok_or_else(|| bad(format!("unknown profile type {suffix:?} in name {:?}", p.app)))?;
    let (mut period_type, mut period_unit, mut scale) = ("", "", 1);
    if p.sample_rate > 0 && matches!(name, "process_cpu" | "wall") {
        scale = 1_000_000_000 / i64::from(p.sample_rate);
        (period_type, period_unit) = ("cpu", "nanoseconds");
        sample_type = if name == "wall" { "wall" } else { "cpu" };
        unit = "nanoseconds";
    }
    let id = ProfileType {
        name: name.into(),
        sample_type: sample_type.into(),
        sample_unit: unit.into(),
        period_type: period_type.into(),
        period_unit: period_unit.into(),
    }
    .id();
    let mut b = ProfileBuilder::new(vec![id], p.from_ns, p.series_labels(app));
    folded::parse(body, format, scale, &mut b, budget)?;
    Ok(b.finish())
}

/// `display-name` renames from a `sample_type_config` JSON object.
fn renames(config: &[u8]) -> Result<HashMap<String, String>, ProfileError> {
    // A JSON value tree is many times its text: real configs are a few hundred bytes.
    if config.len() > MAX_SAMPLE_TYPE_CONFIG_BYTES {
        return Err(ProfileError::BadRequest(format!(
            "sample_type_config of {} bytes exceeds the limit of {MAX_SAMPLE_TYPE_CONFIG_BYTES}",
            config.len()
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(config)
        .map_err(|e| ProfileError::Malformed(format!("sample_type_config: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ProfileError::Malformed("sample_type_config: not an object".into()))?;
    Ok(obj
        .iter()
        .filter_map(|(k, c)| {
            let name = c.get("display-name").and_then(|d| d.as_str())?;
            Some((k.clone(), name.to_string()))
        })
        .collect())
}

fn pprof_profile(
    p: &IngestParams,
    raw: &[u8],
    renames: &HashMap<String, String>,
    budget: &mut Budget,
) -> Result<Profile, ProfileError> {
    let ctx = pprof::Context {
        name: None,
        labels: p.series_labels(&p.app),
        default_time_ns: p.from_ns,
        renames,
    };
    pprof::read(raw, ctx, budget)
}

/// Parses an `/ingest` body within the push's decoding `budget` (which also bounds inflated
/// gzip content).
pub fn ingest(
    p: &IngestParams,
    content_type: Option<&str>,
    body: &[u8],
    budget: &mut Budget,
) -> Result<Batch, ProfileError> {
    let multipart =
        content_type.filter(|ct| ct.to_ascii_lowercase().contains("multipart/form-data"));
    let profile = match (p.format.as_str(), multipart) {
        ("jfr" | "trie" | "tree" | "speedscope", _) => {
            return Err(bad(format!(
                "format {:?} is not supported: use folded, lines or pprof",
                p.format
            )));
        }
        // Agents that send multipart always send pprof in it, whatever `format` says.
        (_, Some(ct)) => {
            let parts = multipart::parse(body, &multipart::boundary(ct)?)?;
            if parts.iter().any(|p| p.name == "prev_profile") {
                return Err(bad(
                    "prev_profile (cumulative profiles) is not supported: send delta profiles"
                        .into(),
                ));
            }
            let profile = parts.iter().find(|p| p.name == "profile").ok_or_else(|| {
                ProfileError::Malformed("multipart body without a profile field".into())
            })?;
            let renames = match parts.iter().find(|p| p.name == "sample_type_config") {
                Some(c) => renames(c.data)?,
                None => HashMap::new(),
            };
            pprof_profile(p, profile.data, &renames, budget)?
        }
        ("pprof", None) => pprof_profile(p, body, &HashMap::new(), budget)?,
        ("folded", None) => text_profile(p, body, Format::Folded, budget)?,
        ("lines", None) => text_profile(p, body, Format::Lines, budget)?,
        (other, None) => {
            return Err(bad(format!(
                "format {other:?} is not supported: use folded, lines or pprof"
            )));
        }
    };
    Ok(Batch { profiles: vec![profile] })
}

/// One series of a `push.v1` request: its labels and raw pprof profiles. All series of a
/// request share one `budget`, so their inflated sizes and decoded memory add up.
pub fn series(
    labels: Vec<Label>,
    raw_profiles: &[&[u8]],
    now_ns: i64,
    budget: &mut Budget,
) -> Result<Vec<Profile>, ProfileError> {
    let name = labels.iter().find(|l| l.name == "__name__").map(|l| l.value.clone());
    // Pyroscope-internal labels (`__name__`, `__delta__`, ...) are not kept: the type carries
    // the name.
    let labels: Vec<Label> = labels.into_iter().filter(|l| !l.name.starts_with("__")).collect();
    let renames = HashMap::new();
    raw_profiles
        .iter()
        .map(|raw| {
            let ctx = pprof::Context {
                name: name.as_deref().filter(|n| !n.is_empty()),
                labels: labels.clone(),
                default_time_ns: now_ns,
                renames: &renames,
            };
            pprof::read(raw, ctx, budget)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn budget() -> Budget {
        Budget::new(1 << 20, 8)
    }

    fn params(pairs: &[(&str, &str)]) -> Result<IngestParams, ProfileError> {
        let q = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        IngestParams::parse(&q, 42)
    }

    fn label<'a>(p: &'a Profile, name: &str) -> Option<&'a str> {
        p.labels.iter().find(|l| l.name == name).map(|l| l.value.as_str())
    }

    #[test]
    fn label_sets_parse_with_and_without_labels() {
        let (n, l) = parse_label_set("shop.cpu{env=prod, region=\"eu\"}").unwrap();
        assert_eq!(n, "shop.cpu");
        assert_eq!(l, vec![Label::new("env", "prod"), Label::new("region", "eu")]);
        assert_eq!(parse_label_set("shop").unwrap(), ("shop".into(), vec![]));
        assert!(parse_label_set("{a=b}").is_err());
        assert!(parse_label_set("shop{a=b").is_err());
        assert!(parse_label_set("shop{a}").is_err());
        assert!(parse_label_set("shop{a b=c}").is_err());
    }

    #[test]
    fn params_default_like_pyroscope_and_reject_garbage() {
        let p = params(&[("name", "shop.cpu")]).unwrap();
        assert_eq!((p.from_ns, p.sample_rate, p.format.as_str()), (42, 100, "folded"));
        assert_eq!(p.spy_name, "unknown");
        assert_eq!(
            params(&[("name", "a"), ("from", "1700000000")]).unwrap().from_ns,
            1_700_000_000_000_000_000
        );
        assert_eq!(
            params(&[("name", "a"), ("from", "1700000000000")]).unwrap().from_ns,
            1_700_000_000_000_000_000
        );
        assert!(params(&[]).is_err());
        assert!(params(&[("name", "a"), ("from", "yesterday")]).is_err());
        assert!(params(&[("name", "a"), ("sampleRate", "fast")]).is_err());
    }

    #[test]
    fn folded_cpu_is_stored_as_nanoseconds_at_the_sample_rate_like_pyroscope() {
        let p = params(&[("name", "shop.cpu{env=prod}"), ("sampleRate", "100")]).unwrap();
        let b = ingest(&p, None, b"main;work 3\n", &mut budget()).unwrap();
        let prof = &b.profiles[0];
        assert_eq!(prof.profile_types, vec!["process_cpu:cpu:nanoseconds:cpu:nanoseconds"]);
        assert_eq!(prof.samples[0].values, vec![30_000_000]);
        assert_eq!(label(prof, "service_name"), Some("shop"));
        assert_eq!(label(prof, "env"), Some("prod"));
        let p = params(&[("name", "shop"), ("sampleRate", "0")]).unwrap();
        let b = ingest(&p, None, b"main;work 3\n", &mut budget()).unwrap();
        assert_eq!(b.profiles[0].profile_types, vec!["process_cpu:samples:count::"]);
        assert_eq!(b.profiles[0].samples[0].values, vec![3]);
    }

    #[test]
    fn folded_memory_types_keep_their_units_and_unknown_suffixes_are_rejected() {
        let p = params(&[("name", "shop.alloc_space")]).unwrap();
        let b = ingest(&p, None, b"main 512\n", &mut budget()).unwrap();
        assert_eq!(b.profiles[0].profile_types, vec!["memory:alloc_space:bytes::"]);
        let p = params(&[("name", "my.shop")]).unwrap();
        assert!(matches!(
            ingest(&p, None, b"main 1\n", &mut budget()),
            Err(ProfileError::BadRequest(_))
        ));
    }

    #[test]
    fn explicit_service_name_wins_and_keeps_the_app_as_app_name() {
        let p = params(&[("name", "shop.cpu{service_name=checkout}")]).unwrap();
        let b = ingest(&p, None, b"main 1\n", &mut budget()).unwrap();
        assert_eq!(label(&b.profiles[0], "service_name"), Some("checkout"));
        assert_eq!(label(&b.profiles[0], "app_name"), Some("shop"));
    }

    #[test]
    fn multipart_pprof_applies_sample_type_display_names() {
        let raw = pprof::tests::cpu_profile(0).encode_to_vec();
        let mut body =
            b"--b\r\nContent-Disposition: form-data; name=\"profile\"; filename=\"p\"\r\n\r\n"
                .to_vec();
        body.extend_from_slice(&raw);
        body.extend_from_slice(b"\r\n--b\r\nContent-Disposition: form-data; name=\"sample_type_config\"\r\n\r\n{\"samples\":{\"display-name\":\"hits\"}}\r\n--b--\r\n");
        let p = params(&[("name", "shop"), ("from", "1700000000")]).unwrap();
        let b = ingest(&p, Some("multipart/form-data; boundary=b"), &body, &mut budget()).unwrap();
        let prof = &b.profiles[0];
        assert_eq!(prof.profile_types[0], "process_cpu:hits:count:cpu:nanoseconds");
        assert_eq!(prof.time_ns, 1_700_000_000_000_000_000);
        assert_eq!(label(prof, "service_name"), Some("shop"));
        let prev =
            b"--b\r\nContent-Disposition: form-data; name=\"prev_profile\"\r\n\r\nx\r\n--b--\r\n";
        assert!(ingest(&p, Some("multipart/form-data; boundary=b"), prev, &mut budget()).is_err());
    }

    #[test]
    fn unsupported_formats_are_bad_requests() {
        let p = params(&[("name", "shop"), ("format", "jfr")]).unwrap();
        assert!(matches!(ingest(&p, None, b"x", &mut budget()), Err(ProfileError::BadRequest(_))));
        assert!(matches!(
            ingest(&p, Some("multipart/form-data; boundary=b"), b"x", &mut budget()),
            Err(ProfileError::BadRequest(_))
        ));
    }

    #[test]
    fn push_series_take_the_type_name_from_dunder_name_and_drop_internal_labels() {
        let raw = pprof::tests::cpu_profile(1_700_000_000_000_000_000).encode_to_vec();
        let labels = vec![
            Label::new("__name__", "process_cpu"),
            Label::new("__delta__", "false"),
            Label::new("service_name", "py"),
        ];
        let profiles = series(labels, &[raw.as_slice()], 7, &mut budget()).unwrap();
        assert_eq!(profiles[0].labels, vec![Label::new("service_name", "py")]);
        assert_eq!(profiles[0].time_ns, 1_700_000_000_000_000_000);
        assert!(profiles[0].profile_types[1].starts_with("process_cpu:cpu:"));
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn push_v1_bounds_the_sum_of_inflated_profiles_not_each() {
        // A valid pprof padded with an unknown field to 600 KB: each fits a 1 MiB limit alone.
        let mut raw = pprof::tests::cpu_profile(1_700_000_000_000_000_000).encode_to_vec();
        raw.extend_from_slice(&[0xfa, 0x01]); // field 31, length-delimited
        raw.extend_from_slice(&[0xc0, 0xcf, 0x24]); // 600_000
        raw.resize(raw.len() + 600_000, 0);
        let part = gz(&raw);
        let labels = vec![Label::new("__name__", "process_cpu")];
        let one = series(labels.clone(), &[part.as_slice()], 7, &mut budget()).unwrap();
        assert_eq!(one.len(), 1);
        let e = series(labels, &[part.as_slice(), part.as_slice()], 7, &mut budget()).unwrap_err();
        assert!(matches!(e, ProfileError::TooLarge { limit } if limit == 1 << 20), "{e}");
    }

    #[test]
    fn huge_sample_type_configs_are_refused() {
        let raw = pprof::tests::cpu_profile(0).encode_to_vec();
        let mut body = b"--b\r\nContent-Disposition: form-data; name=\"profile\"\r\n\r\n".to_vec();
        body.extend_from_slice(&raw);
        body.extend_from_slice(
            b"\r\n--b\r\nContent-Disposition: form-data; name=\"sample_type_config\"\r\n\r\n[",
        );
        body.extend(std::iter::repeat_n(b"0,".as_slice(), 40_000).flatten());
        body.extend_from_slice(b"0]\r\n--b--\r\n");
        let p = params(&[("name", "shop")]).unwrap();
        let e = ingest(&p, Some("multipart/form-data; boundary=b"), &body, &mut budget());
        assert!(matches!(e, Err(ProfileError::BadRequest(_))), "{e:?}");
    }
}
