//! `gannet-control certs`: a CA, the server's certificate, an agent client certificate and
//! gannetctl's bearer token, as files in one directory.
//!
//! | file | what |
//! | --- | --- |
//! | `ca.pem`, `ca-key.pem` | the cluster CA (keep the key offline after use) |
//! | `server.pem`, `server-key.pem` | gannet-control's TLS certificate (the given host names) |
//! | `agent.pem`, `agent-key.pem` | a client certificate for agents |
//! | `token` | gannetctl's bearer token |
//!
//! Keys and the token are written with mode 0600.

use std::fs::{self, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

pub use gannet_api::pki::{AGENT_CERT, AGENT_KEY, CA_CERT, TOKEN};
pub const CA_KEY: &str = "ca-key.pem";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: exists (use --force to replace the CA, certificates and token)", .0.display())]
    Exists(PathBuf),
    #[error("cannot generate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The files written, for the caller to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub files: Vec<PathBuf>,
}

fn validity(params: &mut CertificateParams, years: i16) {
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let month = u8::try_from(today.month()).unwrap_or(1);
    let day = u8::try_from(today.day()).unwrap_or(1).min(28);
    // From yesterday, against clocks a little behind.
    params.not_before = rcgen::date_time_ymd(i32::from(today.year()), month, day)
        - std::time::Duration::from_secs(86_400);
    params.not_after = rcgen::date_time_ymd(i32::from(today.year() + years), month, day);
}

/// A random token: 32 bytes from the kernel, hex.
fn token() -> Result<String, CertsError> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0_u8; 32];
    fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut bytes))
        .map_err(|source| CertsError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write(
    dir: &Path,
    name: &str,
    contents: &str,
    mode: u32,
    force: bool,
) -> Result<PathBuf, CertsError> {
    let path = dir.join(name);
    let mut options = OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            CertsError::Exists(path.clone())
        } else {
            CertsError::Io {
                path: path.clone(),
                source,
            }
        }
    })?;
    file.write_all(contents.as_bytes())
        .map_err(|source| CertsError::Io {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

/// Writes a new CA, a server certificate for `hosts` (DNS names or IP addresses), an agent
/// certificate and a token into `dir` (created if missing).
///
/// # Errors
/// If a file exists (without `force`) or cannot be written.
pub fn generate(dir: &Path, hosts: &[String], force: bool) -> Result<Written, CertsError> {
    fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        path: dir.to_owned(),
        source,
    })?;
    if !force {
        for name in [
            CA_CERT,
            CA_KEY,
            SERVER_CERT,
            SERVER_KEY,
            AGENT_CERT,
            AGENT_KEY,
            TOKEN,
        ] {
            let path = dir.join(name);
            if path.exists() {
                return Err(CertsError::Exists(path));
            }
        }
    }

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "gannet cluster CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca_params, 10);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut server_params = CertificateParams::new(hosts.to_vec())?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "gannet-control");
    server_params.use_authority_key_identifier_extension = true;
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut server_params, 2);
    let server_key = KeyPair::generate()?;
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    let mut agent_params = CertificateParams::new(Vec::<String>::new())?;
    agent_params
        .distinguished_name
        .push(DnType::CommonName, "gannet-agent");
    agent_params.use_authority_key_identifier_extension = true;
    agent_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    agent_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut agent_params, 2);
    let agent_key = KeyPair::generate()?;
    let agent_cert = agent_params.signed_by(&agent_key, &issuer)?;

    let token = token()?;
    let files = vec![
        write(dir, CA_CERT, &ca_cert.pem(), 0o644, force)?,
        write(dir, CA_KEY, &ca_key_pem, 0o600, force)?,
        write(dir, SERVER_CERT, &server_cert.pem(), 0o644, force)?,
        write(dir, SERVER_KEY, &server_key.serialize_pem(), 0o600, force)?,
        write(dir, AGENT_CERT, &agent_cert.pem(), 0o644, force)?,
        write(dir, AGENT_KEY, &agent_key.serialize_pem(), 0o600, force)?,
        write(dir, TOKEN, &format!("{token}\n"), 0o600, force)?,
    ];
    Ok(Written { files })
}
