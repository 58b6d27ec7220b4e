//! `passerelle deliveries`: the store's dead letters, listed, put back in line or discarded,
//! through a running gateway's admin listener.
//!
//! The running gateway holds its store open, so these commands ask it rather than open the
//! store themselves. The admin listener is found in the gateway's configuration file, or given.

use anyhow::{Context, bail};
use passerelle::config::Config;
use passerelle::store::DEAD_LETTER_PAGE;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where the admin listener is.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The gateway's configuration file, to read the admin listener's address from. Without
    /// it, and without --admin, the default address (127.0.0.1:9090).
    #[arg(long, conflicts_with = "admin")]
    pub config: Option<PathBuf>,
    /// The admin listener's base URL, such as http://127.0.0.1:9090 (or its address alone,
    /// 127.0.0.1:9090).
    #[arg(long)]
    pub admin: Option<String>,
}

impl AdminArgs {
    fn base_url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.admin {
            let url = url.trim_end_matches('/');
            // The listener's address as the configuration writes it (`127.0.0.1:9090`) is
            // taken for what it means: the admin listener speaks plain HTTP.
            if !url.contains("://") {
                return Ok(format!("http://{url}"));
            }
            return Ok(url.to_owned());
        }
        let config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        Ok(format!("http://{}", config.admin.listen))
    }
}

/// `passerelle deliveries …`
#[derive(Debug, clap::Subcommand)]
pub enum DeliveriesCommand {
    /// List the dead letters: deliveries the gateway gave up, with their last error.
    Dead {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the admin listener's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in line, on the delivery mode the registry gives each recipient
    /// now: each is tried again at once (or appears in its recipient's inbox), with its
    /// attempt count at zero. Fix the cause first.
    Redeliver {
        #[command(flatten)]
        admin: AdminArgs,
        /// The delivery ids (as `deliveries dead` lists them).
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Give dead letters up for good: each leaves the dead letters, its body is deleted, and
    /// it is never delivered. The audit log records it (`discarded`). Any dead letter can be
    /// discarded, those that cannot be redelivered among them.
    Discard {
        #[command(flatten)]
        admin: AdminArgs,
        /// The delivery ids (as `deliveries dead` lists them).
        #[arg(required = true)]
        ids: Vec<u64>,
    },
}

/// An operator's change to dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Redeliver,
    Discard,
}

impl Change {
    /// The admin listener's route for it, after `/deliveries/{id}/`.
    fn route(self) -> &'static str {
        match self {
            Change::Redeliver => "redeliver",
            Change::Discard => "discard",
        }
    }

    /// What is said of a dead letter it was made to.
    fn done(self) -> &'static str {
        match self {
            Change::Redeliver => "back in line",
            Change::Discard => "discarded",
        }
    }

    /// What is said of a dead letter it was not made to.
    fn not_done(self) -> &'static str {
        match self {
            Change::Redeliver => "not redelivered",
            Change::Discard => "not discarded",
        }
    }
}

/// A plain-HTTP client for the admin listener. reqwest is built without a default TLS
/// provider, and needs one installed even when it never makes a TLS connection.
fn client() -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The admin listener is on this host: never through a proxy from the environment.
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// Sends a request to the admin listener at `url`; returns the status and the body.
async fn ask(
    request: reqwest::RequestBuilder,
    url: &str,
) -> anyhow::Result<(reqwest::StatusCode, String)> {
    let response = request.send().await.map_err(|error| {
        let hint = if error.is_connect() {
            "is the gateway running, with its admin listener at this address?"
        } else if error.is_timeout() {
            "no answer within 30 s"
        } else {
            // The partner listener, given by mistake, answers plain HTTP with TLS.
            "what answered is not the gateway's admin listener, which speaks plain HTTP"
        };
        anyhow::Error::new(error).context(format!("asking {url} ({hint})"))
    })?;
    let status = response.status();
    Ok((status, response.text().await?))
}

/// The `error` of an admin listener's JSON answer, or its text.
fn error_of(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.trim().to_owned())
}

impl DeliveriesCommand {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            match self {
                DeliveriesCommand::Dead { admin, json } => dead(&admin.base_url()?, json).await,
                DeliveriesCommand::Redeliver { admin, ids } => {
                    change(&admin.base_url()?, &ids, Change::Redeliver).await
                }
                DeliveriesCommand::Discard { admin, ids } => {
                    change(&admin.base_url()?, &ids, Change::Discard).await
                }
            }
        })
    }
}

/// Every dead letter, read from the admin listener a page at a time.
async fn all_dead_letters(base: &str) -> anyhow::Result<Vec<Value>> {
    let client = client()?;
    let mut list: Vec<Value> = Vec::new();
    loop {
        let after = list.last().map_or(0, |d| d["id"].as_u64().unwrap_or(0));
        let url = format!("{base}/dead-letters?after={after}&limit={DEAD_LETTER_PAGE}");
        let (status, text) = ask(client.get(&url), &url).await?;
        if !status.is_success() {
            bail!("{url} answered {status}: {}", error_of(&text));
        }
        let page: Vec<Value> = serde_json::from_str(&text).context("the dead-letter list")?;
        let full = page.len() == DEAD_LETTER_PAGE;
        if page
            .iter()
            .any(|d| d["id"].as_u64().is_none_or(|id| id <= after))
        {
            bail!("{url} answered a page out of order");
        }
        list.extend(page);
        if !full {
            return Ok(list);
        }
    }
}

async fn dead(base: &str, json: bool) -> anyhow::Result<ExitCode> {
    let list = all_dead_letters(base).await?;
    if json {
        say!("{}", Value::Array(list));
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        say!("no dead letters");
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:>8}  {:<22} {:<8} {:>8}  {:<26} {:<24} event",
        "id",
        "recipient",
        "channel",
        "attempts",
        "last error",
        "created"
    );
    for d in &list {
        let text = |key: &str| d[key].as_str().unwrap_or("-").to_owned();
        say!(
            "{:>8}  {:<22} {:<8} {:>8}  {:<26} {:<24} {} {}",
            // As text: a JSON value's Display ignores the width.
            d["id"].to_string(),
            text("recipient"),
            text("channel"),
            d["attempts"].to_string(),
            text("last_error"),
            text("created_at"),
            text("event_type"),
            text("event_id"),
        );
    }
    say!("{} dead letter(s)", list.len());
    Ok(ExitCode::SUCCESS)
}

/// Makes `what` change to each dead letter of `ids`; fails if it was not made to one of them.
async fn change(base: &str, ids: &[u64], what: Change) -> anyhow::Result<ExitCode> {
    let client = client()?;
    let mut failed = 0;
    for id in ids {
        let url = format!("{base}/deliveries/{id}/{}", what.route());
        // A failed request fails this id only: the others are still tried, and reported.
        let (status, text) = match ask(client.post(&url), &url).await {
            Ok(answer) => answer,
            Err(error) => {
                failed += 1;
                eprintln!("delivery {id}: {}: {error:#}", what.not_done());
                continue;
            }
        };
        if status.is_success() {
            // The channel it waits on: a redelivery takes the recipient's delivery mode now.
            let channel = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|answer| answer["channel"].as_str().map(str::to_owned));
            match channel {
                Some(channel) if what == Change::Redeliver => {
                    say!("delivery {id}: {} ({channel})", what.done());
                }
                _ => say!("delivery {id}: {}", what.done()),
            }
        } else {
            failed += 1;
            eprintln!(
                "delivery {id}: {} ({status}): {}",
                what.not_done(),
                error_of(&text)
            );
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
