//! Typed configuration, read once from the environment (and a few flags)
//! and checked before anything starts.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A secret value. `Debug` and `Display` never show it; `expose` is called
/// only at the line that uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A local stand-in of the Graph API answers, and sends signed status
    /// webhooks back; nothing leaves the machine.
    Sandbox,
    /// Messages go to the configured Graph API.
    Live,
}

#[derive(Debug, Clone)]
pub struct GraphSettings {
    /// Scheme and host, no trailing slash. In sandbox mode this is replaced
    /// by the stand-in's address once the listener is bound.
    pub base_url: String,
    pub version: String,
    pub phone_number_id: String,
    pub access_token: Secret,
    pub template: String,
    pub template_lang: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub bind: SocketAddr,
    pub data_dir: PathBuf,
    /// Where state lives: sled in `data_dir`, or a shared Redis.
    pub store: StoreSettings,
    pub api_key: Secret,
    pub code_key: Secret,
    pub code_key_previous: Option<Secret>,
    pub code_ttl: Duration,
    pub max_attempts: u32,
    pub graph: GraphSettings,
    pub verify_token: Secret,
    pub app_secret: Secret,
    pub app_secret_previous: Option<Secret>,
    pub limits: LimitSettings,
    /// The SMS provider; `None` when none is configured (live mode only).
    pub sms: Option<SmsSettings>,
    pub fallback: FallbackSettings,
    /// Seconds a verification is kept after it expires, then deleted.
    pub retention: Duration,
    /// Time a client has to send a request's headers, and then its body.
    pub request_timeout: Duration,
    pub log_filter: String,
    /// Variables that were unset and got a development value (sandbox only).
    pub development_defaults: Vec<&'static str>,
}

/// The store every piece of state goes to.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// sled, embedded, in the data directory: one process on one machine.
    Sled,
    /// Redis (or Valkey), shared by every instance that names it.
    Redis {
        /// `redis://` or `rediss://`, possibly with a password: a secret.
        url: Secret,
        /// Starts every key, so that several deployments can share one
        /// server.
        prefix: String,
    },
}

impl StoreSettings {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sled => "sled",
            Self::Redis { .. } => "redis",
        }
    }
}

/// Twilio's Messages API.
#[derive(Debug, Clone)]
pub struct SmsSettings {
    /// Scheme and host, no trailing slash. In sandbox mode this is replaced
    /// by the stand-in's address once the listener is bound.
    pub base_url: String,
    pub account_sid: String,
    pub auth_token: Secret,
    pub from: String,
    /// The address the provider and Meta reach waverify at; `None` in
    /// sandbox mode until the listener is bound.
    pub public_url: Option<String>,
    pub timeout: Duration,
}

impl SmsSettings {
    /// Where the provider posts delivery statuses, and the URL its
    /// signatures are computed over.
    pub fn callback_url(&self) -> String {
        format!("{}/webhook/sms", self.public_url.as_deref().unwrap_or(""))
    }
}

/// When `auto` verifications leave WhatsApp for SMS.
#[derive(Debug, Clone, Copy)]
pub struct FallbackSettings {
    /// Seconds WhatsApp has to report `delivered`.
    pub after: i64,
    /// Seconds a number that is not on WhatsApp goes straight to SMS.
    pub not_on_whatsapp_memory: i64,
    /// Seconds WhatsApp stays off for everyone once the business account
    /// is in trouble.
    pub breaker_cooldown: i64,
    /// On a pair-rate or throughput limit, wait for the deadline (and a
    /// late delivery) rather than fall back at once.
    pub wait_on_limits: bool,
}

/// Limits against toll fraud and guessing. Every one is configurable.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Seconds between two sends of one verification's code.
    pub resend_cooldown: i64,
    /// Sends of one verification's code, the first included.
    pub max_sends: usize,
    pub number_sends_per_hour: u64,
    pub number_sends_per_day: u64,
    pub number_failed_checks_per_hour: u64,
    /// Per API key and per client address, for send-code and check-code.
    pub client_requests_per_minute: u64,
    /// ISO 3166 alpha-2 codes; empty means every country.
    pub allowed_countries: Vec<String>,
    pub daily_send_budget: u64,
    /// Header whose last entry is the client's address, set by a proxy
    /// waverify sits behind; `None` uses the peer address.
    pub trusted_proxy_header: Option<String>,
}

