//! The shared store: Redis (or Valkey), for any number of instances.
//!
//! Every change that must be atomic is one server-side script or one
//! `MULTI` on keys of one hash slot, so that two instances can never both
//! use the same try, nor count a limit twice. A read-modify-write of a
//! verification reads it, changes it here, and writes it back with a
//! compare-and-swap script that refuses if anyone wrote in between.
//!
//! Keys, where P is `WAVERIFY_STORE_PREFIX`; the part in braces is the hash
//! tag, so that in a cluster each script touches one slot:
//! - `P:{v:ID}:v`: the verification without its secret (postcard); expires
//!   when its retention ends
//! - `P:{v:ID}:s`: its sealed number and code; expires with the code
//! - `P:{a:NUMBER}`: the id of the number's pending verification; expires
//!   with it, and is deleted when it ends sooner
//! - `P:{i:KEY}`: what an `Idempotency-Key` was first used for
//! - `P:{m:MESSAGE}:m`: a provider's message id -> the verification's id
//! - `P:{m:MESSAGE}:p`: statuses parked for that message (a set)
//! - `P:{limits}:c:...`: limit counters, one key per window, expiring with
//!   it; all in one slot so that a send counts against all its limits at once
//! - `P:{w:NUMBER}`: until when a number goes straight to SMS
//! - `P:{state}:whatsapp_off_until`: until when WhatsApp is off for everyone
//! - `P:{sched}:outbox`: sends not yet answered by their provider, scored
//!   by when the instance that took them is presumed gone (a lease)
//! - `P:{sched}:fallback`: `auto` verifications, scored by when their
//!   fallback to SMS is due
//!
//! Expiry and retention are TTLs: nothing has to sweep.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::Script;
use std::sync::RwLock;

use tokio::sync::{mpsc, oneshot};

use super::{
    resend_refusal, Counter, Failure, IdempotencyRecord, NoResend, NotCreated, Refused,
    ResendRules, StatusUpdate, StoreError, Tally,
};
use crate::clock::UnixTime;
use crate::domain::{
    Channel, DeliveryStatus, Limit, SendOutcome, StatusEvent, Verification, VerificationId,
    VerificationStatus,
};

/// How long a connection attempt, or a command's answer, may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// How many statuses of one body are looked up in Redis at once.
const LOOKUPS_AT_ONCE: usize = 256;

/// The most queued sends, or due fallbacks, taken in one call.
const BATCH: usize = 256;

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(postcard::from_bytes(bytes)?)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(postcard::to_stdvec(value)?)
}

/// Seconds from `now` to `at`, as a TTL: at least one, since a TTL of zero
/// or less is refused or deletes the key.
fn ttl(at: UnixTime, now: UnixTime) -> i64 {
    (at - now).max(1)
}

struct Keys {
    prefix: String,
}

impl Keys {
    fn verification(&self, id: &VerificationId) -> String {
        format!("{}:{{v:{id}}}:v", self.prefix)
    }
    fn secret(&self, id: &VerificationId) -> String {
        format!("{}:{{v:{id}}}:s", self.prefix)
    }
    fn active(&self, active_key: &str) -> String {
        format!("{}:{{a:{active_key}}}", self.prefix)
    }
    fn idempotency(&self, key: &str) -> String {
        format!("{}:{{i:{key}}}", self.prefix)
    }
    fn message(&self, message_id: &str) -> String {
        format!("{}:{{m:{message_id}}}:m", self.prefix)
    }
    fn parked(&self, message_id: &str) -> String {
        format!("{}:{{m:{message_id}}}:p", self.prefix)
    }
    fn counter(&self, counter: Counter, subject: &str, window_end: UnixTime) -> String {
        format!("{}:{{limits}}:c:{}:{window_end}:{subject}", self.prefix, counter.tag())
    }
    fn not_on_whatsapp(&self, number_key: &str) -> String {
        format!("{}:{{w:{number_key}}}", self.prefix)
    }
    fn whatsapp_off(&self) -> String {
        format!("{}:{{state}}:whatsapp_off_until", self.prefix)
    }
    fn outbox(&self) -> String {
        format!("{}:{{sched}}:outbox", self.prefix)
    }
    fn fallbacks(&self) -> String {
        format!("{}:{{sched}}:fallback", self.prefix)
    }
}

