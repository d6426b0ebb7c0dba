//! Sends happen after send-code has answered, in the background.
//!
//! send-code stores the verification with its send queued, flushes, answers
//! 201, and hands the send to this worker. So the answer is the same, in
//! shape and in time, whatever Meta will say about the number: whether a
//! number is on WhatsApp shows only later, in the delivery status.
//!
//! A queued send stays in the store's outbox until the provider's answer is
//! recorded; after a crash or restart, this worker sends everything still
//! there again (a send may then go out twice, never zero times). On a
//! shared store, what an instance took and never answered is sent by
//! another once its lease is over. The same worker runs the fallback of `auto` verifications to
//! SMS when they are due.

use std::rc::Rc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::clock::SharedClock;
use crate::domain::{
    Channel, Code, DeliveryError, DeliveryStatus, Keyring, PhoneNumber, SendOutcome,
    VerificationId, VerificationStatus,
};
use crate::fallback;
use crate::settings::{FallbackSettings, GraphSettings, LimitSettings, SmsSettings};
use crate::sms::{SmsClient, SmsError};
use crate::store::{send_hits, Store, StoreError};
use crate::transport::Transport;
use crate::whatsapp::{ErrorClass, GraphClient, SendError};

/// Wait before the one retry of a transient failure.
const RETRY_AFTER: Duration = Duration::from_millis(500);

struct Job {
    id: VerificationId,
    index: usize,
}

/// Hands sends to the worker thread; dropping it stops the thread.
pub struct Outbox {
    jobs: mpsc::UnboundedSender<Job>,
}

/// What the worker needs besides its jobs.
pub struct OutboxConfig {
    pub graph: GraphSettings,
    pub sms: Option<SmsSettings>,
    pub fallback: FallbackSettings,
    /// A fallback SMS counts against the same limits as any send.
    pub limits: LimitSettings,
    /// How often due fallbacks are looked for.
    pub tick: Duration,
}

struct Worker {
    store: Store,
    keys: Arc<Keyring>,
    clock: SharedClock,
    graph: GraphClient,
    sms: Option<SmsClient>,
    fallback: FallbackSettings,
    limits: LimitSettings,
}

