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
    /// Answer every message with 202 without processing, recording or keeping it: the
    /// measuring floor of `passerelle load`, which starts the gateway with it. Never otherwise.
    #[arg(long, hide = true)]
    pub measuring_floor: bool,
    /// Go on with a store older than the audit log (restored from an older copy than the
    /// log), which the start refuses otherwise: what the store learnt since the copy is lost
    /// (see Backup and restore in the operations guide). Needed once.
    #[arg(long)]
    pub accept_older_store: bool,
    /// Start although the clock is behind the audit log's last entry, which the start refuses
    /// otherwise: for a log whose last entries were dated by a clock that ran ahead, once the
    /// clock is right.
    #[arg(long)]
    pub accept_clock_behind_log: bool,
}

/// Structured JSON logs on standard error, filtered by `RUST_LOG` (default [`DEFAULT_LOG`]),
/// with the targets of [`CAPPED_TARGETS`] held to their level whatever `RUST_LOG` says.
pub fn init_logging() {
    init_logging_from(DEFAULT_LOG);
}

/// The log filter when `RUST_LOG` is unset.
pub const DEFAULT_LOG: &str = "info";

/// The target of the HTTP library's connection errors.
const HTTP_DISPATCHER: &str = "actix_http::h1::dispatcher";

/// Leaves out the HTTP library's lines for requests a client sent malformed (a bad header,
/// say), whatever `RUST_LOG` says. The library answers them `400` itself, and logs
/// each at `error` without naming the client: one certificate holder could fill the operators'
/// error log with them, and there is nothing for the operators to mend. Its other errors (a
/// response that could not be written, say) are kept.
struct WithoutClientParseErrors;

impl<S> tracing_subscriber::layer::Filter<S> for WithoutClientParseErrors {
    fn enabled(
        &self,
        _: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        /// Whether the event's message says a request could not be parsed.
        struct ParseError(bool);
        impl tracing::field::Visit for ParseError {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}").starts_with("stream error: request parse error");
                }
            }
        }
        if event.metadata().target() != HTTP_DISPATCHER {
            return true;
        }
        let mut found = ParseError(false);
        event.record(&mut found);
        !found.0
    }
}

/// [`init_logging`], at level `default` when `RUST_LOG` is unset.
pub fn init_logging_from(default: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, refused) = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(error) => (tracing_subscriber::EnvFilter::new(default), Some(error)),
    };
    let _ = tracing_subscriber::registry()
        .with(json_logs(filter, std::io::stderr))
        .try_init();
    log_panics_without_their_message();
    // Unset is the default; set but unusable is a mistake to say, not to pass over.
    if let Some(error) = refused
        && std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty())
    {
        tracing::warn!(error = %error, default, "RUST_LOG cannot be read; logging at the default level");
    }
}

/// Logs a panic as one JSON line, with where it happened and not what its message says: a
/// panic's message is written by whatever code panicked, a library's among them, and may quote
/// the data it was given (the default hook prints it on standard error as it is).
fn log_panics_without_their_message() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(
            location,
            thread = thread.name().unwrap_or("unnamed"),
            "a thread panicked (its message is not logged: it may quote a message's data)"
        );
    }));
}

/// Libraries whose events can carry a message's contents, and the most verbose level at which
/// they are logged. lapin logs a message the broker returns (an outbound queue deleted, say) in
/// full at `warn`, body and headers, and the frames it reads and writes at `trace`: personal
/// data, which no log may hold. Its errors name no contents.
const CAPPED_TARGETS: &[(&str, tracing::Level)] = &[("lapin", tracing::Level::ERROR)];

/// Whether an event or span may be logged at all, before `RUST_LOG` is asked.
fn within_caps(meta: &tracing::Metadata<'_>) -> bool {
    CAPPED_TARGETS.iter().all(|(crate_name, most_verbose)| {
        let target = meta.target();
        let theirs = target
            .strip_prefix(crate_name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"));
        !theirs || meta.level() <= most_verbose
    })
}

/// The JSON log layer: one object a line, with the current span, written to `writer`.
fn json_logs<S, W>(
    filter: tracing_subscriber::EnvFilter,
    writer: W,
) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::{FilterExt, filter_fn};
    tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(writer)
        .with_filter(
            filter_fn(within_caps)
                .and(filter)
                .and(WithoutClientParseErrors),
        )
}

