//! `passerelle serve`: runs the gateway until SIGINT or SIGTERM, then stops gracefully.

use anyhow::Context;
use passerelle::config::Config;
use passerelle::service::RunningGateway;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `passerelle serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The configuration file (see config/passerelle.toml). Without it every setting takes
    /// its default: loopback, the development PKI, the sample registry, data in var/passerelle.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Structured JSON logs on standard error, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

impl ServeArgs {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        init_logging();
        let config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        actix_web::rt::System::new().block_on(async move {
            let running = RunningGateway::start(&config)
                .await
                .context("starting the gateway")?;
            tracing::info!(
                partners = %format!("https://{}", running.addr),
                admin = %format!("http://{}", running.admin_addr),
                "serving"
            );
            wait_for_signal().await?;
            tracing::info!("stopping: draining requests in flight");
            running.shutdown().await?;
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        })
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
