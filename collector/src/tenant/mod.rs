//! The tenant of a request: the one place that reads `X-Scope-OrgID` and the credentials that
//! tie a request to tenants. [`Access`] resolves a request's headers (HTTP, or gRPC metadata,
//! which arrive as HTTP/2 headers) into a [`Tenant`] for the [`Role`] its endpoint needs; the
//! [`gate`] middleware does so for every HTTP route behind it, and the [`Tenant`] extractor hands
//! handlers the result. A route not behind a gate cannot get a tenant at all.

pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use parking_lot::RwLock;

use crate::error::{Coded, ErrorCode};
pub use tokens::{Role, TokenFileError, TokenSet};
/// Tenant used when `X-Scope-OrgID` is absent.
pub const DEFAULT_TENANT: &str = "single-tenant";

/// The header (and gRPC metadata key) naming the tenant, as Grafana and Tempo spell it.
pub const HEADER: &str = "x-scope-orgid";

/// Longest tenant id accepted, in bytes.
pub const MAX_LEN: usize = 150;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tenant id {0:?}: use 1-150 characters from [A-Za-z0-9_.-]")]
pub struct InvalidTenant(pub String);

impl Coded for InvalidTenant {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidArgument
    }
}

/// Validates a tenant id; absent means the default tenant. Ids become directory names, so
/// `.` and `..` are refused as well as separators.
pub fn validate(value: Option<&[u8]>) -> Result<String, InvalidTenant> {
    let Some(v) = value else { return Ok(DEFAULT_TENANT.to_string()) };
    let ok = !v.is_empty()
        && v.len() <= MAX_LEN
        && v.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && v != b"."
        && v != b"..";
    if ok {
        Ok(String::from_utf8_lossy(v).into_owned())
    } else {
        Err(InvalidTenant(String::from_utf8_lossy(v).into_owned()))
    }
}

/// Why a request has no tenant. Messages say what is missing or not allowed, never a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error(transparent)]
    Invalid(#[from] InvalidTenant),
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    Forbidden(String),
    /// A handler asked for the tenant of a route that is not behind a gate: a wiring bug, and
    /// refused rather than answered for the default tenant.
    #[error("this endpoint is not behind the tenant gate")]
    Ungated,
}

impl Coded for TenantError {
    fn code(&self) -> ErrorCode {
        match self {
            TenantError::Invalid(e) => e.code(),
            TenantError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            TenantError::Forbidden(_) => ErrorCode::PermissionDenied,
            TenantError::Ungated => ErrorCode::Internal,
        }
    }
}

const MISSING: &str = "authentication required: send Authorization: Bearer <token> \
    (or HTTP basic auth with the token as the password)";
const MALFORMED: &str = "malformed Authorization header: use Bearer <token> or Basic \
    base64(user:token)";
const UNKNOWN: &str = "unknown token";

/// Who may do what: nobody is asked for credentials without an auth file; with one, every
/// gated request needs a token of the right role for the tenant it acts for. Re-read on
/// SIGHUP ([`Access::reload`]); a file that fails to load leaves the previous tokens in force.
#[derive(Debug, Default)]
pub struct Access {
    file: Option<PathBuf>,
    tokens: RwLock<Option<Arc<TokenSet>>>,
}

impl Access {
    /// No authentication: the tenant is the `X-Scope-OrgID` header (or the default).
    pub fn open() -> Arc<Access> {
        Arc::new(Access::default())
    }

    pub fn from_file(path: &Path) -> Result<Arc<Access>, TokenFileError> {
        let set = TokenSet::load(path)?;
        warn_weak(&set);
        Ok(Arc::new(Access {
            file: Some(path.to_path_buf()),
            tokens: RwLock::new(Some(Arc::new(set))),
        }))
    }

    /// A fixed token set (tests, `skein demo`'s generated tokens go through a file instead).
    pub fn with_tokens(set: TokenSet) -> Arc<Access> {
        Arc::new(Access { file: None, tokens: RwLock::new(Some(Arc::new(set))) })
    }

    pub fn enabled(&self) -> bool {
        self.tokens.read().is_some()
    }

    /// Re-reads the auth file; returns the number of tokens now in force.
    pub fn reload(&self) -> Result<usize, TokenFileError> {
        let Some(path) = &self.file else { return Ok(0) };
        let set = TokenSet::load(path)?;
        warn_weak(&set);
        let n = set.len();
        *self.tokens.write() = Some(Arc::new(set));
        Ok(n)
    }

