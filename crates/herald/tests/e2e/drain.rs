//! Graceful drain with real processes: SIGTERM to a `herald gateway` holding 1000 clients.

use std::time::{Duration, Instant};

use crate::common::{GatewayProcess, recv_messages};
use futures_util::future::join_all;
use herald_testkit::{RedisServer, WsClient};

const WINDOW: Duration = Duration::from_secs(3);

/// On SIGTERM a gateway closes each of its 1000 clients with 1012 at a moment spread over the
/// drain window (no reconnect stampede), exits 0 within the window plus the close timeout,
/// and the other gateway keeps serving throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_gateway_spread_over_the_window() {
    let redis = RedisServer::start().await;
    let mut draining = GatewayProcess::start(&redis.url(), &[("HERALD_GATEWAY__DRAIN_WINDOW", "3s")]).await;
    let staying = GatewayProcess::start(&redis.url(), &[]).await;

    let mut clients = Vec::new();
    for chunk in 0..10 {
        let urls: Vec<String> = (0..100).map(|i| draining.url(&format!("d{chunk}-{i}"))).collect();
        for result in join_all(urls.iter().map(|url| WsClient::connect(url))).await {
            clients.push(result.unwrap().0);
        }
    }
    let (mut survivor, _) = WsClient::connect(&staying.url("survivor")).await.unwrap();
    survivor.subscribe("room:d").await.unwrap();

    let started = Instant::now();
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut client| tokio::spawn(async move { (client.closed().await, started.elapsed()) }))
        .collect();
    draining.terminate();

    let deadline = started + WINDOW + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = draining.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the gateway did not exit within the drain window");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() <= WINDOW + Duration::from_secs(2), "exited after {:?}", started.elapsed());

    let mut moments = Vec::new();
    for close in join_all(closes).await {
        let (closed, at) = close.unwrap();
        let closed = closed.unwrap();
        assert_eq!(closed.code, 1012, "{closed:?}");
        assert!(at <= WINDOW + Duration::from_secs(1), "closed after {at:?}");
        moments.push(at);
    }
    moments.sort();
    let spread = moments[moments.len() - 1] - moments[0];
    assert!(spread >= WINDOW / 2, "closes spread over only {spread:?}");
    let first_second = moments.iter().filter(|m| **m < Duration::from_secs(1)).count();
    assert!(first_second < 600, "{first_second} of 1000 closes in the first second");

    let broker = herald_broker::RedisBroker::new(herald_broker::RedisConfig {
        url: redis.url(),
        ..Default::default()
    })
    .unwrap();
    let channel = herald_protocol::ChannelName::parse("room:d").unwrap();
    let data = serde_json::value::RawValue::from_string("\"still here\"".into()).unwrap();
    let frame = herald_protocol::Publication::new(&channel, &data, None).unwrap().encode();
    herald_broker::Broker::publish(&broker, &channel, frame).await.unwrap();
    assert_eq!(recv_messages(&mut survivor, 1).await[0]["data"], "still here");
}