/// A variable that is missing or malformed. The message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

fn invalid(variable: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError { variable, reason: reason.into() }
}

/// Development values used in sandbox mode for secrets left unset. They are
/// public (the README prints them), which is harmless: in sandbox mode no
/// message leaves the machine.
pub mod sandbox_defaults {
    pub const API_KEY: &str = "sandbox-api-key";
    pub const CODE_KEY: &str = "sandbox-code-key-do-not-use-in-production";
    pub const VERIFY_TOKEN: &str = "sandbox-verify-token";
    pub const APP_SECRET: &str = "sandbox-app-secret";
    pub const ACCESS_TOKEN: &str = "sandbox-access-token";
    pub const PHONE_NUMBER_ID: &str = "100000000000001";
    pub const TEMPLATE: &str = "waverify_code";
    pub const TWILIO_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
    pub const TWILIO_AUTH_TOKEN: &str = "sandbox-twilio-auth-token";
    pub const SMS_FROM: &str = "+15550000000";
}

pub const DEFAULT_SMS_URL: &str = "https://api.twilio.com";

pub const DEFAULT_GRAPH_URL: &str = "https://graph.facebook.com";
pub const DEFAULT_GRAPH_VERSION: &str = "v23.0";

/// Every variable waverify reads, with what it means; printed by `--help`.
pub const VARIABLES: &[(&str, &str)] = &[
    ("WAVERIFY_BIND", "address to listen on (default 127.0.0.1:8080; flag --bind)"),
    ("WAVERIFY_DATA_DIR", "directory of the embedded store (default ./data; flag --data-dir)"),
    (
        "WAVERIFY_STORE",
        "sled (default), redis://host:port/db or rediss://..., or several such URLs separated \
         by commas (a Redis Cluster): a shared store",
    ),
    ("WAVERIFY_STORE_PREFIX", "first part of every Redis key (default waverify)"),
    ("WAVERIFY_API_KEY", "bearer key login backends use on /v1 (at least 24 characters)"),
    ("WAVERIFY_CODE_KEY", "key of the HMAC under which codes are stored (at least 32 characters)"),
    ("WAVERIFY_CODE_KEY_PREVIOUS", "previous code key, still accepted while rotating"),
    ("WAVERIFY_CODE_TTL", "seconds a code stays valid (default 600, 30 to 3600)"),
    ("WAVERIFY_MAX_ATTEMPTS", "wrong checks before a verification dies (default 5, 1 to 20)"),
    ("WAVERIFY_ACCESS_TOKEN", "Meta system-user access token; unset means sandbox mode"),
    ("WAVERIFY_GRAPH_URL", "Graph API base URL (default https://graph.facebook.com)"),
    ("WAVERIFY_GRAPH_VERSION", "Graph API version (default v23.0)"),
    ("WAVERIFY_GRAPH_TIMEOUT", "seconds to wait for the Graph API (default 10, 1 to 60)"),
    ("WAVERIFY_PHONE_NUMBER_ID", "the WhatsApp business phone number id that sends codes"),
    ("WAVERIFY_TEMPLATE", "name of the approved authentication template"),
    ("WAVERIFY_TEMPLATE_LANG", "language code of that template (default en_US)"),
    ("WAVERIFY_VERIFY_TOKEN", "token Meta echoes in the webhook verification handshake"),
    ("WAVERIFY_APP_SECRET", "Meta app secret; signs every webhook POST"),
    ("WAVERIFY_APP_SECRET_PREVIOUS", "previous app secret, still accepted while rotating"),
    ("WAVERIFY_RESEND_COOLDOWN", "seconds between two sends of one code (default 60, 6 to 3600)"),
    ("WAVERIFY_MAX_SENDS", "sends of one verification's code (default 5, 1 to 10)"),
    (
        "WAVERIFY_NUMBER_SENDS_PER_HOUR",
        "sends to one number per hour (default 10, at most the daily value)",
    ),
    ("WAVERIFY_NUMBER_SENDS_PER_DAY", "sends to one number per day (default 50, 1 to 100000)"),
    ("WAVERIFY_NUMBER_FAILED_CHECKS_PER_HOUR", "wrong codes for one number per hour (default 100)"),
    (
        "WAVERIFY_CLIENT_REQUESTS_PER_MINUTE",
        "send/check calls per address a minute; the API key gets ten times (default 600)",
    ),
    (
        "WAVERIFY_ALLOWED_COUNTRIES",
        "comma-separated ISO codes numbers may belong to (default: all)",
    ),
    ("WAVERIFY_DAILY_SEND_BUDGET", "sends per UTC day across all numbers (default 10000)"),
    (
        "WAVERIFY_TRUSTED_PROXY_HEADER",
        "header a trusted proxy puts the client address in (e.g. X-Forwarded-For)",
    ),
    ("WAVERIFY_SMS_URL", "SMS provider API base URL (default https://api.twilio.com)"),
    (
        "WAVERIFY_PUBLIC_URL",
        "the URL Meta and the SMS provider reach waverify at (for SMS status callbacks)",
    ),
    ("WAVERIFY_TWILIO_ACCOUNT_SID", "Twilio account SID; set it to enable SMS in live mode"),
    ("WAVERIFY_TWILIO_AUTH_TOKEN", "Twilio auth token (API auth and callback signatures)"),
    ("WAVERIFY_SMS_FROM", "the number (or MG... messaging service SID) SMS are sent from"),
    (
        "WAVERIFY_FALLBACK_AFTER",
        "seconds WhatsApp has to deliver before auto falls back to SMS (default 30, 5 to 600)",
    ),
    (
        "WAVERIFY_NOT_ON_WHATSAPP_MEMORY",
        "seconds a number not on WhatsApp goes straight to SMS (default 604800)",
    ),
    (
        "WAVERIFY_BREAKER_COOLDOWN",
        "seconds WhatsApp stays off after the account is blocked (default 300)",
    ),
    (
        "WAVERIFY_ON_WHATSAPP_LIMIT",
        "fallback (default) or wait: what auto does on a pair-rate or throughput limit",
    ),
    (
        "WAVERIFY_RETENTION",
        "seconds a verification is kept after it expires (default 86400, 60 to 2592000)",
    ),
    (
        "WAVERIFY_REQUEST_TIMEOUT",
        "seconds a client has for its headers, then its body (default 10, 1 to 120)",
    ),
    ("WAVERIFY_LOG", "log filter in tracing-subscriber syntax (default info,actix_http::h1=off)"),
];

