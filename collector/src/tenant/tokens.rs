//! The token file (`--auth-file`): which bearer tokens exist, the tenants each may act for and
//! what it may do. Tokens are kept only as SHA-256 digests and compared in constant time, so
//! neither the file (with `token_sha256`) nor the timing of a refusal gives a token away.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::error::{Coded, ErrorCode};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Ingest: OTLP exports and profile pushes.
    Write,
    /// Queries and the web UI.
    Read,
    /// Both, and the collector's own `/metrics`.
    Admin,
}

impl Role {
    /// Whether a token of this role may make a call that needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self == Role::Admin || self == needed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Write => "write",
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// The tenants a token may act for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenants {
    Any,
    Only(Vec<String>),
}

impl Tenants {
    pub fn allows(&self, tenant: &str) -> bool {
        match self {
            Tenants::Any => true,
            Tenants::Only(list) => list.iter().any(|t| t == tenant),
        }
    }

    /// The tenant a request means when it names none: the token's only tenant, if it has one.
    pub fn only_one(&self) -> Option<&str> {
        match self {
            Tenants::Only(list) if list.len() == 1 => list.first().map(String::as_str),
            _ => None,
        }
    }
}

/// One `[[token]]` entry, ready for matching.
#[derive(Clone)]
pub struct Grant {
    digest: [u8; 32],
    pub tenants: Tenants,
    pub role: Role,
    /// 1-based position in the file, for log lines (never the token).
    pub entry: usize,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("entry", &self.entry)
            .field("tenants", &self.tenants)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the auth file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid auth file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Coded for TokenFileError {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidArgument
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTokens {
    #[serde(default)]
    token: Vec<FileToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    token: Option<String>,
    token_sha256: Option<String>,
    tenants: Vec<String>,
    role: Role,
}

/// Plain tokens shorter than this are accepted (the file is the operator's) but warned about
/// at load: they could be guessed.
pub const WEAK_TOKEN_LEN: usize = 16;

/// The tokens of one reading of the auth file.
#[derive(Debug, Clone)]
pub struct TokenSet {
    grants: Vec<Grant>,
    weak: usize,
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl TokenSet {
    pub fn load(path: &Path) -> Result<TokenSet, TokenFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokenFileError::Read { path: path.to_path_buf(), source })?;
        TokenSet::parse(&text)
            .map_err(|message| TokenFileError::Invalid { path: path.to_path_buf(), message })
    }

    pub fn parse(text: &str) -> Result<TokenSet, String> {
        let file: FileTokens = toml::from_str(text).map_err(|e| e.message().to_string())?;
        if file.token.is_empty() {
            return Err("no [[token]] entries: every request would be refused".into());
        }
        let mut grants: Vec<Grant> = Vec::with_capacity(file.token.len());
        let mut weak = 0usize;
        for (i, t) in file.token.into_iter().enumerate() {
            let entry = i.saturating_add(1);
            let at = |m: &str| format!("token entry {entry}: {m}");
            let digest = match (t.token, t.token_sha256) {
                (Some(plain), None) => {
                    if plain.is_empty() {
                        return Err(at("token is empty"));
                    }
                    if plain.len() < WEAK_TOKEN_LEN {
                        weak = weak.saturating_add(1);
                    }
                    if !plain.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(at("a token is printable ASCII without spaces"));
                    }
                    sha256(plain.as_bytes())
                }
                (None, Some(hex_digest)) => {
                    let bytes = hex::decode(hex_digest.trim())
                        .map_err(|_| at("token_sha256 is not hexadecimal"))?;
                    <[u8; 32]>::try_from(bytes.as_slice())
                        .map_err(|_| at("token_sha256 is not 64 hex digits (SHA-256)"))?
                }
                _ => return Err(at("give exactly one of token and token_sha256")),
            };
            let tenants = if t.tenants.iter().any(|x| x == "*") {
                Tenants::Any
            } else {
                if t.tenants.is_empty() {
                    return Err(at("tenants is empty; list tenant ids or [\"*\"]"));
                }
                for tenant in &t.tenants {
                    super::validate(Some(tenant.as_bytes())).map_err(|e| at(&e.to_string()))?;
                }
                Tenants::Only(t.tenants)
            };
            if grants.iter().any(|g| bool::from(g.digest.ct_eq(&digest))) {
                return Err(at("the same token is listed twice"));
            }
            grants.push(Grant { digest, tenants, role: t.role, entry });
        }
        Ok(TokenSet { grants, weak })
    }

