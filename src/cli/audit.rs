//! `passerelle audit …`: offline tools for auditors.
//!
//! This module owns the command-line surface of the audit log: key
//! generation, full verification of a copy of a log folder, trails,
//! evidence bundles and receipts. It works on files only and must not need the gateway to
//! run. It prints ids, kinds and times, never personal data.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use passerelle::audit::bundle::{
    CaseBinding, MAX_BUNDLE_LEN, VerifiedBundle, case_entries_missing, trail_with_progress,
    verify_bundle,
};
use passerelle::audit::files::{MAX_CHECKPOINT, MAX_SMALL_FILE, read_at_most, read_text_at_most};
use passerelle::audit::proof::{PROOF_HEADER, RECEIPT_HEADER};
use passerelle::audit::verify::{self, verify_public};
use passerelle::audit::{
    AuditError, AuditLog, Checkpoint, Fact, Flight, Kind, Leaf, NoteSigner, NoteVerifier, Options,
    Query, Receipt, TlogProof, Transport,
};
use passerelle::durable_folders::{Readers, create_file};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Auditor commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Generate a log signing key; print its verifier key.
    Keygen {
        /// The key name: the log's origin, e.g. `audit.passerelle.gov.ma/log`.
        #[arg(long)]
        name: String,
        /// Where to write the private key (refuses to overwrite).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check every tile, entry bundle, the root and the checkpoint signature.
    Verify {
        /// The log folder (or a copy of its `public/` folder).
        #[arg(long)]
        log: PathBuf,
        /// The verifier key string, or a file that holds it.
        #[arg(long)]
        key: String,
        /// An earlier signed checkpoint the current one must be consistent with.
        #[arg(long)]
        since: Option<PathBuf>,
    },
    /// Print the trail of a case, LPC, PNR, PV, IOM case number, flight or partner reference.
    Trail(Box<TrailArgs>),
    /// Check an evidence bundle on its own.
    VerifyBundle {
        /// The bundle file.
        file: PathBuf,
        /// Pin the verifier key (string or file); otherwise the bundle's own key is used.
        #[arg(long)]
        key: Option<String>,
        /// For a case's trail: a copy of the log folder (or of its `public/` folder) in which
        /// to check that the bundle leaves out none of the case's entries up to its checkpoint.
        #[arg(long)]
        complete_in: Option<PathBuf>,
    },
    /// Check a receipt (a `202`'s `receipt`, or `GET /v1/receipts/{event_id}`'s), and, with
    /// `--proof`, that its entry is in the signed log.
    VerifyReceipt {
        /// The receipt's text, in a file.
        file: PathBuf,
        /// The log's verifier key (string or file).
        #[arg(long)]
        key: String,
        /// The entry's `c2sp.org/tlog-proof@v1` inclusion proof (the `proof` of
        /// `GET /v1/receipts/{event_id}`), in a file.
        #[arg(long)]
        proof: Option<PathBuf>,
    },
    /// Erase a case (run by the gateway's operator, with the gateway stopped: the command is
    /// refused while another process writes the log): append an `erased` leaf, then destroy
    /// the case's keys. The log still verifies; the case can no longer be opened. One cut
    /// short can be run again.
    Erase {
        /// The log folder.
        #[arg(long)]
        log: PathBuf,
        /// The log's signing key file.
        #[arg(long)]
        signer: PathBuf,
        /// The case id.
        #[arg(long)]
        case: String,
    },
    /// Append synthetic facts and print each acknowledged index (for crash tests).
    #[command(hide = true)]
    StressAppend {
        /// The log folder.
        #[arg(long)]
        log: PathBuf,
        /// The signing key file.
        #[arg(long)]
        signer: PathBuf,
        /// How many facts to append in all.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// How many appending threads.
        #[arg(long, default_value_t = 4)]
        threads: u64,
        /// Checkpoint interval in milliseconds.
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
    },
}

/// Which trail to print.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["case", "lpc", "pnr", "pv", "iom_case", "flight", "partner_ref"])))]
pub struct TrailArgs {
    /// The log folder (a copy with its `private/` part).
    #[arg(long)]
    log: PathBuf,
    /// A case id.
    #[arg(long)]
    case: Option<String>,
    /// A laissez-passer number.
    #[arg(long)]
    lpc: Option<String>,
    /// A booking reference.
    #[arg(long)]
    pnr: Option<String>,
    /// A police PV number (an exit authorisation's or a border exit record's).
    #[arg(long)]
    pv: Option<String>,
    /// An IOM case number.
    #[arg(long)]
    iom_case: Option<String>,
    /// A flight as CARRIER/NUMBER/YYYY-MM-DD.
    #[arg(long, value_parser = flight_arg)]
    flight: Option<Flight>,
    /// A partner's message reference as PARTNER:REFERENCE.
    #[arg(long, value_parser = partner_ref_arg)]
    partner_ref: Option<(String, String)>,
    /// Pin the verifier key (string or file) instead of the one in the folder.
    #[arg(long)]
    key: Option<String>,
    /// Write an evidence bundle to this file (a new one: an existing file is not written over).
    #[arg(long)]
    bundle: Option<PathBuf>,
}