    /// The tenant a request acts for, if its credentials allow a call that needs `role`.
    pub fn resolve(&self, headers: &HeaderMap, role: Role) -> Result<Tenant, TenantError> {
        let named = headers.get(HEADER).map(|v| Named::Header(v.as_bytes()));
        self.resolve_named(headers, named, role)
    }

    /// As [`Access::resolve`], with the tenant the request names given apart.
    pub fn resolve_named(
        &self,
        headers: &HeaderMap,
        named: Option<Named<'_>>,
        role: Role,
    ) -> Result<Tenant, TenantError> {
        let by_query = matches!(named, Some(Named::Query(_)));
        let was_named = named.is_some();
        let named = match named {
            Some(Named::Header(v) | Named::Query(v)) => Some(validate(Some(v))?),
            None => None,
        };
        let Some(tokens) = self.tokens.read().clone() else {
            return Ok(Tenant(named.unwrap_or_else(|| DEFAULT_TENANT.to_string())));
        };
        let presented = credentials(headers)?;
        let grant = tokens.find(&presented).ok_or(TenantError::Unauthenticated(UNKNOWN))?;
        if by_query && grant.role != Role::Admin {
            return Err(TenantError::Forbidden(
                "only admin tokens may name the tenant with ?tenant=; send X-Scope-OrgID".into(),
            ));
        }
        if !grant.role.allows(role) {
            return Err(TenantError::Forbidden(format!(
                "this token has the {} role; this endpoint needs {}",
                grant.role.as_str(),
                role.as_str()
            )));
        }
        let tenant = match named {
            Some(t) => t,
            None => match grant.tenants.only_one() {
                Some(only) => only.to_string(),
                None => DEFAULT_TENANT.to_string(),
            },
        };
        if grant.tenants.allows(&tenant) {
            Ok(Tenant(tenant))
        } else if was_named {
            Err(TenantError::Forbidden(format!("this token may not act for tenant {tenant:?}")))
        } else {
            Err(TenantError::Forbidden(
                "this token acts for several tenants: name one with X-Scope-OrgID".to_string(),
            ))
        }
    }
}

fn warn_weak(set: &TokenSet) {
    if set.weak() > 0 {
        tracing::warn!(
            tokens = set.weak(),
            "auth file has tokens shorter than {} bytes: they could be guessed",
            tokens::WEAK_TOKEN_LEN
        );
    }
}

/// The token a request presents: `Authorization: Bearer <token>`, or HTTP basic auth with the
/// token as the password (Grafana's datasource basic auth; the user name is not used).
fn credentials(headers: &HeaderMap) -> Result<Vec<u8>, TenantError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(TenantError::Unauthenticated(MISSING));
    };
    let value = value.as_bytes();
    let (scheme, rest) = match value.iter().position(|b| *b == b' ') {
        Some(i) => value.split_at(i),
        None => return Err(TenantError::Unauthenticated(MALFORMED)),
    };
    let rest = rest.trim_ascii();
    if scheme.eq_ignore_ascii_case(b"bearer") && !rest.is_empty() {
        return Ok(rest.to_vec());
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| TenantError::Unauthenticated(MALFORMED))?;
        if let Some(i) = decoded.iter().position(|b| *b == b':') {
            let password = decoded.get(i.saturating_add(1)..).unwrap_or_default();
            if !password.is_empty() {
                return Ok(password.to_vec());
            }
        }
    }
    Err(TenantError::Unauthenticated(MALFORMED))
}

/// How a surface answers a refused request in its own wire format.
pub type Reject = fn(TenantError) -> Response;

