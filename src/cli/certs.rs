//! `passerelle certs …`: the development PKI, and the identity the gateway reads from a
//! certificate.

use anyhow::{Context, bail};
use clap::Subcommand;
use passerelle::registry::Registry;
use passerelle::tls::{self, dev};
use std::path::PathBuf;
use std::process::ExitCode;

/// Certificate commands.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Generate a fresh development PKI: a CA, the gateway's server and client certificates, one
    /// client certificate per partner of the registry, revoked, expired and unknown test
    /// certificates, and the CRL. For development and tests only: the keys are meant to be
    /// committed, so they are public. Every run makes a new CA and overwrites the files.
    Dev {
        /// The folder to write.
        #[arg(long, default_value = dev::DEFAULT_DIR)]
        out: PathBuf,
        /// The registry whose partners get a client certificate.
        #[arg(long, default_value = "config/registry.toml")]
        registry: PathBuf,
        /// Instead of the registry's partners, these, comma-separated.
        #[arg(long, value_name = "ID,ID,...", value_delimiter = ',')]
        partners: Option<Vec<String>>,
    },
    /// Print what the gateway reads from a PEM certificate to identify its holder: its URI names,
    /// its SHA-256 fingerprint (the form the registry pins) and the CA its chain leads to (the
    /// form of the registry's `issuer`). The certificate is not verified.
    Identity {
        /// The certificate file (PEM; the first certificate is read).
        file: PathBuf,
    },
}

impl CertsCommand {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            CertsCommand::Dev {
                out,
                registry,
                partners,
            } => {
                let partners = match partners {
                    Some(partners) => partners,
                    None => Registry::partner_ids(&registry).with_context(|| {
                        format!(
                            "reading the partners of {} (or name them with --partners)",
                            registry.display()
                        )
                    })?,
                };
                let partners: Vec<&str> = partners.iter().map(String::as_str).collect();
                if out.exists() && !out.is_dir() {
                    bail!(
                        "{} is not a folder: --out names the folder to write into",
                        out.display()
                    );
                }
                let pki = dev::generate_dev_pki(&out, &partners).with_context(|| {
                    format!("generating the development PKI in {}", out.display())
                })?;
                for cert in &pki.certificates {
                    let names = if cert.names.is_empty() {
                        "(certificate authority)"
                    } else {
                        cert.names.as_str()
                    };
                    say!("{:<24} {:<40} {}", cert.name, names, cert.fingerprint);
                }
                say!(
                    "wrote {} certificates, their keys and {} into {}",
                    pki.certificates.len(),
                    pki.crl
                        .file_name()
                        .map(|name| name.to_string_lossy())
                        .unwrap_or_default(),
                    out.display()
                );
                eprintln!("development only: these keys are public, never use them in production");
                Ok(ExitCode::SUCCESS)
            }
            CertsCommand::Identity { file } => {
                let certs = tls::load_certs(&file)?;
                let identity = tls::peer_identity(&certs)
                    .with_context(|| format!("reading {}", file.display()))?;
                if identity.uris.is_empty() {
                    say!("uri: (none: the gateway cannot identify this certificate's holder)");
                }
                for uri in &identity.uris {
                    say!("uri: {uri}");
                }
                say!("fingerprint: {}", identity.fingerprint);
                // The CA the file's chain leads to (the last certificate's issuer, above any
                // intermediate the file holds), in the form the registry's `issuer` takes (see
                // `tls::issuers`).
                if let Some(issuer) = certs.last().and_then(tls::issuers::issuer_name) {
                    say!("issuer: {issuer}");
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
