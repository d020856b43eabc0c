//! The control plane's keys and certificates, made fresh for every control plane: a CA, the
//! API server's serving certificate (for every address it is reached at), an admin client
//! certificate in `system:masters`, and the key pair that signs service-account tokens.
//! What controller-runtime's envtest makes, with rcgen.

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Files of one control plane's PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate (PEM): it signs the serving and client certificates.
    pub ca_pem: String,
    /// `ca.crt`.
    pub ca_file: PathBuf,
    /// `ca.key`: kube-controller-manager's cluster signing key.
    pub ca_key_file: PathBuf,
    /// `apiserver.crt` / `apiserver.key`.
    pub serving_cert: PathBuf,
    /// Its key.
    pub serving_key: PathBuf,
    /// The admin's client certificate (PEM), `O=system:masters`.
    pub admin_cert_pem: String,
    /// Its key (PEM).
    pub admin_key_pem: String,
    /// `sa.key`: signs service-account tokens.
    pub sa_key: PathBuf,
    /// `sa.pub`: verifies them.
    pub sa_pub: PathBuf,
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

impl Pki {
    /// Makes the PKI in `dir`, the serving certificate valid for `addresses` and the names
    /// a pod uses for the `kubernetes` Service.
    pub fn create(dir: &Path, addresses: &[IpAddr]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "moim test control plane CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, &ca_key);

        let mut names: Vec<String> = vec![
            "localhost".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        names.extend(addresses.iter().map(IpAddr::to_string));
        let mut serving = CertificateParams::new(names)?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_key = KeyPair::generate()?;
        let serving_cert = serving.signed_by(&serving_key, &issuer)?;

        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin
            .distinguished_name
            .push(DnType::CommonName, "moim-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_key = KeyPair::generate()?;
        let admin_cert = admin.signed_by(&admin_key, &issuer)?;

        let sa = KeyPair::generate()?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            ca_file: write(dir, "ca.crt", &ca_cert.pem())?,
            ca_key_file: write(dir, "ca.key", &ca_key.serialize_pem())?,
            serving_cert: write(dir, "apiserver.crt", &serving_cert.pem())?,
            serving_key: write(dir, "apiserver.key", &serving_key.serialize_pem())?,
            admin_cert_pem: admin_cert.pem(),
            admin_key_pem: admin_key.serialize_pem(),
            sa_key: write(dir, "sa.key", &sa.serialize_pem())?,
            sa_pub: write(dir, "sa.pub", &sa.public_key_pem())?,
        })
    }
}
