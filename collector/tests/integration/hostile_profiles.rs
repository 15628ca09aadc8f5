//! Hostile profile pushes over real HTTP: each gets a clear 4xx quickly, and a normal push and
//! flame-graph query succeed right after. Inputs are small (tens to hundreds of KB) against a
//! 1 MiB body limit, so the collector's 8 MiB decode budget is what refuses them — the old code
//! accepted them, spending tens of MB each (or, scaled up, gigabytes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::time::Duration;

use crate::common::*;
use prost::Message;
use skein_collector::api::pyroscope::proto::push::v1 as push;
use skein_collector::api::pyroscope::proto::querier::v1 as q;
use skein_collector::api::pyroscope::proto::types::v1 as t;
use skein_collector::profile::pprof::pb;

const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
const LIMIT: usize = 1 << 20;
/// Every hostile request must be answered within this (the old code took far longer on the
/// scaled-up inputs, or died).
const QUICK: Duration = Duration::from_secs(20);

async fn start(extra: impl FnOnce(&mut skein_collector::config::ServeArgs)) -> Collector {
    Collector::start(|a| {
        a.max_body_bytes = Some(LIMIT);
        extra(a);
    })
    .await
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(b).unwrap();
    enc.finish().unwrap()
}

/// A CPU pprof: `locations` locations of `lines` inlined frames each (functions main, work,
/// leaf, idle round robin), each of `samples` samples referencing `refs` of them.
fn pprof(locations: u64, lines: usize, refs: usize, samples: usize) -> pb::Profile {
    let strings: Vec<String> =
        ["", "cpu", "nanoseconds", "main", "work", "leaf", "idle"].map(String::from).to_vec();
    let function =
        (1..=4).map(|id| pb::Function { id, name: 2 + id as i64, ..Default::default() }).collect();
    let location = (1..=locations)
        .map(|id| pb::Location {
            id,
            line: (0..lines)
                .map(|i| pb::Line { function_id: 1 + (i % 4) as u64, line: i as i64, column: 0 })
                .collect(),
            ..Default::default()
        })
        .collect();
    let ids: Vec<u64> = (0..refs as u64).map(|i| 1 + i % locations).collect();
    let sample = pb::Sample { location_id: ids, value: vec![10_000_000], label: vec![] };
    pb::Profile {
        sample_type: vec![pb::ValueType { r#type: 1, unit: 2 }],
        sample: vec![sample; samples],
        location,
        function,
        string_table: strings,
        time_nanos: now_nanos() as i64,
        period_type: Some(pb::ValueType { r#type: 1, unit: 2 }),
        period: 10_000_000,
        ..Default::default()
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(c: &Collector) -> Api {
        Api { http: reqwest::Client::new(), base: c.http() }
    }

    /// `/ingest`: (status, Retry-After present, body).
    async fn ingest(&self, query: &str, body: Vec<u8>, ct: Option<&str>) -> (u16, bool, String) {
        let mut r = self.http.post(format!("{}/ingest?{query}", self.base)).body(body);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        let resp = tokio::time::timeout(QUICK, r.send()).await.expect("answered quickly").unwrap();
        let status = resp.status().as_u16();
        let retry = resp.headers().contains_key("retry-after");
        (status, retry, resp.text().await.unwrap())
    }

    async fn push_v1(&self, req: &push::PushRequest) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}/push.v1.PusherService/Push", self.base))
            .header("content-type", "application/proto")
            .body(req.encode_to_vec());
        let resp = tokio::time::timeout(QUICK, r.send()).await.expect("answered quickly").unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// A normal folded push for `app` (40 ms), then its flame graph totals `total` ns: the
    /// collector still works, and refused pushes left nothing behind.
    async fn still_works(&self, app: &str, total: i64) {
        let (status, _, body) = self
            .ingest(&format!("name={app}.cpu"), b"main;work 3\nmain;idle 1\n".to_vec(), None)
            .await;
        assert_eq!(status, 200, "{body}");
        let now_ms = (now_nanos() / 1_000_000) as i64;
        let req = q::SelectMergeStacktracesRequest {
            profile_type_id: CPU.into(),
            label_selector: format!("{{service_name=\"{app}\"}}"),
            start: now_ms - 600_000,
            end: now_ms + 60_000,
            ..Default::default()
        };
        let resp = self
            .http
            .post(format!(
                "{}/pyroscope/querier.v1.QuerierService/SelectMergeStacktraces",
                self.base
            ))
            .header("content-type", "application/proto")
            .body(req.encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let r = q::SelectMergeStacktracesResponse::decode(resp.bytes().await.unwrap()).unwrap();
        let fg = r.flamegraph.unwrap();
        assert_eq!(fg.total, total, "4 samples at 100 Hz, plus what {app} had");
    }

    async fn refused(&self, reason: &str) -> u64 {
        let text = self.http.get(format!("{}/metrics", self.base)).send().await.unwrap();
        let text = text.text().await.unwrap();
        let key = format!("skein_profile_pushes_refused_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0)
    }
}

fn push_request(profiles: Vec<Vec<u8>>) -> push::PushRequest {
    push::PushRequest {
        series: vec![push::RawProfileSeries {
            labels: vec![
                t::LabelPair { name: "__name__".into(), value: "process_cpu".into() },
                t::LabelPair { name: "service_name".into(), value: "py".into() },
            ],
            samples: profiles
                .into_iter()
                .map(|raw_profile| push::RawSample { raw_profile, id: String::new() })
                .collect(),
        }],
    }
}

#[tokio::test]
async fn inlined_frame_amplification_is_refused_with_413_on_both_push_apis() {
    let c = start(|_| {}).await;
    let api = Api::new(&c);
    // ~70 KB: 3000 samples each expanding to 4096 frames (cut to 1024): 12 MB of frames.
    let bomb = pprof(4, 1024, 4, 3000).encode_to_vec();
    assert!(bomb.len() < 128 << 10, "{}", bomb.len());
    let (status, _, body) = api.ingest("name=shop&format=pprof", bomb.clone(), None).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("--profile-decode-factor"), "{body}");
    // Connect maps "too large" to resource_exhausted (429 without Retry-After).
    let (status, body) = api.push_v1(&push_request(vec![gzip(&bomb)])).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("resource_exhausted"), "{body}");
    assert!(api.refused("too_complex").await >= 2);
    // A deep but honest stack is kept, cut to its 1024 root-most frames.
    let deep = pprof(1, 1024, 8, 1).encode_to_vec();
    let (status, _, body) = api.ingest("name=deep&format=pprof", deep, None).await;
    assert_eq!(status, 200, "{body}");
    api.still_works("shop", 40_000_000).await;
    c.stop().await;
}

#[tokio::test]
async fn repeated_empty_messages_are_refused_before_they_are_decoded() {
    let c = start(|_| {}).await;
    let api = Api::new(&c);
    // A valid profile whose one sample carries 300k empty labels: 600 KB that prost would
    // decode into 9.6 MB of label structs (the old code did, then skipped them all).
    let mut p = pprof(1, 1, 1, 1);
    p.sample[0].label = vec![pb::Label::default(); 300 * 1024];
    let body = p.encode_to_vec();
    assert!(body.len() < LIMIT);
    let (status, _, text) = api.ingest("name=shop&format=pprof", body, None).await;
    assert_eq!(status, 413, "{text}");
    // The same on the push request itself: 512 KB of empty series.
    let body: Vec<u8> = std::iter::repeat_n([0x0au8, 0x00], 256 * 1024).flatten().collect();
    let resp = api
        .http
        .post(format!("{}/push.v1.PusherService/Push", api.base))
        .header("content-type", "application/proto")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429, "{:?}", resp.text().await);
    api.still_works("shop", 40_000_000).await;
    c.stop().await;
}

#[tokio::test]
async fn inflated_sizes_are_bounded_per_request_not_per_embedded_profile() {
    let c = start(|_| {}).await;
    let api = Api::new(&c);
    // A valid pprof padded with an unknown field to ~600 KB; gzipped it is a few hundred bytes.
    let mut raw = pprof(1, 1, 1, 1).encode_to_vec();
    raw.extend_from_slice(&[0xfa, 0x01, 0xc0, 0xcf, 0x24]); // field 31, 600_000 bytes
    raw.resize(raw.len() + 600_000, 0);
    let part = gzip(&raw);
    assert!(part.len() < 4096);
    let (status, body) = api.push_v1(&push_request(vec![part.clone()])).await;
    assert_eq!(status, 200, "one fits: {body}");
    let (status, body) = api.push_v1(&push_request(vec![part.clone(); 4])).await;
    assert_eq!(status, 429, "four inflate to 2.4 MB under a 1 MiB limit: {body}");
    assert!(body.contains("resource_exhausted"), "{body}");
    // A multipart gzip bomb.
    let bomb = gzip(&vec![0u8; 4 * LIMIT]);
    let mut mp =
        b"--b\r\nContent-Disposition: form-data; name=\"profile\"; filename=\"p\"\r\n\r\n".to_vec();
    mp.extend_from_slice(&bomb);
    mp.extend_from_slice(b"\r\n--b--\r\n");
    let (status, _, body) =
        api.ingest("name=shop", mp, Some("multipart/form-data; boundary=b")).await;
    assert_eq!(status, 413, "{body}");
    assert!(api.refused("too_large").await >= 2);
    api.still_works("shop", 40_000_000).await;
    c.stop().await;
}

#[tokio::test]
async fn folded_bodies_with_overflowing_counts_or_too_many_stacks_are_refused() {
    let c = start(|_| {}).await;
    let api = Api::new(&c);
    let (status, _, body) =
        api.ingest("name=shop.cpu", b"main;work 9223372036854775807\n".to_vec(), None).await;
    assert_eq!(status, 400, "the count overflows once scaled to nanoseconds: {body}");
    assert!(body.contains("overflows"), "{body}");
    // 800 KB of one-frame lines: 17 MB of samples decoded.
    let many = "a 1\n".repeat(200_000).into_bytes();
    let (status, _, body) = api.ingest("name=shop.cpu", many, None).await;
    assert_eq!(status, 413, "{body}");
    // A line of 100k frames is accepted, cut to 1024.
    let deep =
        format!("{} 1\n", (0..100_000).map(|i| format!("f{i}")).collect::<Vec<_>>().join(";"));
    let (status, _, body) = api.ingest("name=deep.cpu", deep.into_bytes(), None).await;
    assert_eq!(status, 200, "{body}");
    api.still_works("shop", 40_000_000).await;
    c.stop().await;
}

#[tokio::test]
async fn pushes_get_429_with_retry_after_while_every_decode_slot_is_taken() {
    let c = start(|a| a.profile_decode_concurrency = Some(1)).await;
    let api = Api::new(&c);
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (taken, is_taken) = tokio::sync::oneshot::channel::<()>();
    let profiles = c.r().profiles.clone();
    let holder = tokio::spawn(async move {
        profiles
            .decode(move |_| {
                let _ = taken.send(());
                let _ = held.recv();
                Ok(())
            })
            .await
    });
    is_taken.await.unwrap();
    let (status, retry, body) = api.ingest("name=shop.cpu", b"main 1\n".to_vec(), None).await;
    assert_eq!((status, retry), (429, true), "{body}");
    assert!(api.refused("busy").await >= 1);
    release.send(()).unwrap();
    holder.await.unwrap().unwrap();
    api.still_works("shop", 40_000_000).await;
    c.stop().await;
}

#[tokio::test]
async fn distinct_apps_per_tenant_are_capped_with_403_and_known_apps_keep_pushing() {
    let c = start(|a| a.profile_max_apps = Some(3)).await;
    let api = Api::new(&c);
    for app in ["a0", "a1", "a2"] {
        let (status, _, body) =
            api.ingest(&format!("name={app}.cpu"), b"main 1\n".to_vec(), None).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _, body) = api.ingest("name=a3.cpu", b"main 1\n".to_vec(), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--profile-max-apps"), "{body}");
    // A sample label naming a new service counts too.
    let mut p = pprof(1, 1, 1, 1);
    p.string_table.extend(["service_name".to_string(), "sneaky".to_string()]);
    p.sample[0].label = vec![pb::Label { key: 7, str: 8, ..Default::default() }];
    let (status, _, body) = api.ingest("name=a0&format=pprof", p.encode_to_vec(), None).await;
    assert_eq!(status, 403, "{body}");
    // Another tenant has its own allowance.
    let r = api
        .http
        .post(format!("{}/ingest?name=a3.cpu", api.base))
        .header("x-scope-orgid", "other")
        .body("main 1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(api.refused("too_many_apps").await >= 2);
    api.still_works("a1", 50_000_000).await;
    c.stop().await;
}
