//! The roles the `herald` binary runs. Each binds its listeners, logs `herald started` with
//! their addresses, serves until `shutdown` resolves and then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use herald_broker::{Broker, MemoryBroker, RedisBroker};
use herald_gateway::{ChannelConfig, ConnectionObserver, Gateway, NoObserver};
use herald_presence::{GrpcTransport, LocalTransport, MemoryStore, PresenceApi, RedisStore, Reporter};
use herald_protocol::ConfigError;
use herald_publisher_api::PublisherApi;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The version in `herald started`, as `herald_build_info` has it.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Gateway, publisher API and presence in one process on the in-memory engines: no Redis needed.
pub async fn standalone(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate_gateway()?;
    config.validate_publisher()?;
    config.validate_presence()?;
    config.validate_standalone()?;
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    run_both(config, broker, shutdown).await
}

/// The WebSocket gateway on Redis.
pub async fn gateway(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate_gateway()?;
    let broker = redis_broker(&config)?;
    let listener = bind(config.gateway.listen, "gateway.listen").await?;
    let reporter = match &config.presence.endpoint {
        Some(endpoint) => {
            config.validate_presence()?;
            let key = config.presence.report_key(&config.publisher.api_keys).ok_or_else(|| {
                ConfigError::new(
                    "presence.keys",
                    "gateways need a key to present: one in presence.api_keys, or a [[presence.keys]] \
                     given as `key` (a `key_sha256` cannot be presented)",
                )
            })?;
            let transport = GrpcTransport::new(endpoint, &key, &config.presence.client_tls)?;
            tracing::info!(%endpoint, "reporting presence");
            Some(Reporter::spawn(config.presence.clone(), config.namespaces.clone(), Arc::new(transport)))
        }
        None => None,
    };
    let observer: Arc<dyn ConnectionObserver> = match &reporter {
        Some(reporter) => Arc::new(reporter.clone()),
        None => Arc::new(NoObserver),
    };
    let channels = ChannelConfig {
        namespaces: config.namespaces,
        inbox: config.inbox,
        history: config.history,
        events: config.events,
    };
    let gateway = Gateway::with_observer(config.gateway, &config.auth, channels, broker, observer)?;
    tracing::info!(
        role = "gateway",
        version = VERSION,
        engine = "redis",
        gateway.listen = %listener.local_addr()?,
        "herald started"
    );
    let served = herald_gateway::serve(gateway, listener, shutdown).await;
    if let Some(reporter) = reporter {
        reporter.shutdown().await;
    }
    served?;
    Ok(())
}

/// The presence service (HTTP and gRPC) on Redis: gateways report to it, backends query it.
/// Run two or more for availability; each transition is still emitted once.
pub async fn presence(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate_presence()?;
    let broker = redis_broker(&config)?;
    let (timings, parts) = (config.presence.timings(), config.presence.parts);
    let store = RedisStore::with_parts(config.redis.clone(), timings, &config.events, parts)?;
    let http = bind(config.presence.http_listen, "presence.http_listen").await?;
    let grpc = bind(config.presence.grpc_listen, "presence.grpc_listen").await?;
    let keys = config.presence_keys();
    let parts = store.parts();
    let api = PresenceApi::new(config.presence, &keys, config.namespaces, Arc::new(store), broker)?;
    tracing::info!(
        role = "presence",
        version = VERSION,
        engine = "redis",
        presence.parts = parts,
        presence.http_listen = %http.local_addr()?,
        presence.grpc_listen = %grpc.local_addr()?,
        "herald started"
    );
    herald_presence::serve(api, http, grpc, shutdown).await?;
    Ok(())
}

/// The publisher API (HTTP and gRPC) on Redis.
pub async fn publisher(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate_publisher()?;
    let broker = redis_broker(&config)?;
    let http = bind(config.publisher.http_listen, "publisher.http_listen").await?;
    let grpc = bind(config.publisher.grpc_listen, "publisher.grpc_listen").await?;
    let api = PublisherApi::new(config.publisher, config.namespaces, config.inbox, config.history, broker);
    tracing::info!(
        role = "publisher-api",
        version = VERSION,
        engine = "redis",
        publisher.http_listen = %http.local_addr()?,
        publisher.grpc_listen = %grpc.local_addr()?,
        "herald started"
    );
    herald_publisher_api::serve(api, http, grpc, shutdown).await?;
    Ok(())
}

async fn run_both(
    config: Config,
    broker: Arc<dyn Broker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let gateway_listener = bind(config.gateway.listen, "gateway.listen").await?;
    let http = bind(config.publisher.http_listen, "publisher.http_listen").await?;
    let grpc = bind(config.publisher.grpc_listen, "publisher.grpc_listen").await?;
    let presence_http = bind(config.presence.http_listen, "presence.http_listen").await?;
    let presence_grpc = bind(config.presence.grpc_listen, "presence.grpc_listen").await?;
    let store = Arc::new(MemoryStore::new(config.presence.timings()));
    let keys = config.presence_keys();
    let presence =
        PresenceApi::new(config.presence.clone(), &keys, config.namespaces.clone(), store, broker.clone())?;
    let transport = Arc::new(LocalTransport(presence.service().clone()));
    let reporter = Reporter::spawn(config.presence.clone(), config.namespaces.clone(), transport);
    let channels = ChannelConfig {
        namespaces: config.namespaces.clone(),
        inbox: config.inbox.clone(),
        history: config.history.clone(),
        events: config.events.clone(),
    };
    let gateway = Gateway::with_observer(
        config.gateway,
        &config.auth,
        channels,
        broker.clone(),
        Arc::new(reporter.clone()),
    )?;
    let api = PublisherApi::new(
        config.publisher,
        config.namespaces,
        config.inbox.clone(),
        config.history.clone(),
        broker,
    );
    tracing::info!(
        role = "standalone",
        version = VERSION,
        engine = "memory",
        gateway.listen = %gateway_listener.local_addr()?,
        publisher.http_listen = %http.local_addr()?,
        publisher.grpc_listen = %grpc.local_addr()?,
        presence.http_listen = %presence_http.local_addr()?,
        presence.grpc_listen = %presence_grpc.local_addr()?,
        "herald started"
    );
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    let (g, p, r) = tokio::join!(
        async {
            let served =
                herald_gateway::serve(gateway, gateway_listener, stop.clone().cancelled_owned()).await;
            reporter.shutdown().await;
            served
        },
        herald_publisher_api::serve(api, http, grpc, stop.clone().cancelled_owned()),
        herald_presence::serve(presence, presence_http, presence_grpc, stop.clone().cancelled_owned()),
    );
    g?;
    p?;
    r?;
    Ok(())
}

fn redis_broker(config: &Config) -> anyhow::Result<Arc<dyn Broker>> {
    let broker = RedisBroker::new(config.redis.clone())?;
    Ok(Arc::new(broker))
}

/// Pending connections a listener queues before the kernel drops SYNs (capped by
/// `net.core.somaxconn`). The default of 128 overflowed in connection bursts (a reconnect wave,
/// `herald bench idle`) and each dropped SYN costs its client a one-second retransmission.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| format!("{key}: cannot listen on {addr}"))
}
