//! The built-in web UI: a single page (client-side routing with the History API) and its
//! static assets, embedded in the binary from `collector/ui/`.
//!
//! Page paths (`/`, `/trace/{id}`, `/flamegraph`, `/compare`, `/services`) all serve
//! `index.html`; the scripts read the path and query string. Assets are under `/ui/assets/`;
//! their names carry no content hash, so they are revalidated on every load (`no-cache` with
//! an `ETag` derived from the embedded bytes, answered with 304 when unchanged).

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file: its name under `/ui/assets/`, bytes and content type.
struct Asset {
    name: &'static str,
    body: &'static [u8],
    content_type: &'static str,
}

macro_rules! asset {
    ($name:literal, $ct:expr) => {
        Asset {
            name: $name,
            body: include_bytes!(concat!("../../../ui/", $name)),
            content_type: $ct,
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("util.js", JS),
    asset!("search.js", JS),
    asset!("trace.js", JS),
    asset!("flame.js", JS),
    asset!("compare.js", JS),
    asset!("services.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

const INDEX: &[u8] = include_bytes!("../../../ui/index.html");

/// The paths that show a page of the UI.
pub const PAGES: [&str; 5] = ["/", "/trace/{id}", "/flamegraph", "/compare", "/services"];

/// FNV-1a of the bytes, as a strong `ETag`.
fn etag(body: &[u8]) -> HeaderValue {
    let h = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    HeaderValue::from_str(&format!("\"{h:016x}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

static ETAGS: LazyLock<Vec<HeaderValue>> =
    LazyLock::new(|| ASSETS.iter().map(|a| etag(a.body)).collect());
static INDEX_ETAG: LazyLock<HeaderValue> = LazyLock::new(|| etag(INDEX));

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut r = Router::new();
    for p in PAGES {
        r = r.route(p, get(index));
    }
    r.route("/ui/assets/{*name}", get(asset))
        .route("/favicon.ico", get(|h: HeaderMap| asset(Path("favicon.svg".into()), h)))
}

fn respond(
    headers: &HeaderMap,
    tag: &HeaderValue,
    content_type: &'static str,
    body: &'static [u8],
) -> Response {
    let fresh = headers.get(header::IF_NONE_MATCH).is_some_and(|v| v == tag);
    let common = [
        (header::ETAG, tag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (common, [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response()
}

async fn index(headers: HeaderMap) -> Response {
    respond(&headers, &INDEX_ETAG, "text/html; charset=utf-8", INDEX)
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.name == name) {
        Some(i) => respond(&headers, &ETAGS[i], ASSETS[i].content_type, ASSETS[i].body),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("no asset {name:?}"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(uri: &str, etag: Option<&HeaderValue>) -> Response {
        let mut req = Request::get(uri);
        if let Some(t) = etag {
            req = req.header(header::IF_NONE_MATCH, t);
        }
        router::<()>().oneshot(req.body(Body::empty()).unwrap()).await.unwrap()
    }

    async fn body(r: Response) -> Vec<u8> {
        to_bytes(r.into_body(), usize::MAX).await.unwrap().to_vec()
    }

    fn content_type(r: &Response) -> &str {
        r.headers().get(header::CONTENT_TYPE).unwrap().to_str().unwrap()
    }

    #[tokio::test]
    async fn page_paths_serve_the_index() {
        for uri in [
            "/",
            "/trace/0123456789abcdef0123456789abcdef",
            "/flamegraph?service=a&span_name=b",
            "/compare?service=a&span_name=b&threshold=1ms",
            "/services",
        ] {
            let r = get(uri, None).await;
            assert_eq!(r.status(), StatusCode::OK, "{uri}");
            assert!(content_type(&r).starts_with("text/html"), "{uri}");
            assert_eq!(body(r).await, INDEX, "{uri}");
        }
    }

    #[tokio::test]
    async fn assets_have_content_types_and_revalidate() {
        for (name, ct) in
            [("app.js", "text/javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg")]
        {
            let r = get(&format!("/ui/assets/{name}"), None).await;
            assert_eq!(r.status(), StatusCode::OK, "{name}");
            assert!(content_type(&r).starts_with(ct), "{name}: {}", content_type(&r));
            assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
            let tag = r.headers()[header::ETAG].clone();
            assert!(!body(r).await.is_empty());
            let again = get(&format!("/ui/assets/{name}"), Some(&tag)).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{name}");
        }
    }

    #[tokio::test]
    async fn unknown_assets_are_not_found() {
        for uri in ["/ui/assets/nope.js", "/ui/assets/../index.html", "/ui/assets/"] {
            assert_eq!(get(uri, None).await.status(), StatusCode::NOT_FOUND, "{uri}");
        }
    }

    #[test]
    fn every_module_the_scripts_import_is_embedded() {
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(a.body).unwrap();
            for (_, rest) in text.match_indices("from \"./").map(|(i, _)| text.split_at(i + 8)) {
                let name = &rest[..rest.find('"').unwrap()];
                assert!(
                    ASSETS.iter().any(|x| x.name == name),
                    "{}: {name} is not embedded",
                    a.name
                );
            }
        }
        let index = std::str::from_utf8(INDEX).unwrap();
        for a in ["app.js", "style.css", "favicon.svg"] {
            assert!(index.contains(&format!("/ui/assets/{a}")), "index.html loads {a}");
        }
    }
}
