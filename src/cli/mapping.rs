//! `passerelle mapping …`: lint, test and run mappings.

use anyhow::Context;
use clap::{ArgGroup, Subcommand};
use passerelle::mapping::{Decoded, MappingSet, fixtures, pretty_json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Mapping commands.
#[derive(Debug, Subcommand)]
pub enum MappingCommand {
    /// Load every mapping and report each problem with its file and line.
    Lint {
        /// The mappings folder.
        #[arg(long, default_value = "mappings")]
        mappings: PathBuf,
        /// Then list each partner's mapping ids, as the registry's `mappings` names them.
        #[arg(long)]
        ids: bool,
    },
    /// Run every fixture, native to canonical and canonical to native, and diff the results.
    Test {
        /// The mappings folder.
        #[arg(long, default_value = "mappings")]
        mappings: PathBuf,
        /// Write the expected files from what the mappings produce now, instead of checking.
        #[arg(long)]
        bless: bool,
    },
    /// Map one message: `--from PARTNER` turns a native message into a canonical event,
    /// `--to PARTNER` turns a canonical event into that partner's message.
    #[command(group(ArgGroup::new("direction").required(true).args(["from", "to"])))]
    Run {
        /// The sending partner of a native message.
        #[arg(long, value_name = "PARTNER_ID")]
        from: Option<String>,
        /// The receiving partner of a canonical event.
        #[arg(long, value_name = "PARTNER_ID")]
        to: Option<String>,
        /// The mappings folder.
        #[arg(long, default_value = "mappings")]
        mappings: PathBuf,
        /// Indent the canonical JSON for reading (the default is RFC 8785 canonical JSON).
        #[arg(long)]
        pretty: bool,
        /// The message file.
        file: PathBuf,
    },
}

impl MappingCommand {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            MappingCommand::Lint { mappings, ids } => {
                let Some(set) = load(&mappings) else {
                    return Ok(ExitCode::FAILURE);
                };
                let partners = set.partners().count();
                let inbound: usize = set.partners().map(|p| p.inbound().len()).sum();
                let outbound: usize = set.partners().map(|p| p.outbound().len()).sum();
                say!(
                    "{partners} partners, {inbound} inbound and {outbound} outbound message kinds: no problem found"
                );
                if ids {
                    for partner in set.partners() {
                        say!("{}: {}", partner.partner, partner.mapping_ids().join(" "));
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            MappingCommand::Test { mappings, bless } => {
                let Some(set) = load(&mappings) else {
                    return Ok(ExitCode::FAILURE);
                };
                let outcomes = fixtures::run_all(&set, bless).context(if bless {
                    "blessing the fixtures (those written before this error hold what the mappings give now)"
                } else {
                    "running the fixtures"
                })?;
                let failed: Vec<_> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
                for outcome in &failed {
                    eprintln!(
                        "FAIL {}\n{}",
                        outcome.input.display(),
                        outcome.failure.as_deref().unwrap_or_default()
                    );
                }
                if outcomes.is_empty() {
                    eprintln!(
                        "no fixture found under {}",
                        mappings.join("fixtures").display()
                    );
                    return Ok(ExitCode::FAILURE);
                }
                let verb = if bless { "written" } else { "passed" };
                say!(
                    "{} of {} fixtures {verb}",
                    outcomes.len() - failed.len(),
                    outcomes.len()
                );
                Ok(if failed.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            MappingCommand::Run {
                from,
                to,
                mappings,
                pretty,
                file,
            } => {
                let Some(set) = load(&mappings) else {
                    return Ok(ExitCode::FAILURE);
                };
                let bytes =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let partner_id = from.as_deref().or(to.as_deref()).unwrap_or_default();
                let Some(partner) = set.partner(partner_id) else {
                    eprintln!(
                        "error: no mapping for partner {partner_id} in {}",
                        mappings.display()
                    );
                    return Ok(ExitCode::FAILURE);
                };
                if from.is_some() {
                    match partner.decode(&bytes) {
                        Ok(Decoded::Event(mapped)) => {
                            let body = if pretty {
                                pretty_json(&mapped.event).into_bytes()
                            } else {
                                mapped.to_canonical_json()
                            };
                            super::output::write(&body);
                            if !pretty {
                                super::output::write(b"\n");
                            }
                        }
                        Ok(Decoded::Ignored {
                            mapping_id,
                            kind,
                            reason,
                            ..
                        }) => {
                            let outcome = serde_json::json!({"ignored": {"mapping": mapping_id, "kind": kind, "reason": reason}});
                            super::output::write(pretty_json(&outcome).as_bytes());
                        }
                        Err(error) => {
                            eprintln!("error: {error}");
                            return Ok(ExitCode::FAILURE);
                        }
                    }
                } else {
                    let event: serde_json::Value = match serde_json::from_slice(&bytes) {
                        Ok(event) => event,
                        Err(error) => {
                            eprintln!("error: {} is not a JSON event: {error}", file.display());
                            return Ok(ExitCode::FAILURE);
                        }
                    };
                    if let Err(violations) = set.schemas().validate(&event) {
                        for violation in violations {
                            eprintln!(
                                "error: the event breaks the canonical schema at {violation}"
                            );
                        }
                        return Ok(ExitCode::FAILURE);
                    }
                    match partner.encode(&event) {
                        Ok(encoded) => {
                            super::output::write(&encoded.body);
                            if encoded.content_type != "application/xml" {
                                super::output::write(b"\n");
                            }
                            eprintln!(
                                "mapping {}; withheld: {}",
                                encoded.mapping_id,
                                if encoded.withheld.is_empty() {
                                    "nothing".to_owned()
                                } else {
                                    encoded.withheld.join(", ")
                                }
                            );
                        }
                        Err(error) => {
                            eprintln!("error: {error}");
                            return Ok(ExitCode::FAILURE);
                        }
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// Loads the mappings, printing every lint problem; `None` when there was one.
fn load(dir: &Path) -> Option<MappingSet> {
    match MappingSet::load(dir) {
        Ok(set) => Some(set),
        Err(mut diagnostics) => {
            // In the order of the files and their lines, as an author reads them.
            diagnostics
                .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
            for diagnostic in &diagnostics {
                eprintln!("{diagnostic}");
            }
            eprintln!("{} problem(s) in {}", diagnostics.len(), dir.display());
            None
        }
    }
}