/// Flags override the variables of the same meaning.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags {
    pub bind: Option<String>,
    pub data_dir: Option<String>,
    pub help: bool,
}

impl Flags {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut flags = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match name.as_str() {
                "--bind" => flags.bind = Some(value("--bind")?),
                "--data-dir" => flags.data_dir = Some(value("--data-dir")?),
                "-h" | "--help" => flags.help = true,
                other => return Err(format!("unknown argument {other:?}; try --help")),
            }
        }
        Ok(flags)
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env(flags: &Flags) -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_vars(&vars, flags)
    }

    /// Reads settings from `vars`; an empty value counts as unset.
    pub fn from_vars(vars: &HashMap<String, String>, flags: &Flags) -> Result<Self, ConfigError> {
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let mode = if get("WAVERIFY_ACCESS_TOKEN").is_some() { Mode::Live } else { Mode::Sandbox };
        let mut defaults = Vec::new();
        let mut secret = |name: &'static str, dev: &str, min_len: usize| match get(name) {
            Some(v) if v.len() < min_len => {
                Err(invalid(name, format!("must be at least {min_len} characters long")))
            }
            Some(v) if mode == Mode::Live && v == dev => Err(invalid(
                name,
                "is the public sandbox development value; choose a secret of your own",
            )),
            Some(v) => Ok(Secret::new(v)),
            None if mode == Mode::Sandbox => {
                defaults.push(name);
                Ok(Secret::new(dev))
            }
            None => Err(invalid(name, "must be set when WAVERIFY_ACCESS_TOKEN is set")),
        };
        use sandbox_defaults as dev;
        let api_key = secret("WAVERIFY_API_KEY", dev::API_KEY, 24)?;
        let code_key = secret("WAVERIFY_CODE_KEY", dev::CODE_KEY, 32)?;
        let verify_token = secret("WAVERIFY_VERIFY_TOKEN", dev::VERIFY_TOKEN, 8)?;
        let app_secret = secret("WAVERIFY_APP_SECRET", dev::APP_SECRET, 8)?;
        let access_token = secret("WAVERIFY_ACCESS_TOKEN", dev::ACCESS_TOKEN, 1)?;
        let phone_number_id = plain(mode, get("WAVERIFY_PHONE_NUMBER_ID"), dev::PHONE_NUMBER_ID)
            .ok_or_else(|| invalid("WAVERIFY_PHONE_NUMBER_ID", "must be set in live mode"))?;
        let template = plain(mode, get("WAVERIFY_TEMPLATE"), dev::TEMPLATE)
            .ok_or_else(|| invalid("WAVERIFY_TEMPLATE", "must be set in live mode"))?;

        let previous = |name: &'static str, min_len: usize| match get(name) {
            Some(v) if v.len() < min_len => {
                Err(invalid(name, format!("must be at least {min_len} characters long")))
            }
            other => Ok(other.map(Secret::new)),
        };

        let bind_raw = flags.bind.as_deref().or(get("WAVERIFY_BIND")).unwrap_or("127.0.0.1:8080");
        let bind = bind_raw.parse().map_err(|_| {
            invalid("WAVERIFY_BIND", format!("{bind_raw:?} is not an address like 127.0.0.1:8080"))
        })?;
        let data_dir = flags.data_dir.as_deref().or(get("WAVERIFY_DATA_DIR")).unwrap_or("./data");
        let store = store_settings(get("WAVERIFY_STORE"), get("WAVERIFY_STORE_PREFIX"))?;

        let graph_timeout = seconds(get, "WAVERIFY_GRAPH_TIMEOUT", 10, 1..=60)?;
        let graph = GraphSettings {
            base_url: graph_url(get("WAVERIFY_GRAPH_URL").unwrap_or(DEFAULT_GRAPH_URL))?,
            version: checked(
                "WAVERIFY_GRAPH_VERSION",
                get("WAVERIFY_GRAPH_VERSION").unwrap_or(DEFAULT_GRAPH_VERSION),
                is_graph_version,
                "must look like v23.0",
            )?,
            phone_number_id: checked(
                "WAVERIFY_PHONE_NUMBER_ID",
                &phone_number_id,
                |v| v.bytes().all(|b| b.is_ascii_digit()) && v.len() <= 32,
                "must be the numeric id Meta shows for the business phone number",
            )?,
            access_token,
            template: checked(
                "WAVERIFY_TEMPLATE",
                &template,
                |v| {
                    v.len() <= 512
                        && v.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                },
                "must be a template name: lowercase letters, digits and underscores",
            )?,
            template_lang: checked(
                "WAVERIFY_TEMPLATE_LANG",
                get("WAVERIFY_TEMPLATE_LANG").unwrap_or("en_US"),
                |v| {
                    (2..=16).contains(&v.len())
                        && v.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
                },
                "must be a language code such as en_US or pt_BR",
            )?,
            timeout: graph_timeout,
        };

        Self {
            mode,
            bind,
            data_dir: PathBuf::from(data_dir),
            store,
            api_key,
            code_key,
            code_key_previous: previous("WAVERIFY_CODE_KEY_PREVIOUS", 32)?,
            code_ttl: seconds(get, "WAVERIFY_CODE_TTL", 600, 30..=3600)?,
            max_attempts: number(get, "WAVERIFY_MAX_ATTEMPTS", 5, 1..=20)? as u32,
            graph,
            verify_token,
            app_secret,
            app_secret_previous: previous("WAVERIFY_APP_SECRET_PREVIOUS", 8)?,
            limits: LimitSettings {
                resend_cooldown: number(get, "WAVERIFY_RESEND_COOLDOWN", 60, 6..=3600)? as i64,
                max_sends: number(get, "WAVERIFY_MAX_SENDS", 5, 1..=10)? as usize,
                number_sends_per_hour: number(
                    get,
                    "WAVERIFY_NUMBER_SENDS_PER_HOUR",
                    10,
                    1..=10_000,
                )?,
                number_sends_per_day: number(
                    get,
                    "WAVERIFY_NUMBER_SENDS_PER_DAY",
                    50,
                    1..=100_000,
                )?,
                number_failed_checks_per_hour: number(
                    get,
                    "WAVERIFY_NUMBER_FAILED_CHECKS_PER_HOUR",
                    100,
                    1..=10_000,
                )?,
                client_requests_per_minute: number(
                    get,
                    "WAVERIFY_CLIENT_REQUESTS_PER_MINUTE",
                    600,
                    1..=10_000_000,
                )?,
                allowed_countries: countries(get("WAVERIFY_ALLOWED_COUNTRIES"))?,
                daily_send_budget: number(
                    get,
                    "WAVERIFY_DAILY_SEND_BUDGET",
                    10_000,
                    1..=100_000_000,
                )?,
                trusted_proxy_header: get("WAVERIFY_TRUSTED_PROXY_HEADER")
                    .map(|h| {
                        actix_web::http::header::HeaderName::from_bytes(h.as_bytes())
                            .map(|name| name.as_str().to_owned())
                            .map_err(|_| {
                                invalid(
                                    "WAVERIFY_TRUSTED_PROXY_HEADER",
                                    format!("{h:?} is not a header name"),
                                )
                            })
                    })
                    .transpose()?,
            },
            sms: sms_settings(mode, &get, graph_timeout)?,
            fallback: FallbackSettings {
                after: number(get, "WAVERIFY_FALLBACK_AFTER", 30, 5..=600)? as i64,
                not_on_whatsapp_memory: number(
                    get,
                    "WAVERIFY_NOT_ON_WHATSAPP_MEMORY",
                    7 * 86_400,
                    0..=90 * 86_400,
                )? as i64,
                breaker_cooldown: number(get, "WAVERIFY_BREAKER_COOLDOWN", 300, 10..=86_400)?
                    as i64,
                wait_on_limits: match get("WAVERIFY_ON_WHATSAPP_LIMIT").unwrap_or("fallback") {
                    "fallback" => false,
                    "wait" => true,
                    other => {
                        return Err(invalid(
                            "WAVERIFY_ON_WHATSAPP_LIMIT",
                            format!("must be fallback or wait, got {other:?}"),
                        ))
                    }
                },
            },
            retention: seconds(get, "WAVERIFY_RETENTION", 86_400, 60..=30 * 86_400)?,
            request_timeout: seconds(get, "WAVERIFY_REQUEST_TIMEOUT", 10, 1..=120)?,
            log_filter: log_filter(get("WAVERIFY_LOG"))?,
            development_defaults: {
                // The SMS stand-in's token and sender are public values too.
                let sms_defaults = ["WAVERIFY_TWILIO_AUTH_TOKEN", "WAVERIFY_SMS_FROM"];
                let sandbox_sms =
                    mode == Mode::Sandbox && get("WAVERIFY_TWILIO_ACCOUNT_SID").is_none();
                defaults
                    .extend(sms_defaults.into_iter().filter(|n| sandbox_sms && get(n).is_none()));
                defaults
            },
        }
        .checked()
    }

    /// Checks that hold between variables.
    fn checked(self) -> Result<Self, ConfigError> {
        let l = &self.limits;
        if l.number_sends_per_hour > l.number_sends_per_day {
            return Err(invalid(
                "WAVERIFY_NUMBER_SENDS_PER_HOUR",
                "must not exceed WAVERIFY_NUMBER_SENDS_PER_DAY",
            ));
        }
        if self.code_key_previous.as_ref() == Some(&self.code_key) {
            return Err(invalid(
                "WAVERIFY_CODE_KEY_PREVIOUS",
                "must differ from WAVERIFY_CODE_KEY",
            ));
        }
        if self.app_secret_previous.as_ref() == Some(&self.app_secret) {
            return Err(invalid(
                "WAVERIFY_APP_SECRET_PREVIOUS",
                "must differ from WAVERIFY_APP_SECRET",
            ));
        }
        if self.mode == Mode::Live && !secure_or_local(&self.graph.base_url) {
            return Err(invalid(
                "WAVERIFY_GRAPH_URL",
                "must use https:// in live mode (http:// only to this machine): the access token travels with every send",
            ));
        }
        if let Some(sms) = self.sms.as_ref().filter(|_| self.mode == Mode::Live) {
            if sms.auth_token.expose() == sandbox_defaults::TWILIO_AUTH_TOKEN {
                return Err(invalid(
                    "WAVERIFY_TWILIO_AUTH_TOKEN",
                    "is the public sandbox development value; use your account's token",
                ));
            }
            if !secure_or_local(&sms.base_url) {
                return Err(invalid(
                    "WAVERIFY_SMS_URL",
                    "must use https:// in live mode (http:// only to this machine)",
                ));
            }
        }
        Ok(self)
    }
}