/// Where a request names its tenant.
#[derive(Debug, Clone, Copy)]
pub enum Named<'a> {
    Header(&'a [u8]),
    Query(&'a [u8]),
}

/// The state of one [`gate`]: whose tokens, the role the routes behind it need, and how
/// refusals are written.
#[derive(Clone)]
pub struct Gate {
    pub access: Arc<Access>,
    pub role: Role,
    pub reject: Reject,
}

/// Middleware: resolves the tenant of every request before its handler (and before its body
/// is read), refusing it in the surface's format, and leaves the [`Tenant`] for the extractor.
pub async fn gate(
    axum::extract::State(g): axum::extract::State<Gate>,
    mut req: Request,
    next: Next,
) -> Response {
    let named = match req.headers().get(HEADER) {
        Some(v) => Some(Named::Header(v.as_bytes())),
        None => query_tenant(req.uri().query()).map(Named::Query),
    };
    match g.access.resolve_named(req.headers(), named, g.role) {
        Ok(t) => {
            req.extensions_mut().insert(t);
            next.run(req).await
        }
        Err(e) => (g.reject)(e),
    }
}

/// The `tenant` query parameter, for scrapers that cannot set `X-Scope-OrgID` (Prometheus 2.x
/// scrape configs take `params:` but not headers). It never overrides the header (an auth
/// proxy injecting `X-Scope-OrgID` stays in charge), and with an auth file only admin tokens
/// may use it. Valid ids need no percent-encoding, so an encoded one is refused by validation.
fn query_tenant(query: Option<&str>) -> Option<&[u8]> {
    query?.split('&').find_map(|kv| kv.strip_prefix("tenant=")).map(str::as_bytes)
}

/// The tenant of a request, as its gate resolved it. As an axum extractor it is refused with
/// [`TenantError::Ungated`] on a route without a gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

impl Tenant {
    /// The tenant a gate left in a request's extensions.
    pub fn of(extensions: &axum::http::Extensions) -> Result<Tenant, TenantError> {
        extensions.get::<Tenant>().cloned().ok_or(TenantError::Ungated)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = TenantError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Tenant::of(&parts.extensions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, StatusCode};

    #[test]
    fn tenant_ids_are_validated() {
        assert_eq!(validate(None).unwrap(), DEFAULT_TENANT);
        assert_eq!(validate(Some(b"team-a.prod_1")).unwrap(), "team-a.prod_1");
        assert!(validate(Some(b"../etc")).is_err());
        assert!(validate(Some(b"")).is_err());
        assert!(validate(Some(b"a/b")).is_err());
        assert!(validate(Some(b".")).is_err());
        assert!(validate(Some(b"..")).is_err());
        assert!(validate(Some("é".as_bytes())).is_err());
        assert!(validate(Some(&[b'a'; MAX_LEN])).is_ok());
        assert!(validate(Some(&[b'a'; MAX_LEN + 1])).is_err());
    }

    fn headers(tenant: Option<&str>, auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = tenant {
            h.insert(HEADER, HeaderValue::from_str(t).unwrap());
        }
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    const TOKENS: &str = r#"
[[token]]
token = "acme-writer-000000"
tenants = ["acme"]
role = "write"
[[token]]
token = "two-tenant-reader-0"
tenants = ["acme", "beta"]
role = "read"
[[token]]
token = "any-tenant-admin-00"
tenants = ["*"]
role = "admin"
"#;

    fn secured() -> Arc<Access> {
        Access::with_tokens(TokenSet::parse(TOKENS).unwrap())
    }

    fn basic(user: &str, password: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {b64}")
    }

    #[test]
    fn without_an_auth_file_the_header_names_the_tenant() {
        let a = Access::open();
        assert!(!a.enabled());
        let t = a.resolve(&headers(None, None), Role::Read).unwrap();
        assert_eq!(t.as_str(), DEFAULT_TENANT);
        let t = a.resolve(&headers(Some("team-a"), None), Role::Write).unwrap();
        assert_eq!(t.as_str(), "team-a");
        let e = a.resolve(&headers(Some("a/b"), None), Role::Read).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_unauthenticated() {
        let a = secured();
        for auth in [
            None,
            Some("Bearer"),
            Some("Bearer "),
            Some("Token acme-writer-000000"),
            Some("Basic !!!"),
            Some("Basic YWNtZQ=="),
            Some("Bearer acme-writer-00000"),
        ] {
            let e = a.resolve(&headers(Some("acme"), auth), Role::Write).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Unauthenticated, "{auth:?}");
            assert!(!e.to_string().contains("acme-writer"), "{e}");
        }
        let e = a.resolve(&headers(None, Some(&basic("acme", "nope-nope-nope-nope"))), Role::Read);
        assert_eq!(e.unwrap_err().code(), ErrorCode::Unauthenticated);
    }

    #[test]
    fn bearer_and_basic_tokens_resolve_their_tenant() {
        let a = secured();
        let t = a.resolve(&headers(None, Some("Bearer acme-writer-000000")), Role::Write);
        assert_eq!(t.unwrap().as_str(), "acme", "the only tenant of the token");
        let t = a.resolve(&headers(None, Some("bearer  acme-writer-000000 ")), Role::Write);
        assert_eq!(t.unwrap().as_str(), "acme", "scheme is case-insensitive");
        let t = a.resolve(
            &headers(Some("beta"), Some(&basic("grafana", "two-tenant-reader-0"))),
            Role::Read,
        );
        assert_eq!(t.unwrap().as_str(), "beta");
        let t = a.resolve(&headers(None, Some(&basic("", "any-tenant-admin-00"))), Role::Read);
        assert_eq!(t.unwrap().as_str(), DEFAULT_TENANT, "any tenant, none named: the default");
    }

    #[test]
    fn wrong_role_or_tenant_is_forbidden() {
        let a = secured();
        let cases = [
            (Some("acme"), "Bearer acme-writer-000000", Role::Read, "needs read"),
            (Some("acme"), "Bearer two-tenant-reader-0", Role::Write, "needs write"),
            (Some("acme"), "Bearer two-tenant-reader-0", Role::Admin, "needs admin"),
            (Some("beta"), "Bearer acme-writer-000000", Role::Write, "tenant \"beta\""),
            (None, "Bearer two-tenant-reader-0", Role::Read, "X-Scope-OrgID"),
        ];
        for (tenant, auth, role, want) in cases {
            let e = a.resolve(&headers(tenant, Some(auth)), role).unwrap_err();
            assert_eq!(e.code(), ErrorCode::PermissionDenied, "{auth} {role:?}");
            assert!(e.to_string().contains(want), "{e}");
        }
        for role in [Role::Read, Role::Write, Role::Admin] {
            let t = a.resolve(&headers(Some("zeta"), Some("Bearer any-tenant-admin-00")), role);
            assert_eq!(t.unwrap().as_str(), "zeta");
        }
    }

    #[test]
    fn a_failed_reload_keeps_the_tokens_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.toml");
        std::fs::write(&path, TOKENS).unwrap();
        let a = Access::from_file(&path).unwrap();
        let ok = |a: &Access, tok: &str| {
            a.resolve(&headers(Some("acme"), Some(&format!("Bearer {tok}"))), Role::Write).is_ok()
        };
        assert!(ok(&a, "acme-writer-000000"));
        std::fs::write(&path, "[[token]]\ntoken = 'x'").unwrap();
        assert!(a.reload().is_err());
        assert!(ok(&a, "acme-writer-000000"), "old tokens stay");
        std::fs::write(&path, TOKENS.replace("acme-writer-000000", "acme-writer-111111")).unwrap();
        assert_eq!(a.reload().unwrap(), 3);
        assert!(!ok(&a, "acme-writer-000000") && ok(&a, "acme-writer-111111"));
    }

    fn text_reject(e: TenantError) -> Response {
        use axum::response::IntoResponse;
        (
            StatusCode::from_u16(match e.code() {
                ErrorCode::Unauthenticated => 401,
                ErrorCode::PermissionDenied => 403,
                ErrorCode::InvalidArgument => 400,
                _ => 500,
            })
            .unwrap(),
            e.to_string(),
        )
            .into_response()
    }

    #[tokio::test]
    async fn the_gate_refuses_before_the_handler_and_the_extractor_needs_a_gate() {
        use tower::ServiceExt;
        let handler = axum::routing::get(|Tenant(t): Tenant| async move { t });
        let gated = axum::Router::new().route("/q", handler.clone()).route_layer(
            axum::middleware::from_fn_with_state(
                Gate { access: secured(), role: Role::Read, reject: text_reject },
                gate,
            ),
        );
        let app = gated.route("/ungated", handler);
        let call = |uri: &str, auth: Option<&str>| {
            let mut req = axum::http::Request::builder().uri(uri);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            app.clone().oneshot(req.body(axum::body::Body::empty()).unwrap())
        };
        let status = |r: Response| r.status();
        assert_eq!(status(call("/q", None).await.unwrap()), StatusCode::UNAUTHORIZED);
        let resp = call("/q", Some("Bearer any-tenant-admin-00")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], DEFAULT_TENANT.as_bytes());
        let resp = call("/q?x=1&tenant=beta", Some("Bearer any-tenant-admin-00")).await.unwrap();
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"beta", "an admin scraper names its tenant in the query");
        let resp = call("/q?tenant=beta", Some("Bearer two-tenant-reader-0")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "?tenant= is for admin tokens only");
        let resp = call("/ungated", Some("Bearer any-tenant-admin-00")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR, "fails closed");
    }
}