impl ServeArgs {
    /// Runs the command. An error that stops the gateway (at start, or at a stop that could
    /// not close everything cleanly) is logged as a JSON line like the rest, before the command
    /// line prints it.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        init_logging();
        let served = self.serve();
        if let Err(error) = &served {
            tracing::error!(
                error = %passerelle::error_text::each_cause_once(error.chain().map(ToString::to_string)),
                "the gateway stopped on an error"
            );
        }
        served
    }

    fn serve(self) -> anyhow::Result<ExitCode> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        config.server.floor_mode = self.measuring_floor;
        config.paths.accept_older_store = self.accept_older_store;
        config.audit.accept_clock_behind_log = self.accept_clock_behind_log;
        // The gateway runs on a thread of its own, not on the main thread, whose stack the
        // platform sets (8 MiB, commonly): its tasks read the AMQP messages, whose header
        // tables nest as deep as a frame allows, and a spawned thread gets the stack that
        // `main` gives every thread (see `deep_enough_thread_stacks` in main.rs).
        let gateway = std::thread::Builder::new()
            .name("gateway".to_owned())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    ignore_hangups()?;
                    // Taken before the start, so that a TERM or INT during it (a long store
                    // rewrite after an erasure, say) stops the gateway once it has started,
                    // with a drain, rather than ending the process mid-start without a word.
                    let mut stop = StopSignals::take()?;
                    let running = RunningGateway::start(&config)
                        .await
                        .context("starting the gateway")?;
                    tracing::info!(
                        partners = %format!("https://{}", running.addr),
                        admin = %format!("http://{}", running.admin_addr),
                        "serving"
                    );
                    // Lets the signal streams take what came during the start's last steps.
                    actix_web::rt::task::yield_now().await;
                    if stop.came_already() {
                        tracing::info!("a stop was asked while the gateway started");
                    } else {
                        stop.wait().await;
                    }
                    tracing::info!("stopping: draining requests in flight");
                    running.shutdown().await?;
                    tracing::info!("stopped");
                    Ok(ExitCode::SUCCESS)
                })
            })
            .context("starting the gateway's thread")?;
        gateway
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// Takes SIGHUP for the life of the process, and says in the log that it changes nothing.
/// Service managers and log rotation send it for a reload; its default would end the gateway
/// on the spot, without a drain, and cut off the requests in flight.
fn ignore_hangups() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup()).context("taking SIGHUP")?;
    actix_web::rt::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::warn!(
                "SIGHUP ignored: the gateway has no reload signal; its configuration, registry, \
                 mappings and TLS files are read at start (restart it after a change), and its \
                 CRLs are read again when they change (tls.crl_refresh_secs)"
            );
        }
    });
    Ok(())
}

/// SIGTERM and SIGINT, taken from their default (ending the process on the spot).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn take() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("taking SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("taking SIGINT")?,
        })
    }

    /// Whether one came since they were taken (while the gateway started).
    fn came_already(&mut self) -> bool {
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        self.term.poll_recv(&mut context).is_ready() || self.int.poll_recv(&mut context).is_ready()
    }

    /// Returns at the first of them.
    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// What the layer writes, kept for the test to read.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Written {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lapin_logs_only_its_errors_whatever_rust_log_asks() {
        let written = Written::default();
        let writer = written.clone();
        // An operator asking for everything, and for lapin's frames in particular.
        let filter = tracing_subscriber::EnvFilter::new("trace,lapin=trace,lapin::channels=trace");
        let subscriber =
            tracing_subscriber::registry().with(json_logs(filter, move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            // As lapin logs a returned message, and a frame.
            tracing::warn!(target: "lapin::returned_messages", message = "DIOP Mamadou", "Server returned us a message");
            tracing::trace!(target: "lapin::channels", frame = "LP0417263", "will handle frame");
            tracing::error!(target: "lapin::channels", "Connection error");
            tracing::debug!(target: "lapinou", "another crate's event");
            tracing::info!(target: "passerelle::amqp", "the gateway's own event");
        });
        let logged = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        assert!(
            !logged.contains("DIOP") && !logged.contains("LP0417263"),
            "{logged}"
        );
        for kept in [
            "Connection error",
            "another crate's event",
            "the gateway's own event",
        ] {
            assert!(logged.contains(kept), "{kept} missing from {logged}");
        }
    }

    #[test]
    fn by_default_a_clients_malformed_request_is_not_an_error_in_the_log() {
        let written = Written::default();
        let writer = written.clone();
        let filter = tracing_subscriber::EnvFilter::new(DEFAULT_LOG);
        let subscriber =
            tracing_subscriber::registry().with(json_logs(filter, move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            // As the HTTP library logs a request it could not parse, and another error.
            let error = "invalid Header provided";
            tracing::error!(target: "actix_http::h1::dispatcher", "stream error: request parse error: {}", error);
            tracing::error!(target: "actix_http::h1::dispatcher", "Response payload stream error: {}", "closed");
            tracing::info!(target: "passerelle::server::routes", "message accepted");
            tracing::warn!(target: "actix_server::worker", "a worker stopped");
        });
        let logged = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        assert!(!logged.contains("request parse error"), "{logged}");
        for kept in [
            "Response payload stream error",
            "message accepted",
            "a worker stopped",
        ] {
            assert!(logged.contains(kept), "{kept} missing from {logged}");
        }
    }
}
