//! waverify: one-time login codes delivered over WhatsApp.
//!
//! The crate is laid out along the three request paths (send-code, webhook,
//! check-code): `routes` speaks HTTP, `domain` holds the rules, `whatsapp`
//! knows Meta's formats, `store` keeps state, and `sandbox` stands in for the
//! Graph API when no Meta account is configured.

#![deny(unsafe_code)]

pub mod clock;
pub mod domain;
pub mod error;
pub mod fallback;
pub mod outbox;
pub mod routes;
pub mod sandbox;
pub mod settings;
pub mod sms;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod whatsapp;