fn verifier(key: &str) -> anyhow::Result<NoteVerifier> {
    let text = if Path::new(key).is_file() {
        read_text_at_most(Path::new(key), MAX_SMALL_FILE)
            .with_context(|| format!("reading {key}"))?
    } else {
        key.to_owned()
    };
    if text.trim().is_empty() {
        bail!("the verifier key given is empty");
    }
    if serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v["verifier_key"].is_string())
    {
        bail!(
            "{key} is a log folder's metadata, not a key: give the verifier key the operator \
             published (the `verifier_key` in that file is the folder's own claim; compare it \
             with the published key before pinning it)"
        );
    }
    if !Path::new(key).exists() && !key.contains('+') {
        bail!("{key}: no such file, and not a verifier key (name+id+key) either");
    }
    if text.trim_start().starts_with("PRIVATE+KEY+") {
        bail!(
            "the key given is a signing key, which stays with the gateway: give the verifier \
             key the operator published (the line `audit keygen` printed, or the gateway \
             logged when it made the key)"
        );
    }
    NoteVerifier::parse(text.trim()).context("parsing the verifier key")
}

fn read_signer(path: &Path) -> anyhow::Result<NoteSigner> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    NoteSigner::parse(&text).context("parsing the signing key")
}

impl AuditCommand {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            AuditCommand::Keygen { name, out } => keygen(&name, &out),
            AuditCommand::Verify { log, key, since } => verify(&log, &key, since.as_deref()),
            AuditCommand::Trail(args) => print_trail(*args),
            AuditCommand::VerifyBundle {
                file,
                key,
                complete_in,
            } => check_bundle(&file, key.as_deref(), complete_in.as_deref()),
            AuditCommand::VerifyReceipt { file, key, proof } => {
                check_receipt(&file, &key, proof.as_deref())
            }
            AuditCommand::Erase { log, signer, case } => {
                // What opening the log for writing finds and mends (a damaged public file put
                // back from the journal, say) is said on standard error, as the gateway logs
                // it: a repair that went unsaid would hide the sign of damage.
                super::serve::init_logging_from("warn");
                erase(&log, &signer, &case)
            }
            AuditCommand::StressAppend {
                log,
                signer,
                count,
                threads,
                interval_ms,
            } => {
                super::serve::init_logging_from("warn");
                stress(&log, &signer, count, threads, interval_ms)
            }
        }
    }
}

