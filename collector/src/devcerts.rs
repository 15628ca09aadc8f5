//! `skein certs DIR`: a development certificate authority, a server and a client certificate
//! signed by it, and an auth file with one random token per role, so that `skein demo`
//! and the compose/Kubernetes deploys run with TLS and authentication without an external PKI.
//!
//! Files already in DIR are kept (running it again is harmless, and a deploy's init step can run
//! it on every start); delete the directory to rotate everything. Private keys and the auth
//! file are written mode 0600. These certificates are for development: production deploys bring
//! certificates from their own CA.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The files `skein certs` writes, by name inside its directory.
pub const CA: &str = "ca.pem";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";
pub const CLIENT_CERT: &str = "client.pem";
pub const CLIENT_KEY: &str = "client-key.pem";
pub const AUTH_FILE: &str = "auth.toml";
/// `SKEIN_ADMIN_TOKEN=…`, `SKEIN_WRITE_TOKEN=…`, `SKEIN_READ_TOKEN=…` (an env file for
/// compose, and what `skein demo` prints).
pub const TOKENS_ENV: &str = "tokens.env";
/// Each token alone in a file (`admin.token`, `write.token`, `read.token`), for clients that
/// read credentials from a file: Prometheus' `credentials_file`, Grafana's `$__file{…}`.
pub const TOKEN_FILES: [&str; 3] = ["admin.token", "write.token", "read.token"];

/// Names every dev server certificate is valid for, besides `--host`.
const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write into (created if missing; existing files are kept).
    dir: PathBuf,
    /// Another DNS name or IP address the server certificate is valid for (repeatable), e.g.
    /// the compose service name `skein`.
    #[arg(long = "host")]
    hosts: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path} exists but {missing} does not: remove the directory to start afresh")]
    Partial { path: PathBuf, missing: &'static str },
    #[error("no randomness from the operating system")]
    Random,
}

/// The tokens of a dev auth file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevTokens {
    pub admin: String,
    pub write: String,
    pub read: String,
}

pub fn run(args: CertsArgs) -> std::process::ExitCode {
    match ensure(&args.dir, &args.hosts) {
        Ok(_) => {
            println!("development TLS and tokens in {}", args.dir.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("skein certs: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Writes whatever of the PKI and auth file is missing from `dir` and returns the tokens.
pub fn ensure(dir: &Path, hosts: &[String]) -> Result<DevTokens, CertsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertsError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ca_path = dir.join(CA);
    if !ca_path.exists() {
        for f in [SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY] {
            if dir.join(f).exists() {
                return Err(CertsError::Partial { path: dir.join(f), missing: CA });
            }
        }
        write_pki(dir, hosts)?;
    }
    let env_path = dir.join(TOKENS_ENV);
    if let Ok(text) = std::fs::read_to_string(&env_path)
        && let Some(tokens) = parse_env(&text)
    {
        return Ok(tokens);
    }
    let tokens =
        DevTokens { admin: random_token()?, write: random_token()?, read: random_token()? };
    let mut auth = String::from("# Development tokens written by `skein certs`.\n");
    for (token, role) in
        [(&tokens.admin, "admin"), (&tokens.write, "write"), (&tokens.read, "read")]
    {
        let _ = write!(
            auth,
            "\n[[token]]\ntoken = \"{token}\"\ntenants = [\"*\"]\nrole = \"{role}\"\n"
        );
    }
    write_private(&dir.join(AUTH_FILE), &auth)?;
    let env = format!(
        "SKEIN_ADMIN_TOKEN={}\nSKEIN_WRITE_TOKEN={}\nSKEIN_READ_TOKEN={}\n",
        tokens.admin, tokens.write, tokens.read
    );
    for (file, token) in TOKEN_FILES.iter().zip([&tokens.admin, &tokens.write, &tokens.read]) {
        write_private(&dir.join(file), token)?;
    }
    // The env file last: its presence says the set is complete.
    write_private(&env_path, &env)?;
    Ok(tokens)
}

fn write_pki(dir: &Path, hosts: &[String]) -> Result<(), CertsError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "skein development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);

    let mut names: Vec<String> = DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect();
    names.extend(hosts.iter().filter(|h| !names.contains(h)).cloned().collect::<Vec<_>>());
    let (server, server_key) = leaf(names, "skein", ExtendedKeyUsagePurpose::ServerAuth, &issuer)?;
    let (client, client_key) = leaf(
        vec!["skein-client".to_string()],
        "skein-client",
        ExtendedKeyUsagePurpose::ClientAuth,
        &issuer,
    )?;
    // Keys first, the CA last: a run interrupted half-way leaves no CA and is redone whole.
    write_private(&dir.join(SERVER_KEY), &server_key)?;
    write_private(&dir.join(CLIENT_KEY), &client_key)?;
    write_public(&dir.join(SERVER_CERT), &server)?;
    write_public(&dir.join(CLIENT_CERT), &client)?;
    write_public(&dir.join(CA), &ca_pem)
}

fn leaf(
    names: Vec<String>,
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, String), CertsError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(names)?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.extended_key_usages = vec![usage];
    Ok((p.signed_by(&key, issuer)?.pem(), key.serialize_pem()))
}

fn random_token() -> Result<String, CertsError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| CertsError::Random)?;
    Ok(hex::encode(bytes))
}

fn parse_env(text: &str) -> Option<DevTokens> {
    let get = |key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(str::to_string)
    };
    Some(DevTokens {
        admin: get("SKEIN_ADMIN_TOKEN")?,
        write: get("SKEIN_WRITE_TOKEN")?,
        read: get("SKEIN_READ_TOKEN")?,
    })
}

fn write_public(path: &Path, body: &str) -> Result<(), CertsError> {
    std::fs::write(path, body).map_err(|source| CertsError::Io { path: path.to_path_buf(), source })
}

fn write_private(path: &Path, body: &str) -> Result<(), CertsError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let io = |source| CertsError::Io { path: path.to_path_buf(), source };
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(body.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_pki_and_tokens_that_load_and_keeps_them_on_a_second_run() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path(), &["skein".to_string()]).unwrap();
        let tls = crate::tls::Tls::load(crate::tls::TlsFiles {
            cert: dir.path().join(SERVER_CERT),
            key: dir.path().join(SERVER_KEY),
            client_ca: Some(dir.path().join(CA)),
        });
        assert!(tls.is_ok(), "{:?}", tls.err());
        let set = crate::tenant::TokenSet::load(&dir.path().join(AUTH_FILE)).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.weak(), 0);
        let admin = set.find(first.admin.as_bytes()).unwrap();
        assert_eq!(admin.role, crate::tenant::Role::Admin);
        let admin_file = std::fs::read_to_string(dir.path().join(TOKEN_FILES[0])).unwrap();
        assert_eq!(admin_file, first.admin);
        let ca = std::fs::read(dir.path().join(CA)).unwrap();
        let second = ensure(dir.path(), &[]).unwrap();
        assert_eq!(first, second);
        assert_eq!(std::fs::read(dir.path().join(CA)).unwrap(), ca, "the CA is kept");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SERVER_KEY)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "keys are private");
        }
    }

    #[test]
    fn a_directory_with_keys_but_no_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SERVER_KEY), "x").unwrap();
        let e = ensure(dir.path(), &[]).unwrap_err();
        assert!(matches!(e, CertsError::Partial { .. }), "{e}");
    }
}
