//! The `passerelle` command line: the gateway, its mapping tools and the auditors' tools.
// One `unsafe` block, in `deep_enough_thread_stacks`, says why; none elsewhere.
#![deny(unsafe_code)]

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

/// The stack size every thread of the process gets unless it asks for its own (the standard
/// library's `RUST_MIN_STACK`): 64 MiB of address space, of which a thread touches only what it
/// uses.
const THREAD_STACK: &str = "67108864";

/// Gives the threads that the process's libraries spawn a stack deep enough for any message
/// the broker can deliver. The AMQP client parses a message's header tables recursively on a
/// thread of its own, whose stack size it does not let its caller choose: with the standard
/// 2 MiB, a header nesting tables some 2,500 deep (17 KB, which the broker takes) overflows it
/// and aborts the whole gateway, HTTPS included, again at each restart until the broker's
/// delivery limit gives the message up. RabbitMQ's frames (128 KiB by default) bound the
/// nesting to about 19,000 levels, which 32 MiB was measured to parse; 64 MiB leaves a margin.
/// An operator's own `RUST_MIN_STACK` is left as it is.
#[allow(unsafe_code)]
fn deep_enough_thread_stacks() {
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        // SAFETY: `set_var` is unsound only while another thread may read or write the
        // environment. This runs first in `main`, before anything has started a thread (the
        // allocator starts none), and the standard library reads the variable at the first
        // thread it spawns.
        unsafe { std::env::set_var("RUST_MIN_STACK", THREAD_STACK) };
    }
}

fn main() -> ExitCode {
    deep_enough_thread_stacks();
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
    let code = match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!(
                "error: {}",
                each_cause_once(error.chain().map(ToString::to_string))
            );
            ExitCode::FAILURE
        }
    };
    match cli::output::failure() {
        None => code,
        // The reader stopped reading (`| head`): what it did not read it did not want, and
        // saying so would only add noise; the status still says the output was cut short.
        Some(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::FAILURE,
        Some(error) => {
            eprintln!("error: writing standard output: {error}; the output is incomplete");
            ExitCode::FAILURE
        }
    }
}
