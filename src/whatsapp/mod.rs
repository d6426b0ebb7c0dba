//! Everything that knows Meta's formats: the Graph API send, the webhook
//! body, its signature, and what Meta's error codes mean.

pub mod client;
pub mod errors;
pub mod payload;
pub mod signature;

pub use client::{GraphClient, SendError, Sent};
pub use errors::ErrorClass;
pub use signature::{SignatureError, WebhookVerifier};
