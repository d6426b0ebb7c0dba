//! What a failed WhatsApp send means beyond its own verification.
//!
//! - The number is not on WhatsApp (131026): it goes straight to SMS for
//!   `WAVERIFY_NOT_ON_WHATSAPP_MEMORY`, instead of paying for a WhatsApp
//!   attempt that cannot land.
//! - The business account itself is in trouble (blocked, locked, unpaid,
//!   spam-limited, token expired, template paused or disabled): WhatsApp is
//!   switched off for everyone for `WAVERIFY_BREAKER_COOLDOWN`; `auto`
//!   verifications go by SMS meanwhile, and `/healthz` shows it. After the
//!   cool-down the next send tries WhatsApp again, and a new failure
//!   switches it off again.
//! - An `auto` verification whose WhatsApp send failed falls back to SMS
//!   at once, whatever the error class. Pair-rate and throughput limits
//!   too, unless `WAVERIFY_ON_WHATSAPP_LIMIT=wait`: then it falls back at
//!   its deadline, if nothing was delivered by then. Transient errors got
//!   their one retry in the outbox before they count as failures.

use crate::clock::UnixTime;
use crate::domain::VerificationId;
use crate::settings::FallbackSettings;
use crate::store::{Store, StoreError};
use crate::whatsapp::ErrorClass;

const NOT_ON_WHATSAPP: i64 = 131026;

pub async fn whatsapp_failed(
    store: &Store,
    settings: &FallbackSettings,
    verification: &VerificationId,
    number_key: &str,
    code: Option<i64>,
    now: UnixTime,
) -> Result<(), StoreError> {
    if code == Some(NOT_ON_WHATSAPP) && settings.not_on_whatsapp_memory > 0 {
        store
            .remember_not_on_whatsapp(number_key, now + settings.not_on_whatsapp_memory, now)
            .await?;
    }
    let class = code.map(ErrorClass::of);
    if let Some((code, class)) = code.zip(class) {
        if matches!(class, ErrorClass::SenderBlocked | ErrorClass::TemplateDisabled) {
            let until = now + settings.breaker_cooldown;
            if store.switch_whatsapp_off(until, now).await? {
                tracing::error!(
                    code,
                    class = class.as_str(),
                    seconds = settings.breaker_cooldown,
                    "whatsapp switched off: the business account cannot send; auto verifications go by SMS"
                );
            }
        }
    }
    let limited = matches!(class, Some(ErrorClass::PairRateLimit | ErrorClass::Throughput));
    if limited && settings.wait_on_limits {
        // The deadline filed at creation will look again.
        return Ok(());
    }
    store.schedule_fallback(verification, now).await
}
