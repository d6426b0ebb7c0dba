//! What can go wrong between waverify and a provider's HTTP API before the
//! provider says anything: shared by the Graph API and SMS clients.

use std::future::Future;
use std::time::Duration;

use actix_web::web::Bytes;
use awc::error::SendRequestError;

use crate::domain::DeliveryError;

/// Largest answer read from a provider; real ones are a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Transport {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("could not be reached: {0}")]
    Unreachable(String),
    #[error("unexpected answer (http {http_status}): {reason}")]
    BadAnswer { http_status: u16, reason: String },
}

impl Transport {
    /// Only a refused connection says for certain that nothing was taken;
    /// after a timeout or a garbled answer the provider may have taken the
    /// message and may still deliver it.
    pub fn is_definitive(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }

    /// How the failure shows in a delivery, for the provider `name`.
    pub fn to_delivery_error(&self, name: &str) -> DeliveryError {
        let (title, details) = match self {
            Self::Timeout(d) => {
                (format!("{name} timeout"), format!("no answer within {} s", d.as_secs()))
            }
            Self::Unreachable(_) => {
                (format!("{name} unreachable"), format!("the connection to the {name} failed"))
            }
            Self::BadAnswer { http_status, .. } => (
                format!("Unexpected {name} answer"),
                format!("HTTP {http_status} without a {name} body"),
            ),
        };
        DeliveryError { code: None, title, details: Some(details) }
    }
}

/// A client with `timeout` for connecting and for each request, and no
/// redirects: a provider's API never redirects a send.
pub fn client(timeout: Duration) -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().timeout(timeout))
        .timeout(timeout)
        .disable_redirects()
        .finish()
}

/// Sends a request and reads the whole answer, all within `timeout` (not
/// only the wait for the response head).
pub async fn exchange<F>(send: F, timeout: Duration) -> Result<(u16, Bytes), Transport>
where
    F: Future<Output = Result<awc::ClientResponse, SendRequestError>>,
{
    let exchange = async {
        let mut response = send.await.map_err(|e| match e {
            SendRequestError::Timeout => Transport::Timeout(timeout),
            SendRequestError::Connect(e) => Transport::Unreachable(e.to_string()),
            other => Transport::BadAnswer { http_status: 0, reason: other.to_string() },
        })?;
        let http_status = response.status().as_u16();
        let bytes = response
            .body()
            .limit(MAX_ANSWER_BYTES)
            .await
            .map_err(|e| Transport::BadAnswer { http_status, reason: format!("body: {e}") })?;
        Ok((http_status, bytes))
    };
    tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(Transport::Timeout(timeout)))
}