/// Whether a base URL is https, or http to this machine only.
fn secure_or_local(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let host = url.trim_start_matches("http://");
    ["127.0.0.1", "localhost", "[::1]"].iter().any(|local| {
        host == *local
            || host.starts_with(&format!("{local}:"))
            || host.starts_with(&format!("{local}/"))
    })
}

/// The default keeps the HTTP layer's reports of malformed requests from
/// clients (logged as errors there) out of the log: anyone could flood it.
const DEFAULT_LOG: &str = "info,actix_http::h1=off";

fn log_filter(raw: Option<&str>) -> Result<String, ConfigError> {
    let filter = raw.unwrap_or(DEFAULT_LOG);
    tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| {
        invalid("WAVERIFY_LOG", format!("is not a tracing-subscriber filter ({e}), got {filter:?}"))
    })?;
    Ok(filter.to_owned())
}

fn sms_settings<'a>(
    mode: Mode,
    get: &impl Fn(&str) -> Option<&'a str>,
    timeout: Duration,
) -> Result<Option<SmsSettings>, ConfigError> {
    use sandbox_defaults as dev;
    let public_url = get("WAVERIFY_PUBLIC_URL")
        .map(|raw| base_url("WAVERIFY_PUBLIC_URL", raw, "https://abc123.ngrok-free.app"))
        .transpose()?;
    let base = base_url(
        "WAVERIFY_SMS_URL",
        get("WAVERIFY_SMS_URL").unwrap_or(DEFAULT_SMS_URL),
        DEFAULT_SMS_URL,
    )?;
    if let Some(url) = &public_url {
        if url.contains('@') || url.ends_with("/webhook/sms") || url.ends_with("/webhook") {
            return Err(invalid(
                "WAVERIFY_PUBLIC_URL",
                "must be the base address only (https://host[:port]), without credentials or /webhook",
            ));
        }
        if mode == Mode::Live && !secure_or_local(url) {
            return Err(invalid("WAVERIFY_PUBLIC_URL", "must use https:// in live mode"));
        }
    }
    let Some(sid) = get("WAVERIFY_TWILIO_ACCOUNT_SID") else {
        if mode == Mode::Live {
            for name in ["WAVERIFY_TWILIO_AUTH_TOKEN", "WAVERIFY_SMS_FROM"] {
                if get(name).is_some() {
                    return Err(invalid(
                        "WAVERIFY_TWILIO_ACCOUNT_SID",
                        format!("must be set when {name} is: SMS needs all of them"),
                    ));
                }
            }
            return Ok(None);
        }
        // The sandbox's SMS stand-in takes the token and sender given, and
        // public development values for the rest.
        return Ok(Some(SmsSettings {
            base_url: String::new(),
            account_sid: dev::TWILIO_ACCOUNT_SID.into(),
            auth_token: Secret::new(
                get("WAVERIFY_TWILIO_AUTH_TOKEN").unwrap_or(dev::TWILIO_AUTH_TOKEN),
            ),
            from: get("WAVERIFY_SMS_FROM").unwrap_or(dev::SMS_FROM).into(),
            public_url: public_url.clone(),
            timeout,
        }));
    };
    let sid = checked(
        "WAVERIFY_TWILIO_ACCOUNT_SID",
        sid,
        |v| v.len() == 34 && v.starts_with("AC") && v[2..].bytes().all(|b| b.is_ascii_hexdigit()),
        "must be a Twilio account SID: AC and 32 hex digits",
    )?;
    let required = |name: &'static str| {
        get(name).ok_or_else(|| invalid(name, "must be set when WAVERIFY_TWILIO_ACCOUNT_SID is"))
    };
    let token = required("WAVERIFY_TWILIO_AUTH_TOKEN")?;
    if token.len() < 16 {
        return Err(invalid("WAVERIFY_TWILIO_AUTH_TOKEN", "must be at least 16 characters long"));
    }
    let from = checked(
        "WAVERIFY_SMS_FROM",
        required("WAVERIFY_SMS_FROM")?,
        |v| crate::domain::PhoneNumber::parse(v).is_ok() || (v.starts_with("MG") && v.len() == 34),
        "must be an E.164 number or a messaging service SID (MG...)",
    )?;
    if public_url.is_none() {
        return Err(invalid(
            "WAVERIFY_PUBLIC_URL",
            "must be set when WAVERIFY_TWILIO_ACCOUNT_SID is",
        ));
    }
    Ok(Some(SmsSettings {
        base_url: if mode == Mode::Sandbox { String::new() } else { base },
        account_sid: sid,
        auth_token: Secret::new(token),
        from,
        public_url,
        timeout,
    }))
}

