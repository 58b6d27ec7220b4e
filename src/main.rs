//! The `passerelle` command line: the gateway, its mapping tools and the auditors' tools.
#![forbid(unsafe_code)]

mod cli;

/// The allocator. Mapping a message allocates many small strings and values; mimalloc serves
/// them markedly faster than the system allocator (see `benches/mapping.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use passerelle::error_text::each_cause_once;
use std::process::ExitCode;

/// Passerelle, the exchange gateway of Morocco's assisted voluntary return programme.
#[derive(Debug, Parser)]
#[command(name = "passerelle", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lint, test and run the partner mappings.
    #[command(subcommand)]
    Mapping(cli::mapping::MappingCommand),
    /// Verify the audit log and export evidence, offline.
    #[command(subcommand)]
    Audit(cli::audit::AuditCommand),
    /// Development certificates and certificate identities.
    #[command(subcommand)]
    Certs(cli::certs::CertsCommand),
    /// Run the gateway.
    Serve(cli::serve::ServeArgs),
    /// List the dead letters of a running gateway, redeliver them or discard them.
    #[command(subcommand)]
    Deliveries(cli::deliveries::DeliveriesCommand),
    /// Play the complete return of a case through a gateway on loopback, then audit it.
    Demo(cli::demo::DemoArgs),
    /// Measure the gateway under load against a floor, over mutual TLS.
    Load(cli::load::LoadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Mapping(command) => command.run(),
        Command::Audit(command) => command.run(),
        Command::Certs(command) => command.run(),
        Command::Serve(args) => args.run(),
        Command::Deliveries(command) => command.run(),
        Command::Demo(args) => args.run(),
        Command::Load(args) => args.run(),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!(
                "error: {}",
                each_cause_once(error.chain().map(ToString::to_string))
            );
            ExitCode::FAILURE
        }
    }
}
