//! TLS of the relay links. Production: mutual TLS from a CA — each node presents a certificate
//! for the name [`RELAY_SERVER_NAME`] signed by the CA and accepts only peers that do the
//! same. `--dev`: a fresh self-signed certificate and no peer verification, so nodes on one
//! machine link up with no set-up (the link is still encrypted; never use it across a network
//! you do not control).

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Name every relay certificate is issued for and every client checks.
pub const RELAY_SERVER_NAME: &str = "moim-relay";
/// ALPN of the relay protocol.
pub const ALPN: &[u8] = b"moim-relay/1";

/// How a node trusts its peers.
#[derive(Debug, Clone)]
pub enum RelayTrust {
    /// Development: self-signed, no verification.
    Dev,
    /// Mutual TLS from a CA (PEM files).
    Ca {
        /// CA certificate(s).
        ca: PathBuf,
        /// This node's certificate chain.
        cert: PathBuf,
        /// This node's private key.
        key: PathBuf,
    },
}

/// QUIC configurations of one node, both roles.
pub struct RelayTls {
    /// Accepting links.
    pub server: quinn::ServerConfig,
    /// Dialling links.
    pub client: quinn::ClientConfig,
}

/// Why TLS could not be set up; names the file, never key material.
#[derive(Debug, thiserror::Error)]
#[error("relay tls: {0}")]
pub struct TlsError(pub String);

fn err(context: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError(format!("{context}: {e}"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport() -> Arc<quinn::TransportConfig> {
    Arc::new(transport_config())
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Links idle between meetings: keep them alive, notice a dead peer within 10 s.
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    t.max_idle_timeout(Some(
        // 10 000 ms as a QUIC varint (the Duration conversion can only fail above 2^62 ms).
        quinn::IdleTimeout::from(quinn::VarInt::from_u32(10_000)),
    ));
    // Start from a short RTT guess so a handshake that loses its first packets retries fast.
    t.initial_rtt(Duration::from_millis(100));
    // Full-size RTP packets (about 1,200 bytes from browsers) must fit in one datagram from
    // the first moment: QUIC's default of 1,200 bytes would drop them until path MTU discovery
    // has run (seconds), taking keyframes with them. 1,400 fits every 1,500-byte network path
    // with room for IPv6 and a tunnel header; discovery still raises it where it can.
    t.initial_mtu(1400);
    // Media, not bulk data: a fixed window (see `relay::congestion` for the measurements).
    t.congestion_controller_factory(Arc::new(super::congestion::FixedWindowConfig));
    // Media datagrams: up to 1 MiB queued per link before the oldest are dropped.
    t.datagram_send_buffer_size(1 << 20);
    t.datagram_receive_buffer_size(Some(1 << 20));
    t
}

impl RelayTrust {
    /// What the trust's files hold now (`None` in development mode, which has no files); a
    /// change means they were renewed. Read whole, so a Secret volume's symlink swap counts.
    pub fn contents(&self) -> Option<Vec<u8>> {
        match self {
            Self::Dev => None,
            Self::Ca { ca, cert, key } => {
                let mut all = Vec::new();
                for p in [ca, cert, key] {
                    all.extend(std::fs::read(p).unwrap_or_default());
                    all.push(0);
                }
                Some(all)
            }
        }
    }
}

impl RelayTls {
    /// Builds both configurations.
    pub fn new(trust: &RelayTrust) -> Result<Self, TlsError> {
        let (server, client) = match trust {
            RelayTrust::Dev => dev()?,
            RelayTrust::Ca { ca, cert, key } => with_ca(ca, cert, key)?,
        };
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            QuicServerConfig::try_from(server).map_err(|e| err("server config", e))?,
        ));
        server.transport_config(transport());
        let mut client = quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(client).map_err(|e| err("client config", e))?,
        ));
        client.transport_config(transport());
        Ok(Self { server, client })
    }

    /// The same, over a path that carries only `mtu`-byte UDP payloads and never learns more
    /// (MTU discovery off): the state a link is in after quinn's black-hole detection fell back
    /// to its minimum. For tests of what crosses such a link.
    pub fn with_path_mtu(trust: &RelayTrust, mtu: u16) -> Result<Self, TlsError> {
        let mut tls = Self::new(trust)?;
        let mut t = transport_config();
        t.initial_mtu(mtu).min_mtu(mtu).mtu_discovery_config(None);
        let t = Arc::new(t);
        tls.server.transport_config(t.clone());
        tls.client.transport_config(t);
        Ok(tls)
    }
}

fn dev() -> Result<(rustls::ServerConfig, rustls::ClientConfig), TlsError> {
    let key = rcgen::KeyPair::generate().map_err(|e| err("dev key", e))?;
    let cert = rcgen::CertificateParams::new(vec![RELAY_SERVER_NAME.to_owned()])
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| err("dev certificate", e))?;
    let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| err("dev key", e))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err("tls versions", e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .map_err(|e| err("dev certificate", e))?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err("tls versions", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok((server, client))
}

fn with_ca(
    ca: &PathBuf,
    cert: &PathBuf,
    key: &PathBuf,
) -> Result<(rustls::ServerConfig, rustls::ClientConfig), TlsError> {
    let read_certs = |p: &PathBuf| -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs: Vec<_> = CertificateDer::pem_file_iter(p)
            .map_err(|e| err(&p.display().to_string(), e))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(&p.display().to_string(), e))?;
        if certs.is_empty() {
            return Err(TlsError(format!(
                "{}: no certificate in the file",
                p.display()
            )));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| err(&ca.display().to_string(), e))?;
    }
    let roots = Arc::new(roots);
    let chain = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| err(&key.display().to_string(), e))?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| err("client verifier", e))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err("tls versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| err("node certificate", e))?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err("tls versions", e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| err("node certificate", e))?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok((server, client))
}

/// Development only: accepts any server certificate (signatures are still checked, so the
/// handshake is a real TLS 1.3 handshake; only the identity is not).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