fn base_url(variable: &'static str, raw: &str, example: &str) -> Result<String, ConfigError> {
    let url = raw.trim_end_matches('/');
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['?', '#', ' ']) => Ok(url.to_owned()),
        _ => Err(invalid(
            variable,
            format!("must be an http:// or https:// base URL such as {example}, got {raw:?}"),
        )),
    }
}

fn countries(raw: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    raw.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let code = c.to_ascii_uppercase();
            match code.parse::<phonenumber::country::Id>() {
                Ok(_) => Ok(code),
                Err(_) => Err(invalid(
                    "WAVERIFY_ALLOWED_COUNTRIES",
                    format!("{c:?} is not an ISO 3166 alpha-2 country code"),
                )),
            }
        })
        .collect()
}

fn plain(mode: Mode, value: Option<&str>, dev: &str) -> Option<String> {
    match (value, mode) {
        (Some(v), _) => Some(v.to_owned()),
        (None, Mode::Sandbox) => Some(dev.to_owned()),
        (None, Mode::Live) => None,
    }
}

fn store_settings(url: Option<&str>, prefix: Option<&str>) -> Result<StoreSettings, ConfigError> {
    let prefix = checked(
        "WAVERIFY_STORE_PREFIX",
        prefix.unwrap_or("waverify"),
        |v| {
            (1..=64).contains(&v.len())
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        },
        "must be 1 to 64 letters, digits, '_', '-' or '.'",
    )?;
    match url.map(str::trim) {
        None | Some("") | Some("sled") => Ok(StoreSettings::Sled),
        Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
            // Parsed the way the client will (a host is needed, the
            // database a number), without echoing a password. Several URLs,
            // separated by commas, are nodes of one Redis Cluster.
            for node in url.split(',').map(str::trim) {
                let scheme_ok = node.starts_with("redis://") || node.starts_with("rediss://");
                if !scheme_ok || redis::Client::open(node).is_err() {
                    return Err(invalid(
                        "WAVERIFY_STORE",
                        "is not a valid redis://host:port/db or rediss://host:port/db URL, \
                         or a comma-separated list of them (the nodes of a cluster)"
                            .to_owned(),
                    ));
                }
            }
            Ok(StoreSettings::Redis { url: Secret::new(url.to_owned()), prefix })
        }
        Some(_) => Err(invalid(
            "WAVERIFY_STORE",
            "must be sled, or a redis://host:port/db or rediss://host:port/db URL".to_owned(),
        )),
    }
}

