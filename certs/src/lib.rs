//! rtmpq-certs: the CA, gateway and edge certificates (rcgen), SHA-256 fingerprints (pins),
//! loading them, and the TLS 1.3 configs (ring provider) that check them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// File names inside a cert dir.
pub mod files {
    /// The CA certificate (give it to edges as `--ca`).
    pub const CA_CERT: &str = "ca.pem";
    /// The CA's private key (keep it off the gateway if you can).
    pub const CA_KEY: &str = "ca.key";
    /// The gateway's certificate.
    pub const GATEWAY_CERT: &str = "gateway.pem";
    /// The gateway's private key.
    pub const GATEWAY_KEY: &str = "gateway.key";
    /// A self-signed gateway certificate in a gateway's state dir.
    pub const SELF_SIGNED_CERT: &str = "self-signed.pem";
    /// Its key.
    pub const SELF_SIGNED_KEY: &str = "self-signed.key";
}

/// What went wrong with certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file held no usable PEM.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// Generating a certificate failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// The TLS library rejected the configuration.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// A file would be overwritten.
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    /// A pin string that is not `sha256:` and 64 hex digits.
    #[error("bad pin {0:?}: expected sha256: followed by 64 hex digits")]
    BadPin(String),
    /// Client certificate verification could not be set up.
    #[error("client verifier: {0}")]
    ClientVerifier(String),
}

/// The SHA-256 fingerprint of a DER certificate, written `sha256:HEX` (as `openssl x509
/// -fingerprint -sha256` computes it, without colons).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of `cert`.
    pub fn of(cert: &CertificateDer<'_>) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        Fingerprint(digest.as_ref().try_into().expect("32 bytes"))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = CertError;
    fn from_str(s: &str) -> Result<Self, CertError> {
        let bad = || CertError::BadPin(s.to_owned());
        let hex_part = s.strip_prefix("sha256:").ok_or_else(bad)?.replace(':', "");
        let bytes = hex::decode(hex_part).map_err(|_| bad())?;
        Ok(Fingerprint(bytes.try_into().map_err(|_| bad())?))
    }
}

/// A certificate chain with its private key.
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("leaf", &self.chain.first().map(Fingerprint::of))
            .field("key", &"****")
            .finish()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Loads a PEM certificate chain and PEM private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Identity, CertError> {
        let chain = load_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| CertError::Pem {
            path: key.to_owned(),
            what: e.to_string(),
        })?;
        Ok(Identity { chain, key })
    }

    /// The leaf certificate's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.chain[0])
    }
}

/// Loads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem_err = |what: String| CertError::Pem {
        path: path.to_owned(),
        what,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no certificate found".into()));
    }
    Ok(certs)
}

/// Creates `path`, which must not exist, for a secret (a private key, a key of the gateway's
/// state), readable and writable by its owner only: on Unix mode 0600; on Windows an access
/// list of its own, not inherited from the folder, that grants the file's owner full access
/// and nobody else any (SDDL `D:P(A;;FA;;;OW)`).
pub fn create_secret_file(path: &Path) -> std::io::Result<std::fs::File> {
    #[cfg(windows)]
    return owner_only_windows(path);
    #[cfg(not(windows))]
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path)
    }
}

#[cfg(windows)]
fn owner_only_windows(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::windows::ffi::OsStrExt;
    use std::os::windows::io::FromRawHandle;
    use windows_sys::Win32::Foundation::{LocalFree, GENERIC_WRITE, INVALID_HANDLE_VALUE};
    use windows_sys::Win32::Security::Authorization::{
        ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
    };
    use windows_sys::Win32::Security::{PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES};
    use windows_sys::Win32::Storage::FileSystem::{CreateFileW, CREATE_NEW, FILE_ATTRIBUTE_NORMAL};
    // Protected (nothing inherited), one entry: the owner, all access.
    let sddl: Vec<u16> = "D:P(A;;FA;;;OW)\0".encode_utf16().collect();
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `sddl` is a NUL-terminated UTF-16 string; the descriptor the call allocates is
    // freed below with LocalFree, as its documentation asks.
    let converted = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut descriptor,
            std::ptr::null_mut(),
        )
    };
    if converted == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let attributes = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: descriptor,
        bInheritHandle: 0,
    };
    let wide: Vec<u16> = path.as_os_str().encode_wide().chain(Some(0)).collect();
    // SAFETY: `wide` is a NUL-terminated path, `attributes` lives through the call; no other
    // process may open the file while this handle is open (share mode 0).
    let handle = unsafe {
        CreateFileW(
            wide.as_ptr(),
            GENERIC_WRITE,
            0,
            &attributes,
            CREATE_NEW,
            FILE_ATTRIBUTE_NORMAL,
            std::ptr::null_mut(),
        )
    };
    let error = std::io::Error::last_os_error();
    // SAFETY: allocated by the conversion above, used by nothing after CreateFileW.
    unsafe { LocalFree(descriptor) };
    if handle == INVALID_HANDLE_VALUE {
        return Err(error);
    }
    // SAFETY: a valid file handle this function owns, handed to the File that closes it.
    Ok(unsafe { std::fs::File::from_raw_handle(handle) })
}