/// The scripts, each on keys of one slot.
struct Scripts {
    /// Writes a verification over the very bytes read, or refuses.
    swap: Script,
    /// Takes a number for a verification unless another holds it; returns
    /// the holder.
    claim: Script,
    /// Deletes a key if it still holds the value given.
    release: Script,
    /// The verification a message belongs to; when none is known yet, the
    /// status is parked in the same step, so that it cannot slip between
    /// the lookup and a send being recorded.
    lookup_or_park: Script,
    /// Files a message under its verification and unparks the statuses
    /// applied; returns how many are still parked (arrived meanwhile).
    file: Script,
    /// Counts one event against several limits, all or none.
    count: Script,
    /// Takes back one event from several counters, none below zero.
    uncount: Script,
    /// Queues a send under a lease, by the server's clock.
    enqueue: Script,
    /// Takes the queued sends whose lease is over, renewing it.
    claim_queued: Script,
    /// Takes the fallbacks due, under a lease.
    pop_due: Script,
    /// Switches WhatsApp off, never shortening a longer pause.
    switch_off: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            swap: Script::new(
                r"
                if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
                redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
                if ARGV[3] == '1' then redis.call('DEL', KEYS[2]) end
                return 1",
            ),
            claim: Script::new(
                r"
                local holder = redis.call('GET', KEYS[1])
                if holder and holder ~= ARGV[1] then return holder end
                redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
                return false",
            ),
            release: Script::new(
                r"
                if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
                return 0",
            ),
            lookup_or_park: Script::new(
                r"
                local id = redis.call('GET', KEYS[1])
                if id then return id end
                redis.call('SADD', KEYS[2], ARGV[1])
                redis.call('EXPIRE', KEYS[2], ARGV[2])
                return false",
            ),
            file: Script::new(
                r"
                redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
                for i = 3, #ARGV do redis.call('SREM', KEYS[2], ARGV[i]) end
                return redis.call('SCARD', KEYS[2])",
            ),
            count: Script::new(
                r"
                local n = #KEYS
                local refused = {}
                for i = 1, n do
                    local count = tonumber(redis.call('GET', KEYS[i]) or '0')
                    if count >= tonumber(ARGV[i]) then refused[#refused + 1] = i end
                end
                if #refused > 0 then return refused end
                for i = 1, n do
                    redis.call('INCR', KEYS[i])
                    redis.call('EXPIRE', KEYS[i], ARGV[n + i])
                end
                return refused",
            ),
            uncount: Script::new(
                r"
                for i = 1, #KEYS do
                    if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then
                        redis.call('DECR', KEYS[i])
                    end
                end
                return 0",
            ),
            enqueue: Script::new(
                r"
                local now = tonumber(redis.call('TIME')[1])
                return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])",
            ),
            claim_queued: Script::new(
                r"
                local now = tonumber(redis.call('TIME')[1])
                local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[2])
                for _, member in ipairs(due) do
                    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), member)
                end
                return due",
            ),
            pop_due: Script::new(
                r"
                local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
                for _, member in ipairs(due) do
                    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), member)
                end
                return due",
            ),
            switch_off: Script::new(
                r"
                local off_until = tonumber(ARGV[1])
                local now = tonumber(ARGV[2])
                local current = tonumber(redis.call('GET', KEYS[1]) or '0')
                local keep = math.max(current, off_until)
                redis.call('SET', KEYS[1], tostring(keep), 'EX', math.max(1, keep - now))
                if current <= now then return 1 end
                return 0",
            ),
        }
    }
}

/// What to connect to: one server, or a Redis Cluster through some of its
/// nodes.
#[derive(Clone)]
enum Target {
    Single(Box<redis::Client>),
    Cluster(Box<ClusterClient>),
}

impl Target {
    /// One `redis://` or `rediss://` URL, or several separated by commas:
    /// nodes of a cluster.
    fn parse(url: &str) -> Result<Self, StoreError> {
        if url.contains(',') {
            let nodes: Vec<&str> =
                url.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
            let client = ClusterClient::builder(nodes)
                .connection_timeout(TIMEOUT)
                .response_timeout(TIMEOUT)
                .build()?;
            Ok(Self::Cluster(Box::new(client)))
        } else {
            Ok(Self::Single(Box::new(redis::Client::open(url)?)))
        }
    }
}

/// A connection to either kind of target.
#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Connects, and makes sure the server takes commands: a missing or
/// wrong password fails here, at start-up, rather than on every request.
async fn manager(target: &Target) -> Result<Link, StoreError> {
    let mut link = match target {
        Target::Single(client) => {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(TIMEOUT))
                .set_response_timeout(Some(TIMEOUT))
                .set_number_of_retries(3)
                .set_max_delay(Duration::from_secs(2));
            Link::Single(ConnectionManager::new_with_config((**client).clone(), config).await?)
        }
        Target::Cluster(client) => Link::Cluster(client.get_async_connection().await?),
    };
    redis::cmd("PING").query_async::<String>(&mut link).await?;
    Ok(link)
}

