//! Helpers for exercising relay links from tests and benchmarks: a throwaway CA with node
//! certificates, and a raw QUIC peer that can write anything on the control stream.

use super::tls::{RELAY_SERVER_NAME, RelayTls, RelayTrust, TlsError};
use std::net::SocketAddr;
use std::path::Path;

/// Writes a CA (`<ca_name>.pem`) and, for each of `nodes`, a certificate for
/// [`RELAY_SERVER_NAME`] signed by it (`<node>.pem`, `<node>.key`) into `dir`.
pub fn write_pki(dir: &Path, ca_name: &str, nodes: &[&str]) -> Result<(), TlsError> {
    let e = |what: &str, e: &dyn std::fmt::Display| TlsError(format!("{what}: {e}"));
    let ca_key = rcgen::KeyPair::generate().map_err(|x| e("ca key", &x))?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|x| e("ca", &x))?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca_cert = ca.self_signed(&ca_key).map_err(|x| e("ca", &x))?;
    let write = |name: String, text: String| {
        std::fs::write(dir.join(&name), text).map_err(|x| e(&name, &x))
    };
    write(format!("{ca_name}.pem"), ca_cert.pem())?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    for n in nodes {
        let key = rcgen::KeyPair::generate().map_err(|x| e("key", &x))?;
        let cert = rcgen::CertificateParams::new(vec![RELAY_SERVER_NAME.to_owned()])
            .and_then(|p| p.signed_by(&key, &issuer))
            .map_err(|x| e("certificate", &x))?;
        write(format!("{n}.pem"), cert.pem())?;
        write(format!("{n}.key"), key.serialize_pem())?;
    }
    Ok(())
}

/// The trust of a node of `write_pki`'s output: trusts `ca`, presents `node`'s certificate.
pub fn trust(dir: &Path, ca: &str, node: &str) -> RelayTrust {
    RelayTrust::Ca {
        ca: dir.join(format!("{ca}.pem")),
        cert: dir.join(format!("{node}.pem")),
        key: dir.join(format!("{node}.key")),
    }
}

/// Connects to `addr` with `trust`, opens the control stream and writes `frames` as they
/// are; returns why the connection closed (the far end's reason), or why it never opened.
pub async fn raw_peer(
    addr: SocketAddr,
    trust: &RelayTrust,
    frames: Vec<Vec<u8>>,
) -> Result<String, String> {
    let tls = RelayTls::new(trust).map_err(|e| e.to_string())?;
    let local: SocketAddr = if addr.is_ipv4() {
        ([127, 0, 0, 1], 0).into()
    } else {
        (std::net::Ipv6Addr::LOCALHOST, 0).into()
    };
    let mut raw = quinn::Endpoint::client(local).map_err(|e| e.to_string())?;
    raw.set_default_client_config(tls.client);
    let conn = raw
        .connect(addr, RELAY_SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, _recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    for f in frames {
        send.write_all(&f).await.map_err(|e| e.to_string())?;
    }
    Ok(conn.closed().await.to_string())
}