fn keygen(name: &str, out: &Path) -> anyhow::Result<ExitCode> {
    if !passerelle::audit::note::is_valid_key_name(name) {
        bail!(
            "{name:?} is not a log name: it must be non-empty, with no space and no `+` (for \
             example audit.passerelle.gov.ma/log-2); it becomes the log's origin"
        );
    }
    let signer = NoteSigner::generate(name).context("generating the key")?;
    // The key's folder is made if it is missing, closed to other users like the key itself.
    if let Some(folder) = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.exists())
    {
        passerelle::durable_folders::create_folders(folder)
            .with_context(|| format!("creating the folder {}", folder.display()))?;
    }
    // Kept in a buffer that is wiped when dropped, as the key itself is.
    let mut key = signer.to_signer_key();
    key.push('\n');
    write_new_file(out, key.as_bytes(), Readers::Owner, "key")?;
    say!("{}", signer.verifier().to_verifier_key());
    if super::output::has_failed() {
        // The verifier key is printed here only: a key kept without it could not be checked
        // against (and a second try would be refused for the file being there).
        std::fs::remove_file(out)
            .and_then(|()| passerelle::durable_folders::sync_parent(out))
            .with_context(|| format!("removing {}", out.display()))?;
        eprintln!(
            "error: the verifier key could not be printed, so {} is removed again: run the \
             command again",
            out.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The public folder of `log`: the log folder's `public/`, or `log` itself when it is a copy of
/// that folder alone.
fn public_folder(log: &Path) -> PathBuf {
    if log.join("public/checkpoint").exists() {
        log.join("public")
    } else {
        log.to_owned()
    }
}

/// Whether `log` (a log folder, or a copy of its public part) has a public checkpoint.
fn has_public_checkpoint(log: &Path) -> bool {
    public_folder(log).join("checkpoint").exists()
}

/// The log's private copy of its latest checkpoint (`private/checkpoint` of a whole folder),
/// verified with the log's key: `None` when the folder has none (a copy of `public/` alone).
fn private_checkpoint(copy: &Path, verifier: &NoteVerifier) -> Result<Option<Checkpoint>, String> {
    let data = match read_at_most(copy, MAX_CHECKPOINT) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", copy.display())),
    };
    Checkpoint::open(&data, verifier, None)
        .map(Some)
        .map_err(|e| format!("{}: {e}", copy.display()))
}

/// Whether the public checkpoint is behind the log's private copy (`copy`, `private`), or
/// signs another tree of the same size: said, or `None`. The log writes each checkpoint to
/// public/, then copies it to private/, so a private copy that signs more is a public part
/// rolled back (or copied before the private part), which hides entries the log signed.
fn public_behind(copy: &Path, private: &Checkpoint, public: &Checkpoint) -> Option<String> {
    if private.origin != public.origin {
        return Some(format!(
            "{} is a checkpoint of {}, public/checkpoint of {}: two logs in one folder",
            copy.display(),
            private.origin,
            public.origin
        ));
    }
    if private.size > public.size {
        return Some(format!(
            "public/checkpoint signs {} entries, but the log signed {} ({}): the public part \
             was rolled back, or copied before the private part, and hides the entries after \
             {}; the gateway restores it when it next opens the log",
            public.size,
            private.size,
            copy.display(),
            public.size
        ));
    }
    (private.size == public.size && private.root != public.root).then(|| {
        format!(
            "public/checkpoint and {} sign two different trees of {} entries",
            copy.display(),
            public.size
        )
    })
}

/// A progress bar over `len` entries.
fn entries_bar(len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} entries ({per_sec}, {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn verify(log: &Path, key: &str, since: Option<&Path>) -> anyhow::Result<ExitCode> {
    let v = verifier(key)?;
    readable_folder(log)?;
    if log.join("log.json").is_file() && !log.join("tile").is_dir() {
        let parent = log.parent().unwrap_or(Path::new(".."));
        bail!(
            "{} is a log's private part, which holds no tiles: give the log's folder ({}), or a \
             copy of its public/ folder",
            log.display(),
            parent.display()
        );
    }
    let public = public_folder(log);
    let private_copy = log.join("private/checkpoint");
    if !public.join("checkpoint").exists() && private_copy.exists() {
        say!(
            "FAILED: {} is missing: the log's public part has no signed checkpoint, although the \
             log signed one ({}); the gateway restores it when it next opens the log",
            log.join("public/checkpoint").display(),
            private_copy.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    if !has_public_checkpoint(log) {
        if [log.join("tile"), log.join("public/tile")]
            .iter()
            .any(|tiles| tiles.is_dir())
        {
            // Tiles without any signed checkpoint: a log that lost its checkpoints, whose
            // tiles nothing vouches for (a failed check, as any file the log lost).
            say!(
                "FAILED: {} holds a log's tiles but no signed checkpoint (neither \
                 public/checkpoint nor private/checkpoint): nothing says what the log signed, \
                 so nothing can be checked; restore the checkpoint from a copy",
                log.display()
            );
            return Ok(ExitCode::FAILURE);
        }
        // Not a log that failed its check: no log at all where the command looked.
        let hint = nested_log_hint(log, has_public_checkpoint);
        bail!(
            "{} holds no log: give a log folder, or a copy of its public/ folder, with a \
             checkpoint file{hint}",
            log.display()
        );
    }
    let since = since
        .map(|p| {
            // What the file is, said from its beginning (a bundle is larger than a checkpoint);
            // no more than a checkpoint's largest size and a byte is read.
            let mut note = Vec::new();
            std::fs::File::open(p)
                .and_then(|file| file.take(MAX_CHECKPOINT + 1).read_to_end(&mut note))
                .with_context(|| format!("reading {}", p.display()))?;
            let whole = note.len() as u64 <= MAX_CHECKPOINT;
            let note = one_final_newline(note);
            let first_line = note.split(|&b| b == b'\n').next().unwrap_or_default();
            if first_line == PROOF_HEADER.as_bytes() {
                bail!(
                    "{} is an inclusion proof, not a checkpoint: give the checkpoint it holds, \
                     the part after its blank line (sed '1,/^$/d' {} > checkpoint)",
                    p.display(),
                    p.display()
                );
            }
            if first_line == RECEIPT_HEADER.as_bytes() {
                bail!(
                    "{} is a receipt, not a checkpoint: a receipt holds none; give the \
                     checkpoint of its proof (GET /v1/receipts/…, the part after its blank line)",
                    p.display()
                );
            }
            if note.trim_ascii_start().starts_with(b"{") {
                bail!(
                    "{} is a JSON document (an evidence bundle?), not a checkpoint: give the \
                     checkpoint it holds (jq -j .checkpoint {} > checkpoint)",
                    p.display(),
                    p.display()
                );
            }
            if !whole {
                bail!(
                    "{} is larger than any checkpoint ({MAX_CHECKPOINT} bytes)",
                    p.display()
                );
            }
            Ok(note)
        })
        .transpose()?;
    // The size only sizes the progress bar; the checkpoint is verified below.
    let size_hint = read_text_at_most(&public.join("checkpoint"), MAX_CHECKPOINT)
        .ok()
        .and_then(|t| t.lines().nth(1).and_then(|l| l.parse().ok()))
        .unwrap_or(0);
    // The private copy is read before the public checkpoint: the log writes each checkpoint
    // to public/ first, then to private/, so that a running gateway's public checkpoint read
    // after its private copy is never behind it.
    let private = match private_checkpoint(&private_copy, &v) {
        Ok(private) => private,
        Err(failure) => {
            say!("FAILED: {failure}");
            return Ok(ExitCode::FAILURE);
        }
    };
    // A public part rolled back is said before its tiles are read: some may be gone.
    if let Some(private) = &private
        && let Some(failure) = read_at_most(&public.join("checkpoint"), MAX_CHECKPOINT)
            .ok()
            .and_then(|data| Checkpoint::open(&data, &v, Some(&private.origin)).ok())
            .and_then(|cp| public_behind(&private_copy, private, &cp))
    {
        say!("FAILED: {failure}");
        return Ok(ExitCode::FAILURE);
    }
    let bar = entries_bar(size_hint);
    let start = Instant::now();
    let result = verify_public(&public, &v, since.as_deref(), &mut |done| {
        bar.set_position(done)
    });
    bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(failure) => {
            say!("FAILED: {failure}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let cp = &report.checkpoint;
    // In a whole folder, the private copy must sign the beginning of the same history: two
    // checkpoints of one key over two histories show that the log told two stories.
    if let Some(private) = &private {
        let failure = public_behind(&private_copy, private, cp).or_else(|| {
            verify::check_consistent(&public, private, cp)
                .err()
                .map(|why| {
                    format!(
                        "{} (size {}) and public/checkpoint (size {}) sign two different \
                         histories: {why}",
                        private_copy.display(),
                        private.size,
                        cp.size
                    )
                })
        });
        if let Some(failure) = failure {
            say!("FAILED: {failure}");
            return Ok(ExitCode::FAILURE);
        }
    }
    say!("ok: {} size {} root {}", cp.origin, cp.size, cp.root);
    if let Some(old) = &report.since {
        say!(
            "ok: consistent with the earlier checkpoint of size {}",
            old.size
        );
    }
    say!(
        "hashed {} entries in {:.3} s ({:.0} entries/s)",
        cp.size,
        secs,
        cp.size as f64 / secs
    );
    // What this command did not look at, said so that an `ok` is not read as more than it is.
    if report.since.is_none() {
        say!(
            "not checked: that the log only grew since a checkpoint verified before (give --since \
             with one you kept: a log rolled back, or forked, verifies as a smaller log)"
        );
    }
    say!(
        "not checked: files written for entries beyond size {} (no checkpoint signs them yet)",
        cp.size
    );
    if private.is_some() {
        say!(
            "not checked: the private part's journal and index (`audit trail` checks what it \
             reads of them)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--flight CARRIER/NUMBER/YYYY-MM-DD`, read by the command line's parser so that a malformed
/// one is a usage error (exit status 2).
fn flight_arg(text: &str) -> Result<Flight, String> {
    let parts: Vec<&str> = text.split('/').collect();
    let [carrier, number, date] = parts.as_slice() else {
        return Err("takes CARRIER/NUMBER/YYYY-MM-DD, for example AT/505/2026-11-20".into());
    };
    let date = date
        .parse()
        .map_err(|_| format!("the date {date:?} is not YYYY-MM-DD"))?;
    Ok(Flight {
        carrier: (*carrier).into(),
        number: (*number).into(),
        date,
    })
}

/// `--partner-ref PARTNER:REFERENCE`, as [`flight_arg`].
fn partner_ref_arg(text: &str) -> Result<(String, String), String> {
    let (partner, reference) = text.split_once(':').ok_or(
        "takes PARTNER:REFERENCE, for example sn.consulat.casablanca:CGSN-CASA-2026-00417",
    )?;
    Ok((partner.into(), reference.into()))
}

fn query(args: &TrailArgs) -> anyhow::Result<Query> {
    // A value that no entry can carry finds nothing: said, rather than `no entries`, which
    // would read as a verdict on the log.
    for (option, value) in [
        ("--case", &args.case),
        ("--lpc", &args.lpc),
        ("--pnr", &args.pnr),
        ("--pv", &args.pv),
        ("--iom-case", &args.iom_case),
    ] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            bail!("{option} is empty: give the value to search for");
        }
    }
    if let Some(c) = &args.case {
        // Judged as the index keeps it: trimmed and in capitals.
        let normal = c.trim().to_ascii_uppercase();
        let refusals = normal
            .strip_prefix("REFUSED/")
            .is_some_and(|sender| !sender.is_empty());
        if !refusals && !passerelle::canonical::is_case_id(&normal) {
            bail!(
                "--case takes a case id, RVA-YYYY-NNNNNN (RVA, a dash, the year, a dash and six \
                 digits), or a sender's trail of refusals, refused/<sender>"
            );
        }
        return Ok(Query::Case(c.clone()));
    }
    if let Some(l) = &args.lpc {
        return Ok(Query::Lpc(l.clone()));
    }
    if let Some(p) = &args.pnr {
        return Ok(Query::Pnr(p.clone()));
    }
    if let Some(p) = &args.pv {
        return Ok(Query::Pv(p.clone()));
    }
    if let Some(n) = &args.iom_case {
        return Ok(Query::IomCase(n.clone()));
    }
    if let Some(f) = &args.flight {
        return Ok(Query::Flight(f.clone()));
    }
    if let Some((p, r)) = &args.partner_ref {
        return Ok(Query::PartnerRef(p.clone(), r.clone()));
    }
    bail!("give one of --case, --lpc, --pnr, --pv, --iom-case, --flight, --partner-ref")
}

/// `1 entry`, `2 entries`.
fn entries(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Whether a search failed on a check of the log (damage, tampering, a key that is not the
/// log's) rather than on reading it.
fn failed_check(error: &AuditError) -> bool {
    matches!(
        error,
        AuditError::Corrupt(_)
            | AuditError::OtherIndexKey { .. }
            | AuditError::Proof(_)
            | AuditError::Checkpoint(_)
            | AuditError::CheckpointFile { .. }
            | AuditError::Note(_)
    )
}

/// One line describing a leaf, for timelines.
pub fn describe(leaf: &Leaf) -> String {
    // The kind's name as the leaf spells it (`delivery_failed`).
    let kind = serde_json::to_value(leaf.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut s = format!("{kind:<15}");
    if let Some(t) = &leaf.event_type {
        s.push_str(&format!(" {t}"));
    }
    if let Some(id) = &leaf.event_id {
        s.push_str(&format!(" id={id}"));
    }
    if let Some(from) = &leaf.sender {
        s.push_str(&format!(" from={from}"));
    }
    if !leaf.recipients.is_empty() {
        s.push_str(&format!(" to={}", leaf.recipients.join(",")));
    }
    if let Some(t) = leaf.transport {
        s.push_str(if t == Transport::Rest {
            " via=rest"
        } else {
            " via=amqp"
        });
    }
    if let Some(m) = &leaf.mapping {
        s.push_str(&format!(" mapping={}", m.id));
    }
    if !leaf.withheld.is_empty() {
        s.push_str(&format!(" withheld={}", leaf.withheld.join(",")));
    }
    if let Some(r) = &leaf.reason {
        s.push_str(&format!(" reason={r}"));
    }
    if let Some(n) = leaf.count {
        s.push_str(&format!(" count={n}"));
    }
    s
}

fn print_trail(args: TrailArgs) -> anyhow::Result<ExitCode> {
    let q = query(&args)?;
    let pinned = args.key.as_deref().map(verifier).transpose()?;
    // Said before the search, which can be long: the file is not written over either way.
    if let Some(path) = &args.bundle
        && path.exists()
    {
        return Err(exists_already(path, "bundle"));
    }
    readable_folder(&args.log)?;
    if !args.log.join("private").is_dir() {
        let hint = nested_log_hint(&args.log, |nested| nested.join("private").is_dir());
        bail!(
            "{} has no private/ folder: a trail is searched with the log's index key, so it \
             needs a copy of the whole log folder (public/ and private/), not of public/ alone\
             {hint}",
            args.log.display()
        );
    }
    // A spinner on standard error while the journal is scanned and the proofs checked (hidden
    // when standard error is not a terminal).
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let searched = trail_with_progress(&args.log, &q, pinned.as_ref(), &mut |stage, n| {
        spinner.set_message(match stage {
            "scan" => format!("searching the journal: {n} records read"),
            _ => format!("checking inclusion proofs: {n} entries"),
        });
        spinner.tick();
    });
    spinner.finish_and_clear();
    let t = match searched {
        Ok(t) => t,
        // A check that failed is the auditor's finding, said as `verify` says its own; a
        // folder that cannot be read is an error.
        Err(e) if failed_check(&e) => {
            say!("FAILED: {e}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(anyhow::Error::new(e).context("searching the log")),
    };
    say!(
        "checkpoint {} size {} (signature verified with {})",
        t.checkpoint.origin,
        t.checkpoint.size,
        t.verifier.to_verifier_key()
    );
    if let Some(private) = t.private_ahead {
        say!(
            "note: private/checkpoint signs {private} entries, but the public part holds the \
             tiles of {} only: the copy was taken while the log grew (its public part first); \
             the proofs are against public/checkpoint, and later entries are counted as not yet \
             covered",
            t.checkpoint.size
        );
    }
    if let Some(public) = t.public_behind {
        say!(
            "note: public/checkpoint signs {public} entries only, private/checkpoint {}, \
             consistent with it: the public part is behind (rolled back, or copied before the \
             private part; the gateway restores it when it next opens the log); the proofs are \
             against the latter",
            t.checkpoint.size
        );
    }
    if pinned.is_none() {
        say!(
            "note: the key comes from the log folder; pin it with --key to rule out a substituted folder"
        );
    }
    for f in &t.found {
        say!(
            "{:>8}  {}  {}  [proof ok]",
            f.index,
            f.leaf.time,
            describe(&f.leaf)
        );
    }
    if !t.pending.is_empty() {
        say!(
            "{} not yet covered by a checkpoint",
            entries(t.pending.len(), "more entry is", "more entries are")
        );
    }
    if t.found.is_empty() && t.pending.is_empty() {
        say!("no entries");
    }
    if !matches!(q, Query::Case(_)) {
        say!(
            "not checked: that the index gives every entry it should (only a case's trail is \
             checked for that: read the case's trail)"
        );
    }
    if t.case_binding == Some(CaseBinding::Erased) {
        say!(
            "not checked: that these entries are of the case searched for: it was erased, and \
             its key with it (they are checked to be of one and the same case, and all of its \
             entries)"
        );
    }
    if let Some(path) = &args.bundle {
        // A bundle is evidence: one already there (an earlier trail's) is not written over.
        let bundle = t.to_bundle()?;
        write_new_file(path, &bundle, Readers::AsTheUmaskSays, "bundle")?;
        say!(
            "bundle written to {} ({})",
            path.display(),
            entries(t.found.len(), "entry", "entries")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check_bundle(
    file: &Path,
    key: Option<&str>,
    complete_in: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let pinned = key.map(verifier).transpose()?;
    // Read no further than the largest bundle: a huge file (or a link to an endless one) is
    // refused without filling memory.
    let mut data = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_BUNDLE_LEN as u64 + 1).read_to_end(&mut data))
        .with_context(|| format!("reading {}", file.display()))?;
    match verify_bundle(&data, pinned.as_ref()) {
        Ok(b) => {
            say!(
                "ok: {} proven in {} at size {}, key {}{}",
                entries(b.entries.len(), "entry", "entries"),
                b.checkpoint.origin,
                b.checkpoint.size,
                b.verifier.to_verifier_key(),
                if b.pinned {
                    ""
                } else {
                    " (taken from the bundle: compare it with the log's published key)"
                }
            );
            for (i, leaf) in &b.entries {
                say!("{i:>8}  {}  {}", leaf.time, describe(leaf));
            }
            match complete_in {
                None => {
                    say!(
                        "not checked: whether the bundle holds every entry of its case \
                         (give --complete-in with a copy of the log's public folder)"
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Some(log) => check_case_complete(&b, log),
            }
        }
        Err(e) => {
            say!("FAILED: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// A signed note ends with one newline. A note saved by a tool that adds another (say
/// `jq -r .checkpoint bundle.json`, or `jq -r .receipt`) is read as the note it holds.
fn one_final_newline(mut note: Vec<u8>) -> Vec<u8> {
    while note.ends_with(b"\n\n") {
        note.pop();
    }
    note
}

/// Checks a receipt, and the inclusion proof of its entry when one is given.
fn check_receipt(file: &Path, key: &str, proof: Option<&Path>) -> anyhow::Result<ExitCode> {
    let v = verifier(key)?;
    let read = |path: &Path| {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(1 << 20).read_to_end(&mut bytes))
            .with_context(|| format!("reading {}", path.display()))?;
        String::from_utf8(one_final_newline(bytes))
            .with_context(|| format!("{} is not text", path.display()))
    };
    let receipt_text = read(file)?;
    let receipt = match Receipt::verify(&receipt_text, &v) {
        Ok(receipt) => receipt,
        Err(e) => {
            // The gateway's JSON answer holds the receipt in its `receipt` field: a file of
            // the whole answer is a common slip, worth a hint.
            let hint = if receipt_text.trim_start().starts_with('{') {
                " (this file is JSON: save the answer's receipt field alone, as `jq -r .receipt` \
                 writes it)"
            } else {
                ""
            };
            say!("FAILED: receipt: {e}{hint}");
            return Ok(ExitCode::FAILURE);
        }
    };
    say!(
        "ok: receipt for entry {} (leaf {}) of {}, durable at {}",
        receipt.index,
        receipt.leaf_hash.to_base64(),
        receipt.origin,
        receipt.time
    );
    let Some(proof) = proof else {
        say!("not checked: that the entry is in the public log (give --proof)");
        return Ok(ExitCode::SUCCESS);
    };
    let proof_text = read(proof)?;
    if proof_text.trim() == "null" {
        // What `jq .proof` writes of an answer given before a checkpoint covered the entry.
        say!(
            "FAILED: proof: {} holds null, not a proof: no checkpoint covered the entry yet when \
             it was asked for; ask again (GET /v1/receipts/{{event_id}} answers with a proof once \
             one does)",
            proof.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let proof = match TlogProof::parse(&proof_text) {
        Ok(parsed) if parsed.index != receipt.index => {
            say!(
                "FAILED: proof: {} is the proof of entry {}, not of the receipt's entry {}: give \
                 the proof of the same event",
                proof.display(),
                parsed.index,
                receipt.index
            );
            return Ok(ExitCode::FAILURE);
        }
        Ok(parsed) => parsed,
        Err(e) => {
            say!("FAILED: proof: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let checked = proof.verify_leaf(&receipt.leaf_hash, &v, Some(&receipt.origin));
    match checked {
        Ok(checkpoint) => {
            say!(
                "ok: entry {} is in {} at size {} (root {})",
                receipt.index,
                checkpoint.origin,
                checkpoint.size,
                checkpoint.root
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            say!("FAILED: proof: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Checks that a verified case bundle leaves out none of the case's entries in `public`.
/// Checks that the log at `log` (a whole log folder or a copy of its public part) holds no
/// entry of the bundle's case that the bundle leaves out.
fn check_case_complete(bundle: &VerifiedBundle, log: &Path) -> anyhow::Result<ExitCode> {
    readable_folder(log)?;
    let public = public_folder(log);
    let bar = entries_bar(bundle.checkpoint.size);
    let found = case_entries_missing(bundle, &public, &mut |done| bar.set_position(done));
    bar.finish_and_clear();
    match found {
        Ok(found) if found.missing.is_empty() => {
            say!(
                "complete: the log holds {} of the case up to size {}, all in the bundle",
                entries(found.in_log as usize, "entry", "entries"),
                bundle.checkpoint.size
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(found) => {
            let listed: Vec<String> = found.missing.iter().map(u64::to_string).collect();
            say!(
                "INCOMPLETE: the log holds {} of the case up to size {}; the bundle leaves out {}: {}",
                entries(found.in_log as usize, "entry", "entries"),
                bundle.checkpoint.size,
                found.missing.len(),
                listed.join(", ")
            );
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            // A gateway's data folder given for its log: the log below it is named.
            let hint = nested_log_hint(log, has_public_checkpoint);
            say!("FAILED: {e}{hint}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// For a folder given where a log was expected: when it is a gateway's data folder, whose
/// `audit-log/` holds a log (`has_log`), a hint naming that log; otherwise nothing.
fn nested_log_hint(folder: &Path, has_log: impl Fn(&Path) -> bool) -> String {
    let nested = folder.join("audit-log");
    if has_log(&nested) {
        format!(" (the log of that data folder is {})", nested.display())
    } else {
        String::new()
    }
}

/// Writes `data` to `path`, whole or not at all, and never over a file already there (see
/// [`create_file`]): a key or a bundle is evidence another may rely on. `what` names it in the
/// refusal.
fn write_new_file(path: &Path, data: &[u8], readers: Readers, what: &str) -> anyhow::Result<()> {
    match create_file(path, data, readers) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(exists_already(path, what)),
        Err(e) => Err(e).with_context(|| format!("writing the {what} to {}", path.display())),
    }
}

/// The refusal to write a `what` over `path`.
fn exists_already(path: &Path, what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{} exists already: a {what} is not written over another; give a new name, or remove \
         the old file first",
        path.display()
    )
}

/// Refuses a log folder this process may not read, before a look for its files finds none
/// and calls it no log: a copy closed to the auditor's user is not a missing or partial one.
fn readable_folder(log: &Path) -> anyhow::Result<()> {
    for folder in [
        log.to_owned(),
        log.join("public"),
        log.join("private"),
        log.join("private/keys"),
    ] {
        match std::fs::read_dir(&folder) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                bail!("{} cannot be read: {e}", folder.display())
            }
            _ => {}
        }
    }
    Ok(())
}

/// Refuses a folder that holds no log: opening it for writing would start a new, empty log
/// there, signed with the real key, and the command would then report on the wrong log.
fn existing_log(log: &Path) -> anyhow::Result<()> {
    readable_folder(log)?;
    let has_log = |folder: &Path| folder.join("private/log.json").is_file();
    if has_log(log) {
        return Ok(());
    }
    let hint = nested_log_hint(log, has_log);
    bail!(
        "{} holds no audit log (no private/log.json): give the log's folder, the gateway's \
         <data>/audit-log{hint}",
        log.display()
    )
}

fn erase(log: &Path, signer: &Path, case: &str) -> anyhow::Result<ExitCode> {
    // The log keeps a case's keys under its id's normal form but commits to the id as the
    // messages wrote it: an id written another way would find the keys and sign an `erased`
    // entry that the case's other entries do not match. Every message writes a case id in
    // capitals (the canonical schema's pattern), so an id typed in lower case is written
    // back in capitals, as `trail` finds it; anything else that is not a case id is refused.
    // The gateway's own trails of refusals (`refused/<partner>`) are no case: erased, they
    // would refuse every later refusal's entry.
    let case = case.to_ascii_uppercase();
    if !passerelle::canonical::is_case_id(&case) {
        bail!(
            "{case:?} is not a case id: a case id is RVA-YYYY-NNNNNN (RVA, a dash, the year, a \
             dash and six digits); nothing erased"
        );
    }
    existing_log(log)?;
    passerelle::service::keep_new_files_private();
    let signer = read_signer(signer)?;
    let origin = signer.verifier().name().to_owned();
    let log =
        AuditLog::open(log, signer, &origin, Options::default()).context("opening the log")?;
    let receipt = match log.erase_case(&case) {
        Err(AuditError::UnknownCase) => bail!(
            "this log has no case with that id (nothing was ever logged under it): nothing \
             erased; check the id"
        ),
        Err(AuditError::CaseErased) => {
            bail!("that case is already erased: nothing appended")
        }
        other => other.context("erasing the case")?,
    };
    log.close().context("closing the log")?;
    // The case id is not printed: the receipt's index is what the operator records.
    say!(
        "erased: its keys are destroyed; erasure recorded at index {}",
        receipt.index
    );
    Ok(ExitCode::SUCCESS)
}

fn stress(
    log: &Path,
    signer: &Path,
    count: u64,
    threads: u64,
    interval_ms: u64,
) -> anyhow::Result<ExitCode> {
    let signer = read_signer(signer)?;
    let origin = signer.verifier().name().to_owned();
    let options = Options {
        checkpoint_interval: Duration::from_millis(interval_ms),
        ..Options::default()
    };
    let log = AuditLog::open(log, signer, &origin, options).context("opening the log")?;
    let threads = threads.max(1);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let log = &log;
                s.spawn(move || -> anyhow::Result<()> {
                    let mut i = t;
                    while i < count {
                        let mut fact = Fact::new(Kind::Received, chrono::Utc::now());
                        fact.sender = Some("airline.at".into());
                        fact.transport = Some(Transport::Amqp);
                        fact.event_type = Some("ma.rva.boarding.confirmed".into());
                        fact.event_id = Some(format!("stress-{i}"));
                        fact.case_id = Some(format!("RVA-2026-{:06}", i % 37));
                        fact.personal.native = Some(format!("native {i}").into_bytes());
                        let r = log.append(&fact)?;
                        say!("ack {} stress-{i}", r.index);
                        i += threads;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("appender panicked"))??;
        }
        Ok(())
    })?;
    log.close()?;
    Ok(ExitCode::SUCCESS)
}
