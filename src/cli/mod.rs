//! Subcommands of the `passerelle` binary. Each file owns one subcommand family.

pub mod audit;
pub mod certs;
pub mod demo;
pub mod load;
pub mod mapping;
pub mod serve;