fn checked(
    variable: &'static str,
    value: &str,
    ok: impl Fn(&str) -> bool,
    reason: &str,
) -> Result<String, ConfigError> {
    if ok(value) {
        Ok(value.to_owned())
    } else {
        Err(invalid(variable, format!("{reason}, got {value:?}")))
    }
}

fn is_graph_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else { return false };
    let mut parts = rest.split('.');
    let (Some(major), Some(minor), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    [major, minor]
        .iter()
        .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn graph_url(raw: &str) -> Result<String, ConfigError> {
    base_url("WAVERIFY_GRAPH_URL", raw, DEFAULT_GRAPH_URL)
}

fn number<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
    variable: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let Some(raw) = get(variable) else { return Ok(default) };
    match raw.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(invalid(
            variable,
            format!(
                "must be a whole number from {} to {}, got {raw:?}",
                range.start(),
                range.end()
            ),
        )),
    }
}

fn seconds<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
    variable: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    number(get, variable, default, range).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn live() -> Vec<(&'static str, &'static str)> {
        vec![
            ("WAVERIFY_ACCESS_TOKEN", "EAAG-token"),
            ("WAVERIFY_API_KEY", "an-api-key-of-24-characters"),
            ("WAVERIFY_CODE_KEY", "a-code-key-that-is-at-least-32-characters"),
            ("WAVERIFY_VERIFY_TOKEN", "verify-me-please"),
            ("WAVERIFY_APP_SECRET", "0123456789abcdef"),
            ("WAVERIFY_PHONE_NUMBER_ID", "106540352242922"),
            ("WAVERIFY_TEMPLATE", "login_code"),
        ]
    }

    #[test]
    fn empty_environment_is_sandbox_with_named_defaults() {
        let s = Settings::from_vars(&vars(&[]), &Flags::default()).unwrap();
        assert_eq!(s.mode, Mode::Sandbox);
        assert_eq!(s.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.code_ttl, Duration::from_secs(600));
        assert_eq!(s.max_attempts, 5);
        assert!(s.development_defaults.contains(&"WAVERIFY_API_KEY"));
    }

    #[test]
    fn live_mode_needs_every_secret() {
        let all = live();
        assert_eq!(Settings::from_vars(&vars(&all), &Flags::default()).unwrap().mode, Mode::Live);
        for skip in 1..all.len() {
            let mut some = all.clone();
            let (name, _) = some.remove(skip);
            let err = Settings::from_vars(&vars(&some), &Flags::default()).unwrap_err();
            assert_eq!(err.variable, name);
        }
    }

    #[test]
    fn malformed_values_name_their_variable() {
        let cases = [
            ("WAVERIFY_BIND", "localhost"),
            ("WAVERIFY_CODE_TTL", "ten"),
            ("WAVERIFY_CODE_TTL", "5"),
            ("WAVERIFY_MAX_ATTEMPTS", "0"),
            ("WAVERIFY_GRAPH_URL", "graph.facebook.com"),
            ("WAVERIFY_GRAPH_VERSION", "23"),
            ("WAVERIFY_GRAPH_TIMEOUT", "-1"),
            ("WAVERIFY_API_KEY", "short"),
            ("WAVERIFY_TEMPLATE_LANG", "en-US!"),
            ("WAVERIFY_RESEND_COOLDOWN", "5"),
            ("WAVERIFY_ALLOWED_COUNTRIES", "US,XX"),
            ("WAVERIFY_TRUSTED_PROXY_HEADER", "bad header"),
            ("WAVERIFY_DAILY_SEND_BUDGET", "0"),
            ("WAVERIFY_LOG", "garbage[["),
            ("WAVERIFY_NUMBER_SENDS_PER_HOUR", "60"),
        ];
        for (name, value) in cases {
            let err = Settings::from_vars(&vars(&[(name, value)]), &Flags::default()).unwrap_err();
            assert_eq!(err.variable, name, "{name}={value}");
            assert!(err.to_string().starts_with(name));
        }
    }

    #[test]
    fn live_mode_refuses_public_values_and_plain_http() {
        let mut with_dev = live();
        with_dev.push(("WAVERIFY_APP_SECRET", sandbox_defaults::APP_SECRET));
        let err = Settings::from_vars(&vars(&with_dev), &Flags::default()).unwrap_err();
        assert_eq!(err.variable, "WAVERIFY_APP_SECRET");
        let mut plain = live();
        plain.push(("WAVERIFY_GRAPH_URL", "http://graph.example.com"));
        let err = Settings::from_vars(&vars(&plain), &Flags::default()).unwrap_err();
        assert_eq!(err.variable, "WAVERIFY_GRAPH_URL");
        let mut local = live();
        local.push(("WAVERIFY_GRAPH_URL", "http://127.0.0.1:9000"));
        assert!(Settings::from_vars(&vars(&local), &Flags::default()).is_ok());
        let mut same = live();
        same.push(("WAVERIFY_CODE_KEY_PREVIOUS", "a-code-key-that-is-at-least-32-characters"));
        let err = Settings::from_vars(&vars(&same), &Flags::default()).unwrap_err();
        assert_eq!(err.variable, "WAVERIFY_CODE_KEY_PREVIOUS");
    }

    #[test]
    fn flags_override_variables() {
        let flags =
            Flags::parse(["--bind=127.0.0.1:0".into(), "--data-dir".into(), "/tmp/x".into()])
                .unwrap();
        let s = Settings::from_vars(&vars(&[("WAVERIFY_BIND", "127.0.0.1:9")]), &flags).unwrap();
        assert_eq!(s.bind.port(), 0);
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
        assert!(Flags::parse(["--nope".into()]).is_err());
        assert!(Flags::parse(["--bind".into()]).is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Settings::from_vars(&vars(&live()), &Flags::default()).unwrap();
        let shown = format!("{s:?}");
        for (_, value) in live().iter().filter(|(n, _)| n.contains("KEY") || n.contains("SECRET")) {
            assert!(!shown.contains(value), "{value} leaked");
        }
        assert!(!shown.contains("EAAG-token"));
    }
}
