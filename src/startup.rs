//! Builds the whole application from its settings. `main` and every
//! integration test start waverify through `Application::build`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{middleware, web, App, HttpServer};
use anyhow::Context;

use crate::clock::{SharedClock, SystemClock};
use crate::routes::{self, AppState};
use crate::sandbox::{self, Sandbox, Timing};
use crate::settings::{Mode, Settings, StoreSettings};
use crate::store::Store;
use crate::telemetry;

/// What tests may change besides the settings.
#[derive(Clone)]
pub struct Options {
    pub clock: SharedClock,
    pub sandbox_timing: Timing,
    /// How often expired verifications are looked for.
    pub sweep_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            sandbox_timing: Timing::default(),
            sweep_every: Duration::from_secs(60),
        }
    }
}

pub struct Application {
    address: SocketAddr,
    server: Server,
}

impl Application {
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with(settings, Options::default())
    }

    pub fn build_with(mut settings: Settings, options: Options) -> anyhow::Result<Self> {
        // awc's rustls connector needs a process-wide crypto provider; ring
        // keeps the whole server on one crypto library. A second call fails
        // harmlessly when a provider is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let store = Store::open(&settings).with_context(|| match settings.store {
            StoreSettings::Sled => format!(
                "WAVERIFY_DATA_DIR: cannot open the store in {}",
                settings.data_dir.display()
            ),
            StoreSettings::Redis { .. } => "WAVERIFY_STORE: cannot reach Redis".to_owned(),
        })?;
        let listener = TcpListener::bind(settings.bind)
            .with_context(|| format!("WAVERIFY_BIND: cannot listen on {}", settings.bind))?;
        let address = listener.local_addr()?;

        let sandbox = match settings.mode {
            Mode::Live => None,
            Mode::Sandbox => {
                let local = reachable(address);
                settings.graph.base_url = format!("http://{local}/sandbox/graph");
                if let Some(sms) = &mut settings.sms {
                    if sms.base_url.is_empty() {
                        sms.base_url = format!("http://{local}/sandbox/sms");
                    }
                    sms.public_url.get_or_insert_with(|| format!("http://{local}"));
                }
                Some(Arc::new(Sandbox::new(
                    &settings,
                    options.sandbox_timing,
                    format!("http://{local}/webhook"),
                    options.clock.clone(),
                )))
            }
        };
        announce(&settings, address);

        let state = AppState::new(&settings, store, options.clock, options.sweep_every)?;
        let state = web::Data::new(state);
        let server = HttpServer::new(move || {
            let sandbox = sandbox.clone();
            App::new()
                .wrap(middleware::from_fn(telemetry::trace_request))
                // Answers carry codes (sandbox) and personal data: never
                // cached, never sniffed into another type.
                .wrap(
                    middleware::DefaultHeaders::new()
                        .add(("X-Content-Type-Options", "nosniff"))
                        .add(("Cache-Control", "no-store")),
                )
                .app_data(state.clone())
                .configure(routes::configure)
                .configure(move |cfg| {
                    if let Some(sandbox) = sandbox {
                        sandbox::configure(cfg, sandbox);
                    }
                })
                .default_service(web::to(routes::not_found))
        })
        .shutdown_timeout(10)
        .client_request_timeout(settings.request_timeout)
        .listen(listener)?
        .run();
        Ok(Self { address, server })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT or SIGTERM, then drains in-flight requests.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// The address this process can reach itself at: a wildcard bind is
/// reached through loopback.
fn reachable(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, bound.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, bound.port()).into(),
        _ => bound,
    }
}

fn announce(settings: &Settings, address: SocketAddr) {
    match settings.mode {
        Mode::Live => tracing::info!(
            %address,
            store = settings.store.kind(),
            graph_url = %settings.graph.base_url,
            graph_version = %settings.graph.version,
            "waverify listening in live mode"
        ),
        Mode::Sandbox => {
            tracing::warn!(
                %address,
                store = settings.store.kind(),
                "waverify listening in SANDBOX mode: WAVERIFY_ACCESS_TOKEN is not set, so messages go to \
                 a local stand-in of the Graph API and nothing leaves this machine"
            );
            for variable in &settings.development_defaults {
                tracing::info!(variable, "unset: using its sandbox development value (see README)");
            }
        }
    }
}
