//! The roles the `herald` binary runs. Each binds its listeners, serves until `shutdown`
//! resolves and then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use herald_broker::{Broker, MemoryBroker, RedisBroker};
use herald_gateway::Gateway;
use herald_publisher_api::PublisherApi;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Gateway and publisher API in one process on the in-memory broker: no Redis needed.
pub async fn standalone(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate_gateway().map_err(anyhow::Error::msg)?;
    config.validate_publisher().map_err(anyhow::Error::msg)?;
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    tracing::info!("standalone mode: gateway and publisher API on the in-memory broker");
    run_both(config, broker, shutdown).await
}

/// The WebSocket gateway on Redis.
pub async fn gateway(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate_gateway().map_err(anyhow::Error::msg)?;
    let broker = redis_broker(&config)?;
    let listener = bind(config.gateway.listen, "gateway.listen").await?;
    let gateway =
        Gateway::new(config.gateway, &config.auth, config.namespaces, broker).map_err(anyhow::Error::msg)?;
    herald_gateway::serve(gateway, listener, shutdown).await?;
    Ok(())
}

/// The publisher API (HTTP and gRPC) on Redis.
pub async fn publisher(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate_publisher().map_err(anyhow::Error::msg)?;
    let broker = redis_broker(&config)?;
    let http = bind(config.publisher.http_listen, "publisher.http_listen").await?;
    let grpc = bind(config.publisher.grpc_listen, "publisher.grpc_listen").await?;
    let api = PublisherApi::new(config.publisher, config.namespaces, broker);
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
    let gateway = Gateway::new(config.gateway, &config.auth, config.namespaces.clone(), broker.clone())
        .map_err(anyhow::Error::msg)?;
    let api = PublisherApi::new(config.publisher, config.namespaces, broker);
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    let (g, p) = tokio::join!(
        herald_gateway::serve(gateway, gateway_listener, stop.clone().cancelled_owned()),
        herald_publisher_api::serve(api, http, grpc, stop.clone().cancelled_owned()),
    );
    g?;
    p?;
    Ok(())
}

fn redis_broker(config: &Config) -> anyhow::Result<Arc<dyn Broker>> {
    let broker = RedisBroker::new(config.redis.clone()).context("redis.url")?;
    Ok(Arc::new(broker))
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("{key}: cannot listen on {addr}"))
}