impl redis::aio::ConnectionLike for Link {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Builds a new connection whenever a command failed in a way the
/// connection manager does not recover from by itself (a login refused
/// while a password was being rotated, for one), at most once a second.
async fn rebuild_when_asked(
    client: Target,
    current: Arc<RwLock<Link>>,
    mut asked: mpsc::UnboundedReceiver<()>,
) {
    while asked.recv().await.is_some() {
        match manager(&client).await {
            Ok(fresh) => {
                *current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                tracing::info!("redis connection rebuilt");
            }
            Err(error) => tracing::warn!(%error, "redis connection not rebuilt; trying again"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Every failure meanwhile asked for the same thing.
        while asked.try_recv().is_ok() {}
    }
}

/// The connection every command goes through: the current connection
/// manager, replaced when a failure calls for a new one.
#[derive(Clone)]
struct Conn {
    current: Arc<RwLock<Link>>,
    rebuild: mpsc::UnboundedSender<()>,
}

impl Conn {
    fn manager(&self) -> Link {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Asks for a new connection after a failure that the manager's own
    /// reconnection does not cover.
    fn after<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(e) = &result {
            let dead = e.kind() == redis::ErrorKind::AuthenticationFailed
                || e.code() == Some("NOAUTH")
                || e.code() == Some("WRONGPASS")
                || e.is_unrecoverable_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal();
            if dead {
                let _ = self.rebuild.send(());
            }
        }
        result
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        let mut manager = self.manager();
        Box::pin(async move {
            let result = manager.req_packed_command(cmd).await;
            self.after(result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        let mut manager = self.manager();
        Box::pin(async move {
            let result = manager.req_packed_commands(pipeline, offset, count).await;
            self.after(result)
        })
    }

    fn get_db(&self) -> i64 {
        self.manager().get_db()
    }
}

/// A verification as read, with what a compare-and-swap needs.
struct Loaded {
    v: Verification,
    /// The stored bytes, compared by the swap.
    blob: Vec<u8>,
    /// Seconds until its retention ends.
    ttl: i64,
}

/// What applying a message's parked statuses came to.
struct Settled {
    v: Verification,
    /// Whether the status that asked for it changed anything.
    changed: bool,
    /// The send the message belongs to, if one took it.
    index: Option<usize>,
}

#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    keys: Arc<Keys>,
    scripts: Arc<Scripts>,
    /// Seconds parked statuses are kept for a send that may still come.
    parked_ttl: i64,
    /// Seconds after which a queued send whose provider never answered is
    /// presumed abandoned (its instance died) and taken by another.
    lease: i64,
    /// Ends the connection's thread when the last clone is dropped.
    _stop: Arc<oneshot::Sender<()>>,
}

impl RedisStore {
    /// Connects, or fails within a few seconds. The connection lives on a
    /// thread of its own and reconnects by itself; every command is bounded
    /// by a timeout.
    pub fn connect(
        url: &str,
        prefix: &str,
        parked_ttl: i64,
        lease: i64,
    ) -> Result<Self, StoreError> {
        let client = Target::parse(url)?;
        let (made_tx, made_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let (rebuild_tx, rebuild_rx) = mpsc::unbounded_channel::<()>();
        std::thread::Builder::new()
            .name("waverify-redis".into())
            .spawn(move || {
                let runtime =
                    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = made_tx.send(Err(StoreError::Flush(e.to_string())));
                            return;
                        }
                    };
                runtime.block_on(async move {
                    let first = match manager(&client).await {
                        Ok(first) => first,
                        Err(error) => {
                            let _ = made_tx.send(Err(error));
                            return;
                        }
                    };
                    let current = Arc::new(RwLock::new(first));
                    let conn = Conn { current: current.clone(), rebuild: rebuild_tx };
                    let _ = made_tx.send(Ok(conn));
                    // Keeps the connection's tasks running, and builds a new
                    // connection when asked, until the store is dropped.
                    tokio::select! {
                        _ = stopped => {}
                        () = rebuild_when_asked(client, current, rebuild_rx) => {}
                    }
                });
            })
            .map_err(|e| StoreError::Flush(e.to_string()))?;
        let wait = TIMEOUT * 3;
        let conn = made_rx
            .recv_timeout(wait)
            .map_err(|_| StoreError::ConnectTimeout(wait.as_secs()))??;
        Ok(Self {
            conn,
            keys: Arc::new(Keys { prefix: prefix.to_owned() }),
            scripts: Arc::new(Scripts::new()),
            parked_ttl: parked_ttl.max(1),
            lease: lease.max(1),
            _stop: Arc::new(stop),
        })
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    pub async fn healthy(&self) -> bool {
        let pong: Result<String, _> = redis::cmd("PING").query_async(&mut self.conn()).await;
        pong.is_ok()
    }

    async fn load(&self, id: &VerificationId) -> Result<Option<Loaded>, StoreError> {
        let key = self.keys.verification(id);
        let (blob, secret, ttl): (Option<Vec<u8>>, Option<Vec<u8>>, i64) = redis::pipe()
            .cmd("GET")
            .arg(&key)
            .cmd("GET")
            .arg(self.keys.secret(id))
            .cmd("TTL")
            .arg(&key)
            .query_async(&mut self.conn())
            .await?;
        let Some(blob) = blob else { return Ok(None) };
        let mut v: Verification = decode(&blob)?;
        v.secret = secret;
        Ok(Some(Loaded { v, blob, ttl: ttl.max(1) }))
    }

    /// Writes `v` over `loaded` unless someone else wrote first.
    async fn swap(&self, loaded: &Loaded, v: &Verification) -> Result<bool, StoreError> {
        let new = encode(&without_secret(v))?;
        let drop_secret = v.secret.is_none() && loaded.v.secret.is_some();
        let swapped: i64 = self
            .scripts
            .swap
            .key(self.keys.verification(&v.id))
            .key(self.keys.secret(&v.id))
            .arg(&loaded.blob)
            .arg(new)
            .arg(if drop_secret { "1" } else { "0" })
            .invoke_async(&mut self.conn())
            .await?;
        Ok(swapped == 1)
    }

    pub async fn get(&self, id: &VerificationId) -> Result<Option<Verification>, StoreError> {
        Ok(self.load(id).await?.map(|l| l.v))
    }

    pub async fn active(
        &self,
        active_key: &str,
        now: UnixTime,
    ) -> Result<Option<Verification>, StoreError> {
        let holder: Option<String> = redis::cmd("GET")
            .arg(self.keys.active(active_key))
            .query_async(&mut self.conn())
            .await?;
        let Some(id) = holder.as_deref().and_then(VerificationId::parse) else { return Ok(None) };
        Ok(self.get(&id).await?.filter(|v| v.status_at(now) == VerificationStatus::Pending))
    }

    pub async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let bytes: Option<Vec<u8>> =
            redis::cmd("GET").arg(self.keys.idempotency(key)).query_async(&mut self.conn()).await?;
        bytes.map(|b| decode(&b)).transpose()
    }

    /// Stores a new verification, files its idempotency key, takes its
    /// number and queues its first send, in that order: nobody knows the
    /// verification's id before, and a refusal at any step undoes the
    /// steps before it.
    pub async fn create(
        &self,
        v: &Verification,
        purge_at: UnixTime,
        now: UnixTime,
        idempotency: Option<(&str, &str)>,
        hits: &[(Counter, &str, Limit)],
    ) -> Result<Result<(), NotCreated>, StoreError> {
        let mut put = redis::pipe();
        put.atomic()
            .cmd("SET")
            .arg(self.keys.verification(&v.id))
            .arg(encode(&without_secret(v))?)
            .arg("EX")
            .arg(ttl(purge_at, now))
            .ignore();
        if let Some(secret) = &v.secret {
            put.cmd("SET")
                .arg(self.keys.secret(&v.id))
                .arg(secret.as_slice())
                .arg("EX")
                .arg(ttl(v.expires_at, now))
                .ignore();
        }
        put.query_async::<()>(&mut self.conn()).await?;

        // The idempotency key before the number: a request with the same
        // key then finds the record (and this verification) rather than a
        // number that is merely taken.
        let mut taken = None;
        if let Some(key) = idempotency {
            match self.take_key(key, &v.id, ttl(purge_at, now)).await? {
                Ok(mine) => taken = Some(mine),
                Err(record) => {
                    self.discard(&v.id).await?;
                    return Ok(Err(NotCreated::KeyTaken(record)));
                }
            }
        }

        let number = self.keys.active(&Verification::active_key(&v.number_key, v.purpose));
        loop {
            let holder: Option<String> = self
                .scripts
                .claim
                .key(&number)
                .arg(v.id.as_str())
                .arg(ttl(v.expires_at, now))
                .invoke_async(&mut self.conn())
                .await?;
            let Some(holder) = holder else { break };
            if let Some(other) = VerificationId::parse(&holder) {
                let pending = self.get(&other).await?;
                if pending.is_some_and(|o| o.status_at(now) == VerificationStatus::Pending) {
                    self.give_back(taken.as_ref()).await?;
                    self.discard(&v.id).await?;
                    return Ok(Err(NotCreated::Active(other)));
                }
            }
            // The holder is over (its end was not written down yet, or it
            // is gone): free the number, then try again.
            self.release_key(&number, &holder).await?;
        }
        // Counted only once the number is this verification's: requests
        // that lose a race for it count nothing.
        if let Err(refused) = self.count(hits, now).await? {
            self.release_key(&number, v.id.as_str()).await?;
            self.give_back(taken.as_ref()).await?;
            self.discard(&v.id).await?;
            return Ok(Err(NotCreated::Limited(refused)));
        }
        self.enqueue(&v.id, 0).await?;
        if let Some(at) = v.fallback_at {
            self.schedule_fallback(&v.id, at).await?;
        }
        Ok(Ok(()))
    }

    async fn discard(&self, id: &VerificationId) -> Result<(), StoreError> {
        redis::cmd("DEL")
            .arg(self.keys.verification(id))
            .arg(self.keys.secret(id))
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn release_key(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        self.scripts.release.key(key).arg(holder).invoke_async::<i64>(&mut self.conn()).await?;
        Ok(())
    }

    /// Frees the number of a verification that is over.
    async fn release(&self, v: &Verification) -> Result<(), StoreError> {
        let number = self.keys.active(&Verification::active_key(&v.number_key, v.purpose));
        self.release_key(&number, v.id.as_str()).await
    }

    pub async fn resend(
        &self,
        id: &VerificationId,
        now: UnixTime,
        rules: ResendRules,
        idempotency: Option<(&str, &str)>,
        hits: &[(Counter, &str, Limit)],
    ) -> Result<Result<(Verification, usize), NoResend>, StoreError> {
        // The key is taken first, with NX, so that of two requests with one
        // key only one can go on; it is given back if the resend is refused.
        let mut taken: Option<(String, Vec<u8>)> = None;
        loop {
            let Some(loaded) = self.load(id).await? else {
                self.give_back(taken.as_ref()).await?;
                return Ok(Err(NoResend::NotPending(VerificationStatus::Expired)));
            };
            if let (Some(key), None) = (idempotency, &taken) {
                match self.take_key(key, id, loaded.ttl).await? {
                    Ok(mine) => taken = Some(mine),
                    Err(record) => return Ok(Err(NoResend::KeyTaken(record))),
                }
            }
            let mut v = loaded.v.clone();
            if let Some(refusal) = resend_refusal(&v, now, rules) {
                self.give_back(taken.as_ref()).await?;
                return Ok(Err(refusal));
            }
            let index = v.add_send(now);
            if let Some((key, _)) = idempotency {
                v.idempotency_keys.push(key.to_owned());
            }
            if let Err(refused) = self.count(hits, now).await? {
                self.give_back(taken.as_ref()).await?;
                return Ok(Err(NoResend::Limited(refused)));
            }
            if !self.swap(&loaded, &v).await? {
                // Someone wrote first: this send is not made (yet).
                self.uncount(hits, now).await?;
                continue;
            }
            self.enqueue(id, index).await?;
            return Ok(Ok((v, index)));
        }
    }

    /// Takes an idempotency key for `verification` with `SET NX`: the key
    /// and what was written, for [`RedisStore::give_back`]; or the record of
    /// the request that holds it.
    async fn take_key(
        &self,
        (key, fingerprint): (&str, &str),
        verification: &VerificationId,
        ttl: i64,
    ) -> Result<Result<(String, Vec<u8>), IdempotencyRecord>, StoreError> {
        let record = IdempotencyRecord {
            fingerprint: fingerprint.into(),
            verification: verification.clone(),
        };
        let bytes = encode(&record)?;
        let name = self.keys.idempotency(key);
        let set: Option<String> = redis::cmd("SET")
            .arg(&name)
            .arg(bytes.as_slice())
            .arg("NX")
            .arg("EX")
            .arg(ttl)
            .query_async(&mut self.conn())
            .await?;
        if set.is_some() {
            return Ok(Ok((name, bytes)));
        }
        match self.idempotency(key).await? {
            Some(record) => Ok(Err(record)),
            // Taken, then expired meanwhile: the caller may retry.
            None => Err(StoreError::Unavailable),
        }
    }

    /// Deletes an idempotency key this request took, if it still holds
    /// what the request wrote.
    async fn give_back(&self, taken: Option<&(String, Vec<u8>)>) -> Result<(), StoreError> {
        if let Some((key, bytes)) = taken {
            self.scripts
                .release
                .key(key)
                .arg(bytes.as_slice())
                .invoke_async::<i64>(&mut self.conn())
                .await?;
        }
        Ok(())
    }

    pub async fn update<T>(
        &self,
        id: &VerificationId,
        mut change: impl FnMut(&mut Verification) -> T,
    ) -> Result<Option<(T, Verification)>, StoreError> {
        self.change(id, None, |v, _| change(v)).await
    }

    pub async fn update_with_count<T>(
        &self,
        id: &VerificationId,
        count: (Counter, Limit),
        now: UnixTime,
        change: impl FnMut(&mut Verification, u64) -> T,
    ) -> Result<Option<(T, Verification)>, StoreError> {
        self.change(id, Some((count, now)), change).await
    }

    /// The compare-and-swap loop behind both: `change` gets the
    /// verification and, when asked, the current count of a counter for
    /// its number (else 0), read afresh on every try.
    async fn change<T>(
        &self,
        id: &VerificationId,
        count: Option<((Counter, Limit), UnixTime)>,
        mut change: impl FnMut(&mut Verification, u64) -> T,
    ) -> Result<Option<(T, Verification)>, StoreError> {
        loop {
            let Some(loaded) = self.load(id).await? else { return Ok(None) };
            let counted = match count {
                Some(((counter, limit), now)) => {
                    self.counted(counter, &loaded.v.number_key, limit, now).await?
                }
                None => 0,
            };
            let mut v = loaded.v.clone();
            let result = change(&mut v, counted);
            if v == loaded.v {
                return Ok(Some((result, v)));
            }
            if self.swap(&loaded, &v).await? {
                if v.status != VerificationStatus::Pending {
                    self.release(&v).await?;
                }
                return Ok(Some((result, v)));
            }
        }
    }

    fn outbox_member(id: &VerificationId, index: usize) -> String {
        format!("{id}:{index}")
    }

    async fn enqueue(&self, id: &VerificationId, index: usize) -> Result<(), StoreError> {
        self.scripts
            .enqueue
            .key(self.keys.outbox())
            .arg(Self::outbox_member(id, index))
            .arg(self.lease)
            .invoke_async::<i64>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Queued sends whose lease is over: their instance is presumed gone.
    /// Each is taken under a new lease, so one instance sends it.
    pub async fn claim_queued(&self) -> Result<Vec<(VerificationId, usize)>, StoreError> {
        let due: Vec<String> = self
            .scripts
            .claim_queued
            .key(self.keys.outbox())
            .arg(self.lease)
            .arg(BATCH)
            .invoke_async(&mut self.conn())
            .await?;
        let mut queued = Vec::with_capacity(due.len());
        for member in due {
            let parsed = member
                .split_once(':')
                .and_then(|(id, i)| Some((VerificationId::parse(id)?, i.parse().ok()?)));
            match parsed {
                Some(entry) => queued.push(entry),
                None => {
                    redis::cmd("ZREM")
                        .arg(self.keys.outbox())
                        .arg(&member)
                        .query_async::<()>(&mut self.conn())
                        .await?;
                }
            }
        }
        Ok(queued)
    }

    pub async fn unqueue(&self, id: &VerificationId, index: usize) -> Result<(), StoreError> {
        redis::cmd("ZREM")
            .arg(self.keys.outbox())
            .arg(Self::outbox_member(id, index))
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    pub async fn record_send(
        &self,
        id: &VerificationId,
        index: usize,
        outcome: &SendOutcome,
        now: UnixTime,
    ) -> Result<Option<Verification>, StoreError> {
        let v = match outcome {
            SendOutcome::Accepted { message_id } => {
                // The send, its message id and whatever statuses came
                // first are written in one swap.
                let settled = self
                    .settle(id, message_id, None, |v| {
                        v.record_send(index, outcome, now);
                        let filed = v.sends.get(index)?.delivery.message_id.as_deref();
                        (filed == Some(message_id.as_str())).then_some(index)
                    })
                    .await?;
                settled.map(|s| s.v)
            }
            SendOutcome::Failed { .. } => {
                self.update(id, |v| v.record_send(index, outcome, now)).await?.map(|((), v)| v)
            }
        };
        self.unqueue(id, index).await?;
        if let Some(v) = &v {
            if v.status != VerificationStatus::Pending {
                self.release(v).await?;
            }
        }
        Ok(v)
    }

    /// Writes `prepare`'s change to verification `id` together with the
    /// statuses parked for `message_id`, applied to the send `prepare`
    /// names (if it names one); then files the message under `id` and
    /// unparks what was applied, and goes round again while statuses were
    /// parked meanwhile. The verification is written before anything is
    /// unparked, so a crash in between loses nothing. `first`, parked too,
    /// is applied first, to tell whether it changed anything. `None` when
    /// the verification is gone.
    async fn settle(
        &self,
        id: &VerificationId,
        message_id: &str,
        first: Option<&StatusEvent>,
        mut prepare: impl FnMut(&mut Verification) -> Option<usize>,
    ) -> Result<Option<Settled>, StoreError> {
        let parked_key = self.keys.parked(message_id);
        let mut settled: Option<Settled> = None;
        loop {
            let members: Vec<Vec<u8>> =
                redis::cmd("SMEMBERS").arg(&parked_key).query_async(&mut self.conn()).await?;
            let events: Vec<(Channel, StatusEvent)> =
                members.iter().filter_map(|m| decode(m).ok()).collect();
            let (v, index, changed, retention) = loop {
                let Some(loaded) = self.load(id).await? else { return Ok(settled) };
                let mut v = loaded.v.clone();
                let index = prepare(&mut v);
                let mut changed = false;
                if let Some(index) = index {
                    let channel = v.sends[index].channel;
                    let delivery = &mut v.sends[index].delivery;
                    if let (Some(event), None) = (first, &settled) {
                        changed = delivery.apply(event);
                    }
                    for (_, event) in events.iter().filter(|(c, _)| *c == channel) {
                        delivery.apply(event);
                    }
                }
                if v == loaded.v || self.swap(&loaded, &v).await? {
                    break (v, index, changed, loaded.ttl);
                }
            };
            let changed = settled.as_ref().map_or(changed, |s| s.changed);
            let Some(index) = index else {
                return Ok(Some(Settled { v, changed, index: None }));
            };
            let mut file = self.scripts.file.key(self.keys.message(message_id));
            file.key(&parked_key).arg(id.as_str()).arg(retention);
            for member in &members {
                file.arg(member.as_slice());
            }
            let left: i64 = file.invoke_async(&mut self.conn()).await?;
            settled = Some(Settled { v, changed, index: Some(index) });
            if left == 0 {
                return Ok(settled);
            }
        }
    }

    /// Applies one webhook body's statuses, each durable (as the server's
    /// `appendfsync` makes it) when this returns. Each status is applied
    /// on its own, not the body as one: a failure part-way answers an
    /// error, Meta sends the whole body again, and applying a status
    /// twice changes nothing, so the end state is the same.
    pub async fn record_statuses(&self, updates: Vec<StatusUpdate>) -> Result<Tally, StoreError> {
        let entries = updates
            .iter()
            .map(|u| encode(&(u.channel, u.event.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let filed = self.lookup_or_park(&updates, &entries).await?;

        // Statuses of known messages, one swap per verification.
        let mut by_verification: Vec<(VerificationId, Vec<usize>)> = Vec::new();
        for (i, id) in filed.iter().enumerate() {
            if let Some(id) = id.as_deref().and_then(VerificationId::parse) {
                match by_verification.iter_mut().find(|(v, _)| *v == id) {
                    Some((_, members)) => members.push(i),
                    None => by_verification.push((id, vec![i])),
                }
            }
        }
        let mut applied: Vec<Option<(bool, Option<Failure>)>> = vec![None; updates.len()];
        for (id, members) in &by_verification {
            let picked: Vec<&StatusUpdate> = members.iter().map(|&i| &updates[i]).collect();
            for (&i, result) in members.iter().zip(self.apply_indexed(id, &picked).await?) {
                applied[i] = result;
            }
        }
        // Statuses parked by the lookup that name their verification: the
        // webhook overtook the provider's answer, or the answer never came.
        for (i, update) in updates.iter().enumerate() {
            let (None, Some(id)) = (&filed[i], &update.callback) else { continue };
            let (message, channel) = (update.message_id.as_str(), update.channel);
            let settled = self
                .settle(id, message, Some(&update.event), |v| {
                    v.send_for_message(message, channel, true)
                })
                .await?;
            applied[i] = settled.and_then(|s| {
                let index = s.index?;
                Some((s.changed, failure(&s.v, index, update, s.changed)))
            });
        }

        let mut tally = Tally::default();
        for (i, result) in applied.into_iter().enumerate() {
            match result {
                Some((true, failed)) => {
                    tally.applied += 1;
                    tally.failures.extend(failed);
                }
                Some((false, _)) => tally.unchanged += 1,
                None => {
                    // Filed under a verification that no longer takes it:
                    // kept like any status of an unknown message.
                    if filed[i].is_some() {
                        self.park(&updates[i], &entries[i]).await?;
                    }
                    tally.parked += 1;
                }
            }
        }
        Ok(tally)
    }

    /// Runs `lookup_or_park` for every status of a body in one round trip:
    /// the verification id each message is filed under, or `None` for a
    /// status now parked.
    async fn lookup_or_park(
        &self,
        updates: &[StatusUpdate],
        entries: &[Vec<u8>],
    ) -> Result<Vec<Option<String>>, StoreError> {
        // Sent together, not as one pipeline: each touches its own slot,
        // and the connection writes concurrent commands out together anyway.
        // A few hundred at a time: a body can carry thousands, and each
        // command's time limit runs from when it is sent, so the last of
        // thousands sent at once could time out behind the others.
        let mut found = Vec::with_capacity(updates.len());
        let pairs: Vec<_> = updates.iter().zip(entries).collect();
        for batch in pairs.chunks(LOOKUPS_AT_ONCE) {
            let lookups = batch.iter().map(|(update, entry)| {
                let mut conn = self.conn();
                async move {
                    self.scripts
                        .lookup_or_park
                        .key(self.keys.message(&update.message_id))
                        .key(self.keys.parked(&update.message_id))
                        .arg(entry.as_slice())
                        .arg(self.parked_ttl)
                        .invoke_async::<Option<String>>(&mut conn)
                        .await
                }
            });
            for result in futures_util::future::join_all(lookups).await {
                found.push(result?);
            }
        }
        Ok(found)
    }

    async fn park(&self, update: &StatusUpdate, entry: &[u8]) -> Result<(), StoreError> {
        redis::pipe()
            .atomic()
            .cmd("SADD")
            .arg(self.keys.parked(&update.message_id))
            .arg(entry)
            .ignore()
            .cmd("EXPIRE")
            .arg(self.keys.parked(&update.message_id))
            .arg(self.parked_ttl)
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Applies statuses whose messages are filed under `id`, in one swap;
    /// for each, whether it changed anything, or `None` when no send of the
    /// verification (if it still exists) takes its message.
    async fn apply_indexed(
        &self,
        id: &VerificationId,
        updates: &[&StatusUpdate],
    ) -> Result<Vec<Option<(bool, Option<Failure>)>>, StoreError> {
        loop {
            let Some(loaded) = self.load(id).await? else { return Ok(vec![None; updates.len()]) };
            let mut v = loaded.v.clone();
            let mut results = Vec::with_capacity(updates.len());
            for update in updates {
                let index = v.send_for_message(&update.message_id, update.channel, false);
                results.push(index.map(|index| {
                    let changed = v.sends[index].delivery.apply(&update.event);
                    (changed, index)
                }));
            }
            if v == loaded.v || self.swap(&loaded, &v).await? {
                let described = updates.iter().zip(results).map(|(update, result)| {
                    result.map(|(changed, index)| (changed, failure(&v, index, update, changed)))
                });
                return Ok(described.collect());
            }
        }
    }

    pub async fn count(
        &self,
        hits: &[(Counter, &str, Limit)],
        now: UnixTime,
    ) -> Result<Result<(), Refused>, StoreError> {
        let mut script = self.scripts.count.prepare_invoke();
        for &(counter, subject, limit) in hits {
            script.key(self.keys.counter(counter, subject, limit.window_end(now)));
        }
        for &(_, _, limit) in hits {
            script.arg(limit.max);
        }
        for &(_, _, limit) in hits {
            script.arg(ttl(limit.window_end(now), now));
        }
        let refused: Vec<usize> = script.invoke_async(&mut self.conn()).await?;
        let longest = refused
            .iter()
            .filter_map(|&i| hits.get(i.checked_sub(1)?))
            .map(|&(counter, _, limit)| Refused { counter, retry_after: limit.retry_after(now) })
            .max_by_key(|r| r.retry_after);
        Ok(longest.map_or(Ok(()), Err))
    }

    pub async fn uncount(
        &self,
        hits: &[(Counter, &str, Limit)],
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let mut script = self.scripts.uncount.prepare_invoke();
        for &(counter, subject, limit) in hits {
            script.key(self.keys.counter(counter, subject, limit.window_end(now)));
        }
        script.invoke_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    pub async fn counted(
        &self,
        counter: Counter,
        subject: &str,
        limit: Limit,
        now: UnixTime,
    ) -> Result<u64, StoreError> {
        let count: Option<u64> = redis::cmd("GET")
            .arg(self.keys.counter(counter, subject, limit.window_end(now)))
            .query_async(&mut self.conn())
            .await?;
        Ok(count.unwrap_or(0))
    }

    pub async fn add(
        &self,
        counter: Counter,
        subject: &str,
        limit: Limit,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let key = self.keys.counter(counter, subject, limit.window_end(now));
        redis::pipe()
            .atomic()
            .cmd("INCR")
            .arg(&key)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(ttl(limit.window_end(now), now))
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    pub async fn schedule_fallback(
        &self,
        id: &VerificationId,
        at: UnixTime,
    ) -> Result<(), StoreError> {
        // LT: an earlier time already filed stays.
        redis::cmd("ZADD")
            .arg(self.keys.fallbacks())
            .arg("LT")
            .arg(at)
            .arg(id.as_str())
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    pub async fn due_fallbacks(&self, now: UnixTime) -> Result<Vec<VerificationId>, StoreError> {
        let due: Vec<String> = self
            .scripts
            .pop_due
            .key(self.keys.fallbacks())
            .arg(now)
            .arg(BATCH)
            .arg(self.lease)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(due.iter().filter_map(|id| VerificationId::parse(id)).collect())
    }

    pub async fn fallback_done(&self, id: &VerificationId) -> Result<(), StoreError> {
        redis::cmd("ZREM")
            .arg(self.keys.fallbacks())
            .arg(id.as_str())
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    pub async fn fall_back(
        &self,
        id: &VerificationId,
        now: UnixTime,
        whatsapp_off: bool,
    ) -> Result<Option<(Verification, usize)>, StoreError> {
        loop {
            let Some(loaded) = self.load(id).await? else { return Ok(None) };
            let mut v = loaded.v.clone();
            let Some(index) = v.fall_back(now, whatsapp_off) else { return Ok(None) };
            if self.swap(&loaded, &v).await? {
                self.enqueue(id, index).await?;
                return Ok(Some((v, index)));
            }
        }
    }

    pub async fn remember_not_on_whatsapp(
        &self,
        number_key: &str,
        until: UnixTime,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        redis::cmd("SET")
            .arg(self.keys.not_on_whatsapp(number_key))
            .arg(until)
            .arg("EX")
            .arg(ttl(until, now))
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    pub async fn not_on_whatsapp(
        &self,
        number_key: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let until: Option<i64> = redis::cmd("GET")
            .arg(self.keys.not_on_whatsapp(number_key))
            .query_async(&mut self.conn())
            .await?;
        Ok(until.is_some_and(|until| now < until))
    }

    pub async fn whatsapp_off_until(&self, now: UnixTime) -> Result<Option<UnixTime>, StoreError> {
        let until: Option<i64> =
            redis::cmd("GET").arg(self.keys.whatsapp_off()).query_async(&mut self.conn()).await?;
        Ok(until.filter(|until| now < *until))
    }

    pub async fn switch_whatsapp_off(
        &self,
        until: UnixTime,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let was_on: i64 = self
            .scripts
            .switch_off
            .key(self.keys.whatsapp_off())
            .arg(until)
            .arg(now)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(was_on == 1)
    }
}

fn without_secret(v: &Verification) -> Verification {
    Verification { secret: None, ..v.clone() }
}

fn failure(
    v: &Verification,
    index: usize,
    update: &StatusUpdate,
    changed: bool,
) -> Option<Failure> {
    (changed && update.event.status == DeliveryStatus::Failed).then(|| Failure {
        verification: v.id.clone(),
        number_key: v.number_key.clone(),
        channel: v.sends[index].channel,
        code: update.event.error.as_ref().and_then(|e| e.code),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part of a key Redis Cluster hashes: between the first `{` and
    /// the first `}` after it, when that is not empty; else the whole key.
    fn hash_tag(key: &str) -> &str {
        if let Some(open) = key.find('{') {
            if let Some(len) = key[open + 1..].find('}') {
                if len > 0 {
                    return &key[open + 1..open + 1 + len];
                }
            }
        }
        key
    }

    #[test]
    fn keys_a_script_touches_together_share_a_slot() {
        let keys = Keys { prefix: "waverify".into() };
        let id = VerificationId::parse(&"ab".repeat(16)).unwrap();
        assert_eq!(hash_tag(&keys.verification(&id)), hash_tag(&keys.secret(&id)));
        assert_eq!(hash_tag(&keys.verification(&id)), format!("v:{id}"));
        // Message ids come from providers: braces in them must not split a
        // message's index from its parked statuses.
        for message in ["wamid.HBgLMTU1NTAxMDAwMDEVAgARGBI=", "SM0123", "a}b", "a{b}c", "{", "}"] {
            assert_eq!(
                hash_tag(&keys.message(message)),
                hash_tag(&keys.parked(message)),
                "{message}"
            );
        }
        let hour = keys.counter(Counter::NumberSendsPerHour, "n1", 3600);
        let budget = keys.counter(Counter::DailySendBudget, "all", 86_400);
        assert_eq!((hash_tag(&hour), hash_tag(&budget)), ("limits", "limits"));
        assert_eq!(hash_tag(&keys.outbox()), hash_tag(&keys.fallbacks()));
    }
}