fn write_new(path: &Path, contents: &str, secret: bool) -> Result<(), CertError> {
    use std::io::Write;
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let created = match secret {
        true => create_secret_file(path),
        false => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path),
    };
    let mut file = created.map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => CertError::Exists(path.to_owned()),
        _ => io(e),
    })?;
    file.write_all(contents.as_bytes()).map_err(io)
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "rtmpq CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn leaf_params(
    common_name: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// Creates a CA and a gateway certificate for `sans` (default `localhost`, `127.0.0.1`) in
/// `dir`; returns the gateway certificate's pin. Never overwrites existing files.
pub fn init(dir: &Path, sans: &[String]) -> Result<Fingerprint, CertError> {
    init_valid_for(dir, sans, None)
}

/// Like [`init`], the gateway certificate valid for `days` from now (`None`: rcgen's default,
/// far in the future).
pub fn init_valid_for(
    dir: &Path,
    sans: &[String],
    days: Option<u32>,
) -> Result<Fingerprint, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for name in [
        files::CA_CERT,
        files::CA_KEY,
        files::GATEWAY_CERT,
        files::GATEWAY_KEY,
    ] {
        if dir.join(name).exists() {
            return Err(CertError::Exists(dir.join(name)));
        }
    }
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params().self_signed(&ca_key)?;
    let sans = if sans.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        sans.to_vec()
    };
    let gw_key = KeyPair::generate()?;
    let issuer = Issuer::new(ca_params(), &ca_key);
    let mut gw_params = leaf_params("rtmpq gateway", sans, ExtendedKeyUsagePurpose::ServerAuth)?;
    if let Some(days) = days {
        let now = time::OffsetDateTime::now_utc();
        gw_params.not_before = now - time::Duration::days(1);
        gw_params.not_after = now + time::Duration::days(days.into());
    }
    let gw_cert = gw_params.signed_by(&gw_key, &issuer)?;
    write_new(&dir.join(files::CA_KEY), &ca_key.serialize_pem(), true)?;
    write_new(&dir.join(files::CA_CERT), &ca_cert.pem(), false)?;
    write_new(&dir.join(files::GATEWAY_KEY), &gw_key.serialize_pem(), true)?;
    // The chain lets edges that only trust the CA verify the gateway.
    let chain = format!("{}{}", gw_cert.pem(), ca_cert.pem());
    write_new(&dir.join(files::GATEWAY_CERT), &chain, false)?;
    Ok(Fingerprint::of(gw_cert.der()))
}

/// Issues an edge client certificate named `name`, signed by the CA in `dir`; returns the
/// paths of the certificate and key (`edge-NAME.pem`, `edge-NAME.key`).
pub fn issue_edge(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), CertError> {
    let key_path = dir.join(files::CA_KEY);
    let ca_pem = std::fs::read_to_string(&key_path).map_err(|source| CertError::Io {
        path: key_path.clone(),
        source,
    })?;
    let ca_key = KeyPair::from_pem(&ca_pem)?;
    let issuer = Issuer::new(ca_params(), &ca_key);
    let key = KeyPair::generate()?;
    let cert = leaf_params(
        &format!("rtmpq edge {name}"),
        vec![name.to_owned()],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?
    .signed_by(&key, &issuer)?;
    let cert_path = dir.join(format!("edge-{name}.pem"));
    let edge_key_path = dir.join(format!("edge-{name}.key"));
    write_new(&edge_key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, edge_key_path))
}

