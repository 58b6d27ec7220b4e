//! The private RabbitMQ broker of the integration tests: `passerelle::amqp::broker`.
//!
//! Include it from an integration test with
//!
//! ```ignore
//! #[path = "support/rabbit.rs"]
//! mod rabbit;
//! ```
#![allow(unused_imports)] // each test file uses the part of the harness it needs

pub use passerelle::amqp::broker::*;
