//! Sends happen after send-code has answered, in the background.
//!
//! send-code stores the verification with its send queued, flushes, answers
//! 201, and hands the send to this worker. So the answer is the same, in
//! shape and in time, whatever Meta will say about the number: whether a
//! number is on WhatsApp shows only later, in the delivery status.
//!
//! A queued send stays in the store's outbox until the Graph API's answer
//! is recorded; after a crash or restart, `Application::build` queues
//! everything still there again (a send may then go out twice, never
//! zero times).

use std::rc::Rc;
use std::sync::Arc;
use std::thread;

use tokio::sync::mpsc;

use crate::clock::SharedClock;
use crate::domain::{Keyring, SendOutcome, VerificationId, VerificationStatus};
use crate::settings::GraphSettings;
use crate::store::Store;
use crate::whatsapp::{GraphClient, SendError};

struct Job {
    id: VerificationId,
    index: usize,
}

/// Hands sends to the worker thread; dropping it stops the thread.
pub struct Outbox {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Outbox {
    pub fn start(
        store: Store,
        keys: Arc<Keyring>,
        clock: SharedClock,
        graph: GraphSettings,
    ) -> std::io::Result<Self> {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        thread::Builder::new().name("waverify-outbox".into()).spawn(move || {
            // awc's client is not `Send`: it lives on this thread's own
            // single-threaded runtime, and every send runs there.
            actix_web::rt::System::new().block_on(async move {
                let client = Rc::new(GraphClient::new(&graph));
                while let Some(job) = queue.recv().await {
                    let sender = Sender {
                        store: store.clone(),
                        keys: keys.clone(),
                        clock: clock.clone(),
                        client: client.clone(),
                    };
                    actix_web::rt::spawn(async move { sender.send(job).await });
                }
            });
        })?;
        Ok(Self { jobs })
    }

    pub fn enqueue(&self, id: VerificationId, index: usize) {
        // Fails only when the worker is gone, i.e. during shutdown; the
        // send stays in the store's outbox and goes out after a restart.
        let _ = self.jobs.send(Job { id, index });
    }
}

struct Sender {
    store: Store,
    keys: Arc<Keyring>,
    clock: SharedClock,
    client: Rc<GraphClient>,
}

impl Sender {
    async fn send(self, job: Job) {
        if let Err(error) = self.try_send(&job).await {
            tracing::error!(verification_id = %job.id, %error, "send not recorded; it stays queued");
        }
    }

    async fn try_send(&self, job: &Job) -> Result<(), crate::store::StoreError> {
        let Some(v) = self.store.get(&job.id)? else {
            return self.store.unqueue(&job.id, job.index);
        };
        let now = self.clock.now();
        let secret = v.secret.as_deref().and_then(|sealed| self.keys.open(&v.id, sealed));
        let (true, Some(secret)) = (v.status_at(now) == VerificationStatus::Pending, secret) else {
            // Over before it could be sent, or sealed under a key that was
            // since removed: nothing can be sent.
            tracing::info!(verification_id = %job.id, "queued send dropped: the verification is over");
            return self.store.unqueue(&job.id, job.index);
        };
        let result = self.client.send_code(&secret.to, &secret.code, &v.id).await;
        let outcome = match result {
            Ok(sent) => {
                if sent.message_status.as_deref().is_some_and(|s| s != "accepted") {
                    tracing::warn!(
                        verification_id = %v.id,
                        message_status = sent.message_status.as_deref(),
                        "graph api holds the message"
                    );
                }
                SendOutcome::Accepted { message_id: sent.message_id }
            }
            Err(error) => {
                log_failure(&v.id, &error);
                SendOutcome::Failed {
                    error: error.to_delivery_error(),
                    definitive: error.is_definitive(),
                }
            }
        };
        self.store.record_send(&job.id, job.index, &outcome, self.clock.now())?;
        self.store.commit().await
    }
}

fn log_failure(id: &VerificationId, error: &SendError) {
    let class = error.class();
    let (code, http_status, fbtrace_id) = match error {
        SendError::Meta { code, http_status, fbtrace_id, .. } => {
            (Some(*code), Some(*http_status), fbtrace_id.as_deref())
        }
        SendError::BadAnswer { http_status, .. } => (None, Some(*http_status), None),
        SendError::Timeout(_) | SendError::Unreachable(_) => (None, None, None),
    };
    if class.needs_operator() {
        tracing::error!(verification_id = %id, class = class.as_str(), code, http_status, fbtrace_id, reason = %error, "send refused: check the configuration");
    } else {
        tracing::warn!(verification_id = %id, class = class.as_str(), code, http_status, fbtrace_id, reason = %error, "send failed");
    }
}