/// Loads the self-signed gateway identity kept in `state_dir`, creating it the first time so
/// the pin stays the same across restarts.
pub fn self_signed(state_dir: &Path) -> Result<Identity, CertError> {
    let cert = state_dir.join(files::SELF_SIGNED_CERT);
    let key = state_dir.join(files::SELF_SIGNED_KEY);
    if !cert.exists() {
        std::fs::create_dir_all(state_dir).map_err(|source| CertError::Io {
            path: state_dir.to_owned(),
            source,
        })?;
        let pair = KeyPair::generate()?;
        let sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let generated = leaf_params("rtmpq gateway", sans, ExtendedKeyUsagePurpose::ServerAuth)?
            .self_signed(&pair)?;
        write_new(&key, &pair.serialize_pem(), true)?;
        write_new(&cert, &generated.pem(), false)?;
    }
    Identity::load(&cert, &key)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS 1.3 server config for the gateway; with `client_ca`, edges must present a
/// certificate signed by it (mutual TLS).
pub fn server_tls(
    identity: Identity,
    client_ca: Option<Vec<CertificateDer<'static>>>,
) -> Result<rustls::ServerConfig, CertError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_ca {
        Some(cas) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in cas {
                roots.add(ca)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .build()
            .map_err(|e| CertError::ClientVerifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(builder.with_single_cert(identity.chain, identity.key)?)
}

/// The names a certificate is issued for: its DNS subject alternative names (what
/// `rtmpq certs edge --name` writes), else its common name. Empty when it does not parse.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(name) => Some((*name).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned)),
        );
    }
    names
}

/// When a certificate stops being valid (its notAfter), as seconds since the Unix epoch;
/// `None` when it does not parse.
pub fn certificate_expiry(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// How an edge decides to trust the gateway.
#[derive(Debug, Clone)]
pub enum GatewayTrust {
    /// A certificate chain to one of these CAs, for the server name.
    Ca(Vec<CertificateDer<'static>>),
    /// A leaf certificate with exactly this fingerprint (the name is not checked).
    Pin(Fingerprint),
}

/// A TLS 1.3 client config for the edge; `client` adds a certificate for mutual TLS.
pub fn client_tls(
    trust: GatewayTrust,
    client: Option<Identity>,
) -> Result<rustls::ClientConfig, CertError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match trust {
        GatewayTrust::Ca(cas) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in cas {
                roots.add(ca)?;
            }
            builder.with_root_certificates(roots)
        }
        GatewayTrust::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                pin,
                provider: provider(),
            })),
    };
    Ok(match client {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key)?,
        None => builder.with_no_client_auth(),
    })
}

/// The gateway's certificate did not match the pin.
#[derive(Debug, thiserror::Error)]
#[error("gateway certificate {got} does not match pin {expected}")]
pub struct PinMismatch {
    /// The configured pin.
    pub expected: Fingerprint,
    /// What the gateway presented.
    pub got: Fingerprint,
}

/// Accepts exactly one leaf certificate by fingerprint; handshake signatures are still checked.
#[derive(Debug)]
struct PinVerifier {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of(end_entity);
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            let mismatch = PinMismatch {
                expected: self.pin,
                got,
            };
            tracing::warn!("{mismatch}");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(mismatch))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_edge_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let pin = init(dir.path(), &["gw.example".into()]).unwrap();
        let gw = Identity::load(
            &dir.path().join(files::GATEWAY_CERT),
            &dir.path().join(files::GATEWAY_KEY),
        )
        .unwrap();
        assert_eq!(gw.fingerprint(), pin);
        assert_eq!(gw.chain.len(), 2, "leaf and CA");
        assert!(matches!(init(dir.path(), &[]), Err(CertError::Exists(_))));
        let (cert, key) = issue_edge(dir.path(), "cam1").unwrap();
        let edge = Identity::load(&cert, &key).unwrap();
        assert!(!format!("{edge:?}").contains("BEGIN"));
        assert_eq!(certificate_names(edge.chain[0].as_ref()), ["cam1"]);
        assert!(certificate_names(b"not a certificate").is_empty());
        let expires = certificate_expiry(edge.chain[0].as_ref()).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            expires > now + 365 * 86_400,
            "rcgen's default validity is years"
        );
        let ca = load_certs(&dir.path().join(files::CA_CERT)).unwrap();
        server_tls(gw, Some(ca.clone())).unwrap();
        client_tls(GatewayTrust::Ca(ca), Some(edge)).unwrap();
        let mode = std::fs::metadata(dir.path().join(files::CA_KEY))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn self_signed_is_stable_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let a = self_signed(dir.path()).unwrap();
        let b = self_signed(dir.path()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn pins_parse_and_print() {
        let pin: Fingerprint = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(pin.to_string(), format!("sha256:{}", "ab".repeat(32)));
        assert!("sha256:abcd".parse::<Fingerprint>().is_err());
        assert!("md5:00".parse::<Fingerprint>().is_err());
    }
}