    /// The grant of a presented token. Every entry is compared, in constant time, whatever
    /// matches: the time taken says nothing about which entry (or how much of one) matched.
    pub fn find(&self, token: &[u8]) -> Option<&Grant> {
        let digest = sha256(token);
        let mut found = None;
        for g in &self.grants {
            if bool::from(g.digest.ct_eq(&digest)) {
                found = Some(g);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// Plain tokens shorter than [`WEAK_TOKEN_LEN`] bytes.
    pub fn weak(&self) -> usize {
        self.weak
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[token]]
token = "writer-token-0123456789"
tenants = ["acme"]
role = "write"

[[token]]
token_sha256 = "REPLACE"
tenants = ["*"]
role = "admin"

[[token]]
token = "reader-token-0123456789"
tenants = ["acme", "beta"]
role = "read"
"#;

    fn set() -> TokenSet {
        let digest = hex::encode(sha256(b"admin-token-0123456789"));
        TokenSet::parse(&FILE.replace("REPLACE", &digest)).unwrap()
    }

    #[test]
    fn plain_and_sha256_tokens_are_found_with_their_grants() {
        let s = set();
        assert_eq!(s.len(), 3);
        let w = s.find(b"writer-token-0123456789").unwrap();
        assert_eq!((w.role, w.tenants.only_one()), (Role::Write, Some("acme")));
        let a = s.find(b"admin-token-0123456789").unwrap();
        assert_eq!((a.role, &a.tenants), (Role::Admin, &Tenants::Any));
        let r = s.find(b"reader-token-0123456789").unwrap();
        assert!(r.tenants.allows("beta") && !r.tenants.allows("gamma"));
        assert_eq!(r.tenants.only_one(), None);
        assert!(s.find(b"writer-token-012345678").is_none());
        assert!(s.find(b"").is_none());
        assert_eq!(s.weak(), 0);
    }

    #[test]
    fn short_tokens_are_accepted_and_counted_as_weak() {
        let s = TokenSet::parse(
            "[[token]]\ntoken = \"s3cr3t\"\ntenants = [\"acme\"]\nrole = \"write\"",
        )
        .unwrap();
        assert_eq!(s.weak(), 1);
        assert!(s.find(b"s3cr3t").is_some());
    }

    #[test]
    fn roles_allow_their_own_calls_and_admin_allows_all() {
        assert!(Role::Write.allows(Role::Write) && !Role::Write.allows(Role::Read));
        assert!(Role::Read.allows(Role::Read) && !Role::Read.allows(Role::Admin));
        for r in [Role::Write, Role::Read, Role::Admin] {
            assert!(Role::Admin.allows(r));
        }
    }

    #[test]
    fn bad_entries_are_refused_with_their_position() {
        let cases = [
            ("", "no [[token]]"),
            ("[[token]]\ntenants=[\"a\"]\nrole=\"read\"", "exactly one"),
            ("[[token]]\ntoken=\"\"\ntenants=[\"a\"]\nrole=\"read\"", "empty"),
            ("[[token]]\ntoken_sha256=\"abcd\"\ntenants=[\"a\"]\nrole=\"read\"", "64 hex"),
            ("[[token]]\ntoken_sha256=\"zz\"\ntenants=[\"a\"]\nrole=\"read\"", "hexadecimal"),
            ("[[token]]\ntoken=\"0123456789abcdefg\"\ntenants=[]\nrole=\"read\"", "empty"),
            (
                "[[token]]\ntoken=\"0123456789abcdefg\"\ntenants=[\"a/b\"]\nrole=\"read\"",
                "invalid tenant",
            ),
            (
                "[[token]]\ntoken=\"0123456789abcdefg\"\ntenants=[\"a\"]\nrole=\"root\"",
                "unknown variant",
            ),
            (
                "[[token]]\ntoken=\"0123456789abcdefg\"\ntenants=[\"a\"]\nrole=\"read\"\nextra=1",
                "unknown field",
            ),
        ];
        for (text, want) in cases {
            let e = TokenSet::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let twice =
            "[[token]]\ntoken=\"0123456789abcdefg\"\ntenants=[\"a\"]\nrole=\"read\"\n".repeat(2);
        let e = TokenSet::parse(&twice).unwrap_err();
        assert!(e.contains("token entry 2") && e.contains("twice"), "{e}");
    }

    #[test]
    fn debug_output_never_shows_a_token_or_its_digest() {
        let s = set();
        let shown = format!("{s:?}");
        assert!(!shown.contains("writer-token"));
        assert!(!shown.contains(&hex::encode(sha256(b"admin-token-0123456789"))));
        assert!(shown.contains("entry"));
    }
}
