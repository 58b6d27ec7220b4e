//! The one ingest path every transport shares: identify, decode, validate, authorise, check
//! the domain, make durable, acknowledge.
//!
//! This module owns the order of those steps. Transports (REST, AMQP) are thin adapters
//! around it; they must not decide anything a message means.

pub mod sequence;
