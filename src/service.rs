//! A running gateway: the parts started in order from a [`Config`], and stopped in the order
//! that lets each finish what the others handed it.
//!
//! This module owns the life cycle: load and lint the mappings and the registry, open the
//! audit log and the store, start the webhook worker, the AMQP transport, the admin listener
//! and the partner-facing server; on shutdown, stop accepting and drain the requests in
//! flight, stop the workers, stop the admin listener, then close the store and flush the log
//! (a final checkpoint).
//! `passerelle serve`, `passerelle demo` and the integration tests all start a gateway here.

use crate::audit::{AuditLog, NoteSigner, Options};
use crate::canonical::Catalogue;
use crate::config::Config;
use crate::delivery::RetryPolicy;
use crate::delivery::webhook::WebhookWorker;
use crate::mapping::MappingSet;
use crate::metrics::Metrics;
use crate::pipeline::{Gateway, Summaries};
use crate::registry::Registry;
use crate::server::admin::Readiness;
use crate::store::{RewriteError, Store};
use anyhow::{Context, anyhow};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A started gateway.
pub struct RunningGateway {
    /// The shared state.
    pub gateway: Arc<Gateway>,
    /// The partner-facing HTTPS address.
    pub addr: SocketAddr,
    /// The admin address.
    pub admin_addr: SocketAddr,
    /// Readiness of the optional components.
    pub readiness: Readiness,
    server: crate::server::RunningServer,
    admin: crate::server::admin::RunningAdmin,
    stop_workers: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    /// `server.shutdown_timeout_secs`.
    shutdown_timeout: std::time::Duration,
}

