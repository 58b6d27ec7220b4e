//! Passerelle: the exchange gateway of Morocco's assisted voluntary return programme.
//!
//! The crate is organised along the path a message takes. Each module owns one thing:
#![forbid(unsafe_code)]

pub mod amqp; // the AMQP transport: connection, topology, ingress, confirmed egress
pub mod audit; // the signed, tamper-evident audit log (C2SP tlog-tiles)
pub mod canonical; // the canonical model: CloudEvents envelope, catalogue, schemas, JCS
pub mod config; // the gateway's configuration file and its defaults
pub mod cpu; // CPU time of a process, for the load generator and the benchmarks
pub mod delivery; // push delivery from the outbox: retries, dead letters, webhooks
pub mod durable_folders; // folder syncs, so that new and renamed files survive a crash
pub mod error_text; // an error and its causes in one line, each said once
mod line_throttle; // log lines written at most once a second, with a count of those held back
pub mod loopback; // free loopback ports for the servers tests and the load generator start
pub mod mapping; // the mapping language: native formats to canonical events and back
pub mod metrics; // the Prometheus metrics
pub mod pipeline; // the one ingest path shared by every transport
pub mod registry; // partners, identities, permissions, routing tables
pub mod server; // the REST transport: mTLS HTTPS routes and the admin listener
pub mod service; // a running gateway: start in order, stop gracefully
pub mod store; // durable store: accepted messages, duplicates, case files, outbox
pub mod tls; // mutual TLS: rustls configs, certificate identity, CRLs
pub mod write_queue; // bounded queues from async tasks to the store's and the log's writer threads