impl Outbox {
    pub fn start(
        store: Store,
        keys: Arc<Keyring>,
        clock: SharedClock,
        config: OutboxConfig,
    ) -> std::io::Result<Self> {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        thread::Builder::new().name("waverify-outbox".into()).spawn(move || {
            // awc's client is not `Send`: it lives on this thread's own
            // single-threaded runtime, and every send runs there.
            actix_web::rt::System::new().block_on(async move {
                let worker = Rc::new(Worker {
                    store,
                    keys,
                    clock,
                    graph: GraphClient::new(&config.graph),
                    sms: config.sms.as_ref().map(SmsClient::new),
                    fallback: config.fallback,
                    limits: config.limits,
                });
                let ticker = worker.clone();
                let tick = actix_web::rt::spawn(async move {
                    loop {
                        ticker.send_unclaimed().await;
                        actix_web::rt::time::sleep(config.tick).await;
                        ticker.run_due_fallbacks().await;
                    }
                });
                // Ends when the `Outbox` is dropped, with the application.
                while let Some(job) = queue.recv().await {
                    let worker = worker.clone();
                    actix_web::rt::spawn(async move { worker.send(job).await });
                }
                tick.abort();
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

/// A send's failure, whichever provider it came from.
enum Failed {
    WhatsApp(SendError),
    Sms(SmsError),
    Unavailable(&'static str),
}

impl Failed {
    /// Worth the one retry: a failure that certainly sent nothing and may
    /// pass. After a timeout or a garbled answer the provider may have
    /// taken the message, and a retry could deliver the code twice.
    fn transient(&self) -> bool {
        match self {
            Self::WhatsApp(SendError::Meta { code, .. }) => {
                ErrorClass::of(*code) == ErrorClass::Transient
            }
            Self::WhatsApp(SendError::Transport(t)) => matches!(t, Transport::Unreachable(_)),
            Self::Sms(e) => e.is_transient(),
            Self::Unavailable(_) => false,
        }
    }

    fn outcome(&self) -> SendOutcome {
        match self {
            Self::WhatsApp(e) => {
                SendOutcome::Failed { error: e.to_delivery_error(), definitive: e.is_definitive() }
            }
            Self::Sms(e) => {
                SendOutcome::Failed { error: e.to_delivery_error(), definitive: e.is_definitive() }
            }
            Self::Unavailable(why) => SendOutcome::Failed {
                error: DeliveryError { code: None, title: (*why).into(), details: None },
                definitive: true,
            },
        }
    }
}

impl Worker {
    async fn send(&self, job: Job) {
        if let Err(error) = self.try_send(&job).await {
            tracing::error!(verification_id = %job.id, %error, "send not recorded; it stays queued");
        }
    }

    async fn try_send(&self, job: &Job) -> Result<(), StoreError> {
        let Some(v) = self.store.get(&job.id).await? else {
            return self.store.unqueue(&job.id, job.index).await;
        };
        let now = self.clock.now();
        if v.sends.get(job.index).is_some_and(|a| a.delivery.status != DeliveryStatus::Queued) {
            // Answered already: its instance stopped after recording the
            // answer and before taking the send off the queue.
            return self.store.unqueue(&job.id, job.index).await;
        }
        let channel = v.sends.get(job.index).map(|a| a.channel);
        let secret = v.secret.as_deref().and_then(|sealed| self.keys.open(&v.id, sealed));
        let pending = v.status_at(now) == VerificationStatus::Pending;
        let (true, Some(channel), Some(secret)) = (pending, channel, secret) else {
            // Over before it could be sent, or sealed under a key that was
            // since removed: nothing can be sent.
            tracing::info!(verification_id = %job.id, "queued send dropped: the verification is over");
            return self.store.unqueue(&job.id, job.index).await;
        };
        let Some(code) = secret.code(channel) else {
            return self.store.unqueue(&job.id, job.index).await;
        };
        let mut result = self.deliver(channel, &secret.to, code, &v.id).await;
        if result.as_ref().is_err_and(Failed::transient) {
            actix_web::rt::time::sleep(RETRY_AFTER).await;
            result = self.deliver(channel, &secret.to, code, &v.id).await;
        }
        let outcome = match &result {
            Ok(message_id) => SendOutcome::Accepted { message_id: message_id.clone() },
            Err(failed) => {
                log_failure(&v.id, channel, failed);
                failed.outcome()
            }
        };
        let now = self.clock.now();
        self.store.record_send(&job.id, job.index, &outcome, now).await?;
        if let (Err(failed), Channel::Whatsapp) = (&result, channel) {
            let code = match failed {
                Failed::WhatsApp(SendError::Meta { code, .. }) => Some(*code),
                _ => None,
            };
            fallback::whatsapp_failed(&self.store, &self.fallback, &v.id, &v.number_key, code, now)
                .await?;
        }
        self.store.commit().await
    }

    async fn deliver(
        &self,
        channel: Channel,
        to: &PhoneNumber,
        code: &Code,
        id: &VerificationId,
    ) -> Result<String, Failed> {
        match channel {
            Channel::Whatsapp => {
                if self.store.whatsapp_off_until(self.clock.now()).await.ok().flatten().is_some() {
                    return Err(Failed::Unavailable("WhatsApp is switched off"));
                }
                let sent = self.graph.send_code(to, code, id).await.map_err(Failed::WhatsApp)?;
                if sent.message_status.as_deref().is_some_and(|s| s != "accepted") {
                    tracing::warn!(
                        verification_id = %id,
                        message_status = sent.message_status.as_deref(),
                        "graph api holds the message"
                    );
                }
                Ok(sent.message_id)
            }
            Channel::Sms => match &self.sms {
                Some(sms) => sms.send_code(to, code, id).await.map_err(Failed::Sms),
                None => Err(Failed::Unavailable("SMS is not configured")),
            },
        }
    }

    /// Sends what is queued in the store and held by no sender: after a
    /// restart, what was queued before it; with several instances on one
    /// store, what an instance that went away had taken.
    async fn send_unclaimed(self: &Rc<Self>) {
        let queued = match self.store.claim_queued().await {
            Ok(queued) => queued,
            Err(error) => {
                tracing::warn!(%error, "queued sends not read; retrying at the next tick");
                return;
            }
        };
        if !queued.is_empty() {
            tracing::info!(sends = queued.len(), "sending what was queued and not sent");
        }
        for (id, index) in queued {
            let worker = self.clone();
            actix_web::rt::spawn(async move { worker.send(Job { id, index }).await });
        }
    }

    async fn run_due_fallbacks(self: &Rc<Self>) {
        if let Err(error) = self.try_due_fallbacks().await {
            tracing::warn!(%error, "fallbacks not run; retrying at the next tick");
        }
    }

    async fn try_due_fallbacks(self: &Rc<Self>) -> Result<(), StoreError> {
        let now = self.clock.now();
        let due = self.store.due_fallbacks(now).await?;
        if due.is_empty() {
            return Ok(());
        }
        let off = self.store.whatsapp_off_until(now).await?.is_some();
        let mut queued = Vec::new();
        for id in due {
            let due_now = self.store.get(&id).await?.filter(|v| v.fallback_due(now, off));
            let Some(v) = due_now else {
                self.store.fallback_done(&id).await?;
                continue;
            };
            // An SMS costs like any send: the number's limits and the
            // daily budget hold for fallbacks too.
            if let Err(refused) =
                self.store.count(&send_hits(&self.limits, &v.number_key), now).await?
            {
                tracing::warn!(
                    verification_id = %v.id,
                    limit = ?refused.counter,
                    "no fallback to sms: a send limit is reached"
                );
                self.store.fallback_done(&id).await?;
                continue;
            }
            if let Some((v, index)) = self.store.fall_back(&id, now, off).await? {
                tracing::info!(verification_id = %v.id, "whatsapp did not deliver: falling back to sms");
                queued.push(Job { id: id.clone(), index });
            }
            self.store.fallback_done(&id).await?;
        }
        self.store.commit().await?;
        for job in queued {
            let worker = self.clone();
            actix_web::rt::spawn(async move { worker.send(job).await });
        }
        Ok(())
    }
}

fn log_failure(id: &VerificationId, channel: Channel, failed: &Failed) {
    match failed {
        Failed::WhatsApp(error) => {
            let class = error.class();
            let (code, http_status, fbtrace_id) = match error {
                SendError::Meta { code, http_status, fbtrace_id, .. } => {
                    (Some(*code), Some(*http_status), fbtrace_id.as_deref())
                }
                SendError::Transport(Transport::BadAnswer { http_status, .. }) => {
                    (None, Some(*http_status), None)
                }
                SendError::Transport(_) => (None, None, None),
            };
            if class.needs_operator() {
                tracing::error!(verification_id = %id, class = class.as_str(), code, http_status, fbtrace_id, reason = %error, "whatsapp send refused: check the configuration");
            } else {
                tracing::warn!(verification_id = %id, class = class.as_str(), code, http_status, fbtrace_id, reason = %error, "whatsapp send failed");
            }
        }
        Failed::Sms(error) => {
            tracing::warn!(verification_id = %id, reason = %error, "sms send failed");
        }
        Failed::Unavailable(why) => {
            tracing::warn!(verification_id = %id, ?channel, reason = why, "send not attempted");
        }
    }
}