/// Reads the signing key, if it is there, before anything is made in the data folder: a key
/// that cannot be read, that is named for another origin, or that is missing where it cannot
/// be created stops the start at once. `None` when it is to be created
/// ([`create_signing_key`]).
fn existing_signing_key(config: &Config) -> anyhow::Result<Option<NoteSigner>> {
    let path = config.signing_key();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let signer = NoteSigner::parse(&text)
                .map_err(|e| anyhow!("{} (audit.signing_key): {e}", path.display()))?;
            let name = signer.verifier().name();
            if name != config.audit.origin {
                anyhow::bail!(
                    "the signing key {} (audit.signing_key) is named {name}, and audit.origin \
                     is {}: a log's key bears its origin's name. Set audit.origin to the \
                     key's name, or point audit.signing_key to the key made for this origin",
                    path.display(),
                    config.audit.origin
                );
            }
            Ok(Some(signer))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A log that has signed checkpoints was signed with the key that is missing: a new
            // key cannot extend it (the log refuses to open), and would sit where the lost one
            // must be put back.
            let layout = crate::audit::log::Layout::new(&config.paths.audit_log());
            if let Some(signed) = [layout.public.join("checkpoint"), layout.last_checkpoint]
                .into_iter()
                .find(|checkpoint| checkpoint.exists())
            {
                anyhow::bail!(
                    "the audit log's signing key {} is missing, and the log at {} is signed \
                     with it ({} exists): restore the key from its backup (a new key cannot \
                     extend that log), or start a new log (a new paths.data, with a new store)",
                    path.display(),
                    layout.root.display(),
                    signed.display()
                );
            }
            if config.audit.create_key {
                return Ok(None);
            }
            Err(e).with_context(|| {
                format!(
                    "reading the audit log's signing key {}: with audit.create_key = false it \
                     must be provisioned there (`passerelle audit keygen --name {} --out {}`)",
                    path.display(),
                    config.audit.origin,
                    path.display()
                )
            })
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Creates the signing key (`audit.create_key`; [`existing_signing_key`] has checked that no
/// signed log needs a lost one).
fn create_signing_key(config: &Config) -> anyhow::Result<NoteSigner> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = config.signing_key();
    let signer = NoteSigner::generate(&config.audit.origin)
        .map_err(|e| anyhow!("generating the signing key: {e}"))?;
    if let Some(parent) = path.parent() {
        crate::durable_folders::create_folders(parent)
            .with_context(|| format!("creating the folder {}", parent.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(signer.to_signer_key().as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    // The key's name too: a key lost in a crash right after the log's first entries would
    // leave a log that cannot grow.
    crate::durable_folders::sync_parent(&path)
        .with_context(|| format!("syncing the folder of {}", path.display()))?;
    tracing::info!(
        key = %path.display(),
        verifier = %signer.verifier().to_verifier_key(),
        "created the audit log's signing key"
    );
    Ok(signer)
}

/// Refuses a partner CA bundle that trusts the development CA when the gateway's own
/// certificate is not a development one: that CA's key is public in the project's copy, so
/// anyone could make a certificate for any partner, an auditor among them. It happens when a
/// `[tls]` section sets `cert` and `key` and leaves `ca` to its default. The development set-up
/// (both from `passerelle certs dev`) is only warned of.
fn refuse_development_trust(config: &Config) -> anyhow::Result<()> {
    if crate::tls::bundle_holds_development_ca(&config.tls.ca)
        && !crate::tls::issued_by_development_ca(&config.tls.cert)
    {
        anyhow::bail!(
            "tls.ca ({}) trusts the development CA of `passerelle certs dev`, whose private key \
             is public, while tls.cert is not a development certificate: set tls.ca (and \
             tls.crls) to the partners' CA bundle",
            config.tls.ca.display()
        );
    }
    Ok(())
}

/// Warns of settings that are for development only: a server certificate issued by the
/// development CA (whose keys are public in the project's copy), an admin listener, which
/// has no authentication, on an address other than loopback, and a broker reached without TLS
/// beyond loopback.
fn warn_of_development_settings(config: &Config) {
    if let Some(endpoint) = config.amqp.as_ref().and_then(|amqp| amqp.endpoint().ok())
        && endpoint.in_the_clear_beyond_loopback()
    {
        tracing::warn!(
            broker = %endpoint,
            "amqp.url is amqp:// (no TLS) to a host other than loopback: partners' messages and \
             the password cross the network in the clear; use amqps:// with SASL EXTERNAL"
        );
    }
    if crate::tls::issued_by_development_ca(&config.tls.cert) {
        tracing::warn!(
            cert = %config.tls.cert.display(),
            "tls.cert is issued by the development CA of `passerelle certs dev`: for development \
             and tests only, never in production"
        );
    }
    if !config.admin.listen.ip().to_canonical().is_loopback() {
        tracing::warn!(
            listen = %config.admin.listen,
            "admin.listen is not a loopback address: the admin listener has no authentication; \
             only operators and monitoring must reach it"
        );
    }
}

/// Warns of each private key file that other users may read: the audit log's signing key and
/// the TLS keys (but the development PKI's). They may lie outside the data folder, where their permissions are the
/// platform's to set (a secret mounted for a group, say), so they are said, not changed.
fn warn_of_keys_open_to_others(config: &Config) {
    use std::os::unix::fs::PermissionsExt;
    // The development PKI's keys are public in the project's copy (its own warning says so).
    let development = |cert: &Path| crate::tls::issued_by_development_ca(cert);
    let mut keys = vec![(config.signing_key(), "audit.signing_key")];
    if !development(&config.tls.cert) {
        keys.push((config.tls.key.clone(), "tls.key"));
    }
    if !development(&config.tls.client_cert) {
        keys.push((config.tls.client_key.clone(), "tls.client_key"));
    }
    for (path, setting) in keys {
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                file = %path.display(),
                setting,
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "a private key file is open to other users: restrict it to the gateway's user \
                 (chmod 600)"
            );
        }
    }
}

/// Builds the TLS configurations before anything is created in the data folder, so that a
/// mistake in the TLS files stops the start at once, naming the settings as well as the file.
/// They are built again, to be used, once the gateway is made: the server's with its observer
/// of refused certificates, and the webhook calls' over the server's CRLs. Returns the server's
/// verifier, whose CAs the registry's issuers are checked against.
fn check_tls_settings(config: &Config) -> anyhow::Result<Arc<crate::tls::ClientVerifier>> {
    let (_, verifier) = crate::tls::check_own_certificate(&config.tls.cert)
        .and_then(|()| crate::tls::server_config_with_verifier(&config.tls.server_files(), None))
        .context("the HTTPS listener's TLS files (tls.ca, tls.cert, tls.key, tls.crls)")?;
    crate::tls::check_own_certificate(&config.tls.client_cert)
        .and_then(|()| crate::tls::client_config(&config.tls.client_files()))
        .context(
            "the TLS files of the gateway's webhook calls (tls.ca, tls.client_cert, \
             tls.client_key, tls.crls)",
        )?;
    Ok(verifier)
}

/// Refuses to run with an audit log that does not hold every entry the store knows of: a log
/// restored from an older copy than the store. Its next appends would take the indices of the
/// receipts the store answers duplicates and `GET /v1/receipts` with, or of entries already
/// signed in checkpoints handed out, and grow the log along another history than the one
/// already signed.
fn log_not_behind_store(log: &AuditLog, store: &Store) -> anyhow::Result<()> {
    let entries = log.entries_at_open();
    let highest = store
        .highest_log_index()
        .context("reading the store's highest audit log index")?;
    let known = if let Some(highest) = highest
        && highest >= entries
    {
        format!("the store records a receipt for entry {highest}")
    } else {
        let signed = store
            .signed_log_size()
            .context("reading the store's mark of the log's signed size")?;
        if signed <= entries {
            return Ok(());
        }
        format!("the log had signed a checkpoint of {signed} entries when this store last noted it")
    };
    anyhow::bail!(
        "the audit log holds {entries} entries, but {known}: the log is older than the store \
         (restored from an older copy?). Restore the store and the log from the same backup; \
         never let the log go backwards (see Backup and restore in the operations guide)"
    )
}

/// How far behind the audit log's last entry the clock may be at start: a step of the clock
/// by its time service is well within it; a clock set back, or a machine whose clock was never
/// set, is not.
const CLOCK_BEHIND_LOG_TOLERANCE: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// Refuses to start with a clock behind the audit log's last entry: every entry and receipt
/// says when it was made, and "when" is part of the evidence; entries that go back in time
/// would tell a false order.
/// `accept` (`serve --accept-clock-behind-log`) goes on, and says so: for a log whose last
/// entries were dated by a clock that ran ahead, the clock being right now.
fn clock_not_behind_log(
    last_entry: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
    accept: bool,
) -> anyhow::Result<()> {
    match last_entry {
        Some(last) if now + CLOCK_BEHIND_LOG_TOLERANCE < last && accept => {
            tracing::error!(
                clock = %now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                last_entry = %last.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "going on with a clock behind the audit log's last entry \
                 (--accept-clock-behind-log): the entries from now on are dated before it"
            );
            Ok(())
        }
        Some(last) if now + CLOCK_BEHIND_LOG_TOLERANCE < last => anyhow::bail!(
            "the clock ({}) is behind the audit log's last entry ({}): every entry and receipt says when it was made, and they would go back in time. Set the clock right (is its time service running?). If the clock is right and the log's last entries were dated by \
             a clock that ran ahead, start with `serve --accept-clock-behind-log`",
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            last.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        _ => Ok(()),
    }
}

/// The file, in the audit log's private folder, where the gateway notes the log's signed size
/// that the store has noted (see [`note_signed_log_size`]) once the store's note is durable: a
/// store whose own mark is below it is older than the log.
fn store_mark_path(log: &AuditLog) -> std::path::PathBuf {
    log.layout().root.join("private/store-mark")
}

/// The store's mark that the log last noted; 0 when it never did.
fn store_mark_noted(log: &AuditLog) -> anyhow::Result<u64> {
    let path = store_mark_path(log);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().with_context(|| {
            format!(
                "{} is not a number: restore it with the log, or remove it",
                path.display()
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Notes, durably, beside the log, that the store has noted `mark` (the store's note is
/// durable first, so the log's note is never ahead of the store it describes).
fn note_store_mark(log: &AuditLog, mark: u64) -> anyhow::Result<()> {
    let path = store_mark_path(log);
    crate::durable_folders::replace_file(
        &path,
        mark.to_string().as_bytes(),
        crate::durable_folders::Readers::Owner,
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// Refuses to run with a store older than the audit log (the log kept, the store restored
/// from an older copy): the messages the log accepted since are unknown to it, so a resend
/// would be accepted twice; the deliveries completed since would go out again; and delivery
/// ids would be handed out again, which recipients have already seen. A new store (none was
/// there) is the start's warning instead. `accept` (`serve --accept-older-store`) goes on
/// with it, says so, and notes the store's mark so that the next start does not refuse.
fn store_not_behind_log(log: &AuditLog, store: &Store, accept: bool) -> anyhow::Result<()> {
    if store.created_now() {
        // A new store (the old one lost) is the start's warning; its mark, none yet, is noted
        // at once, so that a crash before its first note does not leave the log's note of the
        // old store to refuse it at the next start.
        return note_store_mark(log, 0);
    }
    let noted = store_mark_noted(log)?;
    let mark = store
        .signed_log_size()
        .context("reading the store's mark of the log's signed size")?;
    if mark >= noted {
        return Ok(());
    }
    if !accept {
        anyhow::bail!(
            "the store is older than the audit log (restored from an older copy?): it last noted a checkpoint of {mark} entries, and the log records that it had noted one of {noted}. Messages accepted since would be accepted again, deliveries completed since would go out again, and delivery ids would be handed out again. Restore the store and the log from the same backup; if no copy of the store as recent as the log remains, start once with `serve --accept-older-store` (see Backup and restore in the operations guide)"
        );
    }
    tracing::error!(
        store_noted = mark,
        log_noted = noted,
        "going on with a store older than the audit log (--accept-older-store): messages accepted since its copy may be accepted again, deliveries completed since go out again and delivery ids are handed out again; reconcile with the partners from the log's trails"
    );
    note_store_mark(log, mark)
}

/// Creates the data folder, or checks the one there: it holds personal data (the store's
/// messages and deliveries, the audit log's case keys), so only the gateway's user may enter it.
/// A folder others may read or enter is closed to them (mode 0700), and the log says so.
///
/// Every file and folder the gateway creates from then on is its user's alone (the process's
/// file mode creation mask is set to 077): the case keys, the index key and the journals stay
/// closed to others also in a copy of the folder, or where the data folder itself cannot be
/// closed. Those already in it and open to others are closed too.
fn private_folder(data: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    keep_new_files_private();
    if data.exists() && !data.is_dir() {
        anyhow::bail!(
            "the data folder {} (paths.data) is a file, not a folder",
            data.display()
        );
    }
    // Made durably: the store, the log and the key are synced in it, and would be lost with
    // its own name.
    crate::durable_folders::create_folders(data)
        .with_context(|| format!("creating the data folder {}", data.display()))?;
    let mode = std::fs::metadata(data)
        .with_context(|| format!("reading the data folder {}", data.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        match std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)) {
            Ok(()) => tracing::warn!(
                folder = %data.display(),
                was = format!("{:o}", mode & 0o777),
                "the data folder was open to other users; it holds personal data, so it is now \
                 closed to them (mode 700)"
            ),
            // Not the folder's owner (a volume mounted for a group, say): its permissions are
            // the platform's to set; say so rather than refuse to start.
            Err(error) => tracing::warn!(
                folder = %data.display(),
                mode = format!("{:o}", mode & 0o777),
                error = %error,
                "the data folder is open to other users and cannot be closed to them; it holds \
                 personal data: restrict it to the gateway's user"
            ),
        }
    }
    close_what_is_open(data);
    Ok(())
}

/// Makes every file and folder this process creates from now on its user's alone (the file
/// mode creation mask 077): the gateway, and the commands that write into its data folder
/// (`passerelle audit erase`).
pub fn keep_new_files_private() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Closes to other users every file and folder under `data` that is open to them (made by an
/// earlier version, by a command run with another file mode creation mask, or restored from a
/// copy), and says how many it closed. Symbolic links are not followed. One that cannot be
/// closed (not the gateway user's) is said, and left.
fn close_what_is_open(data: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut folders = vec![data.to_owned()];
    let mut closed = 0_u64;
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                continue;
            }
            if meta.is_dir() {
                folders.push(path.clone());
            }
            let mode = meta.permissions().mode();
            if mode & 0o077 == 0 {
                continue;
            }
            let private = std::fs::Permissions::from_mode(mode & 0o700);
            match std::fs::set_permissions(&path, private) {
                Ok(()) => closed += 1,
                Err(error) => tracing::warn!(
                    file = %path.display(),
                    error = %error,
                    "a file of the data folder is open to other users and cannot be closed to them"
                ),
            }
        }
    }
    if closed > 0 {
        tracing::warn!(
            closed,
            "files of the data folder were open to other users; they are now closed to them"
        );
    }
}

/// Loads the catalogue, the mappings (linted) and the registry.
pub fn load_definitions(
    mappings: &Path,
    registry: &Path,
) -> anyhow::Result<(Catalogue, MappingSet, Registry)> {
    let catalogue = Catalogue::embedded().context("the embedded catalogue")?;
    for (path, what, key) in [
        (mappings, "mappings folder", "paths.mappings"),
        (registry, "partner registry", "paths.registry"),
    ] {
        if !path.exists() {
            let here = std::env::current_dir()
                .map(|d| {
                    format!(
                        " (relative paths are read from the working folder, {})",
                        d.display()
                    )
                })
                .unwrap_or_default();
            anyhow::bail!(
                "the {what} {} does not exist: check {key}{here}",
                path.display()
            );
        }
    }
    let mappings = MappingSet::load(mappings).map_err(|problems| {
        anyhow!(
            "the mappings do not load:\n  {}",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n  ")
        )
    })?;
    let registry = Registry::load(registry, &catalogue, &mappings)?;
    Ok((catalogue, mappings, registry))
}

/// Rewrites the store's file once the start's erasure pass has changed it (see
/// [`Store::rewrite_file`]): deleted bodies and records stay in a database file's free pages
/// until they are reused. The gateway then works on the new file.
async fn rewrite_store_after_erasures(
    gateway: &mut Arc<Gateway>,
    path: &Path,
) -> anyhow::Result<()> {
    if !gateway.store.rewrite_due()? {
        return Ok(());
    }
    let gateway = Arc::get_mut(gateway)
        .context("the store's file cannot be rewritten: the gateway is already shared")?;
    let old = gateway.store.clone();
    let rewritten = match tokio::task::spawn_blocking(move || old.rewrite_file()).await? {
        Ok(rewritten) => rewritten,
        // The store goes on with its file: an erasure's leftovers in its free pages are no
        // reason to stop serving. Tried again at the next start.
        Err(RewriteError::NotMade(error)) => {
            tracing::error!(
                error = %error,
                "the store's file could not be rewritten after an erasure: what the erasure \
                 deleted stays in its free pages until the next start rewrites it (it needs \
                 free space of about the store's size)"
            );
            return Ok(());
        }
        Err(error) => return Err(error).context("rewriting the store's file after an erasure"),
    };
    let fresh = Store::open(path).context("opening the rewritten store")?;
    let old = gateway.replace_store(Arc::new(fresh));
    Arc::try_unwrap(old)
        .map_err(|_| anyhow!("the store's old file is still in use after its rewrite"))?
        .close()
        .context("closing the store's old file")?;
    tracing::info!(
        rows = rewritten.rows,
        bytes_before = rewritten.bytes_before,
        bytes_after = rewritten.bytes_after,
        "the store's file rewritten without what the erasures deleted"
    );
    Ok(())
}

impl RunningGateway {
    /// Starts every part, on the current Tokio runtime (an actix system or a plain one).
    pub async fn start(config: &Config) -> anyhow::Result<RunningGateway> {
        config.validate()?;
        let (catalogue, mappings, registry) =
            load_definitions(&config.paths.mappings, &config.paths.registry)?;
        // The files first: a file that cannot be read is named as such, not taken for a
        // certificate that is not a development one.
        let checked_tls = check_tls_settings(config)?;
        refuse_development_trust(config)?;
        registry
            .check_issuers(checked_tls.issuers())
            .context("the partner registry's issuers, against the CA bundle (tls.ca)")?;
        warn_of_development_settings(config);
        warn_of_keys_open_to_others(config);
        if let Some(settings) = &config.amqp {
            crate::amqp::check_settings(settings, &registry)
                .context("[amqp] of the configuration")?;
        }
        let existing_key = existing_signing_key(config)?;
        // The listeners' addresses are taken before anything is made or changed in the data
        // folder: an address in use stops the start with the folder as it was.
        let partners_address =
            crate::server::reserve_address(config.server.listen, "server.listen")?;
        let admin_address = crate::server::reserve_address(config.admin.listen, "admin.listen")?;
        private_folder(&config.paths.data)?;
        let signer = match existing_key {
            Some(signer) => signer,
            None => create_signing_key(config)?,
        };
        let options = Options {
            checkpoint_interval: Duration::from_secs_f64(config.audit.checkpoint_interval_secs),
            ..Options::default()
        };
        let log_dir = config.paths.audit_log();
        let origin = config.audit.origin.clone();
        let log =
            tokio::task::spawn_blocking(move || AuditLog::open(&log_dir, signer, &origin, options))
                .await?
                .with_context(|| {
                    format!(
                        "opening the audit log {}",
                        config.paths.audit_log().display()
                    )
                })?;
        let store_path = config.paths.store();
        // The database library stops with a panic on some damaged pages rather than an error:
        // the start says which file, and what to do, as for any other damage.
        let opened =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Store::open(&store_path)))
                .unwrap_or_else(|_| {
                    Err(crate::store::StoreError::Database(
                        "the database library stopped on a damaged page: restore the store from a \
                 backup taken with the audit log (see Backup and restore in the operations \
                 guide)"
                            .into(),
                    ))
                });
        let store =
            opened.with_context(|| format!("opening the store {}", store_path.display()))?;
        clock_not_behind_log(
            log.last_entry_time(),
            chrono::Utc::now(),
            config.audit.accept_clock_behind_log,
        )?;
        log_not_behind_store(&log, &store)?;
        store_not_behind_log(&log, &store, config.paths.accept_older_store)?;
        if store.created_now() && log.entries_at_open() > 0 {
            tracing::warn!(
                entries = log.entries_at_open(),
                store = %config.paths.store().display(),
                "a new store was made beside an audit log that holds entries: the deliveries, \
                 duplicate detection and receipts of the messages logged before are not in it \
                 (was the store lost, or moved?)"
            );
        }
        let metrics = Arc::new(Metrics::new());
        let mut gateway = Arc::new(Gateway::new(
            catalogue,
            mappings,
            registry,
            Arc::new(log),
            Arc::new(store),
            metrics,
            config.limits.clone(),
        ));
        // Settle what a crash left between the store and the log, before serving.
        let settler = gateway.clone();
        let (confirmed, withdrawn) =
            tokio::task::spawn_blocking(move || settler.settle_unconfirmed())
                .await?
                .context("settling the messages a crash interrupted")?;
        if confirmed + withdrawn > 0 {
            tracing::warn!(
                confirmed,
                withdrawn,
                "settled messages interrupted by a crash: logged ones confirmed, others withdrawn"
            );
        }
        let owed = gateway
            .audit_owed_dead_letters()
            .await
            .context("auditing the deliveries created dead")?;
        if owed > 0 {
            tracing::warn!(
                owed,
                "dead letters logged at start: their entries were owed (a failed append, or a crash)"
            );
        }
        let withdrawn = crate::delivery::withdraw_erased(&gateway)
            .await
            .context("withdrawing the deliveries of erased cases")?;
        if withdrawn > 0 {
            tracing::warn!(
                withdrawn,
                "deliveries of erased cases withdrawn: dead letters without their bodies"
            );
        }
        let buried = crate::delivery::bury_stray_deliveries(&gateway)
            .await
            .context(
                "dead-lettering the deliveries waiting on a channel their recipient no longer has",
            )?;
        if buried > 0 {
            tracing::warn!(
                buried,
                "deliveries waiting on a channel the registry no longer gives their recipient \
                 (an inbox, a webhook, an AMQP queue): dead letters, to redeliver by their \
                 recipients' delivery modes or discard"
            );
        }
        let forgotten = crate::delivery::forget_erased_case_ids(&gateway)
            .context("taking the ids of erased cases off the store's records")?;
        if forgotten > 0 {
            tracing::info!(
                records = forgotten,
                "ids of erased cases taken off the store's records"
            );
        }
        rewrite_store_after_erasures(&mut gateway, &config.paths.store()).await?;
        let readiness = Readiness::default();
        let (stop_workers, stop_rx) = watch::channel(false);
        let mut workers = Vec::new();

        let (server_tls, client_verifier) = crate::server::tls_config(&gateway, config)
            .context("the HTTPS listener's TLS files (tls.ca, tls.cert, tls.key, tls.crls)")?;
        let client_tls = crate::tls::endpoint_client_config(
            &config.tls.client_cert,
            &config.tls.client_key,
            client_verifier.clone(),
        )
        .context(
            "the TLS files of the gateway's webhook calls (tls.client_cert, tls.client_key)",
        )?;
        let webhook = WebhookWorker::new(
            gateway.clone(),
            &client_tls,
            client_verifier.clone(),
            RetryPolicy::from(&config.delivery),
            Duration::from_secs(config.delivery.timeout_secs.max(1)),
            config.delivery.concurrency,
        )?;
        workers.push(tokio::spawn(webhook.run(stop_rx.clone())));

        // ---- AMQP transport (src/amqp/transport.rs): consumes the partners' inbound queues and
        // publishes AMQP deliveries; readiness `amqp` is true while connected.
        if let Some(settings) = &config.amqp {
            let transport = crate::amqp::AmqpTransport::new(
                gateway.clone(),
                settings.clone(),
                RetryPolicy::from(&config.delivery),
                readiness.register("amqp"),
            )
            .context("[amqp] of the configuration")?;
            workers.push(tokio::spawn(transport.run(stop_rx.clone())));
        }
        // ---- end of the AMQP transport

        let admin = crate::server::admin::start(gateway.clone(), readiness.clone(), admin_address)
            .with_context(|| {
                format!(
                    "starting the admin listener on {} (admin.listen)",
                    config.admin.listen
                )
            })?;
        let server = crate::server::start(
            gateway.clone(),
            config,
            partners_address,
            server_tls,
            client_verifier,
        )
        .with_context(|| {
            format!(
                "starting the HTTPS listener on {} (server.listen)",
                config.server.listen
            )
        })?;
        workers.push(tokio::spawn(audit_refusal_summaries(
            gateway.clone(),
            REFUSAL_SUMMARY_INTERVAL,
            stop_rx.clone(),
        )));
        workers.push(tokio::spawn(note_signed_log_size(
            gateway.clone(),
            SIGNED_SIZE_NOTE_INTERVAL,
            stop_rx.clone(),
        )));
        workers.push(tokio::spawn(refresh_crls(
            server.client_verifier.clone(),
            gateway.metrics.clone(),
            Duration::from_secs(config.tls.crl_refresh_secs),
            stop_rx.clone(),
        )));
        tracing::info!(
            https = %server.addr,
            admin = %admin.addr,
            partners = gateway.registry.partners().count(),
            "gateway started"
        );
        Ok(RunningGateway {
            addr: server.addr,
            admin_addr: admin.addr,
            gateway,
            readiness,
            server,
            admin,
            stop_workers,
            workers,
            shutdown_timeout: std::time::Duration::from_secs(config.server.shutdown_timeout_secs),
        })
    }

    /// Stops gracefully: stop accepting, let the messages whose client went away finish,
    /// drain the requests in flight, stop the workers (attempts in flight finish), stop the
    /// admin listener, then close the store and flush the audit log.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.readiness.set_draining();
        self.server.stop(self.shutdown_timeout).await;
        let _ = self.stop_workers.send(true);
        for w in self.workers {
            let _ = w.await;
        }
        self.admin.stop().await;
        let mut gateway = self.gateway;
        // The worker audited the summarised refusals as it stopped; those it could not are
        // tried once more, and reported by the close if they fail again.
        if let Err(error) = gateway.audit_refusal_summaries(Summaries::All).await {
            tracing::error!(%error, "the last summarised refusals could not be audited");
        }
        // Nothing is appended from here on (but by AMQP tasks left to finish after the
        // transport's drain, which the exit cuts, as a crash would): the checkpoint that covers
        // every entry is the log's last, and the store notes it (see `note_signed_log_size`).
        let log = gateway.log.clone();
        match tokio::task::spawn_blocking(move || log.sync()).await {
            Ok(Ok(())) => {
                let size = gateway.log.latest_checkpoint().1.size;
                match gateway.store.note_signed_log_size(size).await {
                    Ok(()) => {
                        if let Err(error) = note_store_mark(&gateway.log, size) {
                            tracing::error!(
                                error = format!("{error:#}"),
                                "the audit log's note of the store's mark could not be written"
                            );
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "the store could not note the audit log's last signed size");
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "the audit log could not sign its last checkpoint");
            }
            Err(error) => tracing::error!(
                error = crate::error_text::task_failure(&error),
                "signing the audit log's last checkpoint"
            ),
        }
        // The last references go with the server's workers; wait for them briefly.
        for _ in 0..100 {
            match Arc::try_unwrap(gateway) {
                Ok(g) => {
                    return tokio::task::spawn_blocking(move || g.close())
                        .await?
                        .context("closing");
                }
                Err(g) => {
                    gateway = g;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        tracing::warn!("parts of the gateway are still referenced; the log is flushed on exit");
        gateway.check_still_shared().context("closing")
    }
}

/// How often the summarised refusals that are due (rate-limited messages at once, refused
/// certificates once their tally is old enough) are audited, one summary per sender and reason.
const REFUSAL_SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

/// Audits the summarised refusals that are due every `every`, and all of them when told to
/// stop (the shutdown tries again any it could not). A summary that cannot be appended is kept for the
/// next round.
async fn audit_refusal_summaries(
    gateway: Arc<Gateway>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = stop.changed() => true,
        };
        let which = if stopping {
            Summaries::All
        } else {
            Summaries::Due
        };
        // Each summary audited is logged by the gateway, with its sender, reason and count.
        match gateway.audit_refusal_summaries(which).await {
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "summarised refusals could not be audited; they are kept for the next round")
            }
        }
        if stopping {
            return;
        }
    }
}

/// How often the store notes the audit log's signed size.
const SIGNED_SIZE_NOTE_INTERVAL: Duration = Duration::from_secs(2);

/// Notes in the store, every `every` until told to stop, the size of the audit log's latest
/// checkpoint, when it grew: the start refuses a log smaller than that (a log restored from an
/// older copy than the store, which would sign again, along another history, entries that
/// checkpoints already handed out cover). The stop notes the log's last checkpoint itself
/// ([`RunningGateway::shutdown`]). A note that fails is logged and tried again at the next
/// round.
async fn note_signed_log_size(
    gateway: Arc<Gateway>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut noted = 0;
    // A store that fails says so itself; this says it once until a note is made again.
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let size = gateway.log.latest_checkpoint().1.size;
        if size > noted {
            let noted_both = match gateway.store.note_signed_log_size(size).await {
                Ok(()) => {
                    let log = gateway.log.clone();
                    match tokio::task::spawn_blocking(move || note_store_mark(&log, size)).await {
                        Ok(result) => result.map_err(|error| format!("{error:#}")),
                        Err(error) => Err(crate::error_text::task_failure(&error).to_owned()),
                    }
                }
                Err(error) => Err(error.to_string()),
            };
            match noted_both {
                Ok(()) => {
                    noted = size;
                    failing = false;
                }
                Err(error) if !failing => {
                    failing = true;
                    tracing::error!(%error, "the store could not note the audit log's signed size; tried again every round");
                }
                Err(_) => {}
            }
        }
    }
}

/// Reads the CRL files again whenever they change, until told to stop, so that a CRL a CA
/// publishes before the current one expires is taken without a restart. A changed file that
/// cannot be used is reported (log and metric) and the CRLs taken from it before stay; the
/// other files' changes are taken.
async fn refresh_crls(
    verifier: Arc<crate::tls::ClientVerifier>,
    metrics: Arc<Metrics>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // The stale CRLs in use already said in the log (each once, until it changes).
    let mut said_stale: Vec<String> = Vec::new();
    loop {
        metrics.crl_next_update.set(
            verifier
                .next_update()
                .map_or(0, |secs| i64::try_from(secs).unwrap_or(i64::MAX)),
        );
        let stale = verifier.stale_crls();
        for crl in stale.iter().filter(|crl| !said_stale.contains(crl)) {
            tracing::error!(
                crl = %crl,
                "a CRL in use is past its nextUpdate: every client certificate of its CA is \
                 refused until a current CRL replaces it"
            );
        }
        said_stale = stale;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let v = verifier.clone();
        let reload = match tokio::task::spawn_blocking(move || v.reload_if_changed()).await {
            Ok(reload) => reload,
            Err(error) => {
                tracing::error!(%error, "the CRL refresh failed");
                count_crl_reload(&metrics, "failed");
                continue;
            }
        };
        for file in &reload.taken {
            tracing::info!(file = %file.display(), "a changed CRL file is in use");
        }
        for error in &reload.refused {
            tracing::error!(
                %error,
                "a changed CRL file could not be used; the CRLs taken from it before stay in use"
            );
        }
        if !reload.taken.is_empty() {
            count_crl_reload(&metrics, "loaded");
        }
        if !reload.refused.is_empty() {
            count_crl_reload(&metrics, "failed");
        }
    }
}

/// Counts one reload of the CRL files with its outcome, `loaded` or `failed`.
fn count_crl_reload(metrics: &Metrics, outcome: &'static str) {
    metrics
        .crl_reloads
        .get_or_create(&crate::metrics::OutcomeLabels { outcome })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_behind_the_logs_last_entry_is_refused() {
        let last = chrono::DateTime::parse_from_rfc3339("2026-12-02T16:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert!(
            clock_not_behind_log(None, last, false).is_ok(),
            "an empty log"
        );
        assert!(
            clock_not_behind_log(Some(last), last + chrono::TimeDelta::hours(1), false).is_ok()
        );
        assert!(
            clock_not_behind_log(Some(last), last - chrono::TimeDelta::seconds(30), false).is_ok(),
            "a small step back of the clock"
        );
        let behind = last - chrono::TimeDelta::days(2);
        assert!(
            clock_not_behind_log(Some(last), behind, true).is_ok(),
            "the operator says the clock is right"
        );
        let error = clock_not_behind_log(Some(last), behind, false)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("  "), "{error}");
        assert!(
            error.contains("the clock (2026-11-30T16:00:00Z) is behind the audit log's last entry (2026-12-02T16:00:00Z)"),
            "{error}"
        );
    }

    #[test]
    fn the_development_ca_is_trusted_only_beside_a_development_certificate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        let own = rcgen::generate_simple_self_signed(vec!["gateway.example".into()]).unwrap();
        let production = dir.path().join("server.pem");
        std::fs::write(&production, own.cert.pem()).unwrap();
        let mut config = Config::default();
        // A `[tls]` section that set the certificate and left the bundle to its default.
        config.tls.ca = root.join("certs/dev/ca.pem");
        config.tls.cert.clone_from(&production);
        let refused = refuse_development_trust(&config).unwrap_err().to_string();
        assert!(
            refused.contains("trusts the development CA") && refused.contains("tls.ca"),
            "{refused}"
        );
        // The development set-up, both from `passerelle certs dev`.
        config.tls.cert = root.join("certs/dev/server.pem");
        assert!(refuse_development_trust(&config).is_ok());
        // A bundle of other CAs.
        config.tls.ca.clone_from(&production);
        config.tls.cert = production;
        assert!(refuse_development_trust(&config).is_ok());
    }
}
