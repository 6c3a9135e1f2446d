//! The shared multiplexed connection ([`LazyConnection`]) against a real redis-server: it
//! opens on first use, survives a command Redis refuses, and after Redis went away and came
//! back the next call finds it again.

use herald_broker::RedisConfig;
use herald_broker::redis::{Endpoint, LazyConnection, QueryError};
use herald_testkit::RedisServer;

async fn client_id(redis: &LazyConnection) -> Result<i64, QueryError> {
    let mut pipe = redis::pipe();
    pipe.cmd("CLIENT").arg("ID");
    let (id,): (i64,) = redis.query(&pipe).await?;
    Ok(id)
}

/// One connection serves every call until it breaks; a refused command does not drop it, a
/// restart of Redis does, and the call after the failure connects again.
#[tokio::test]
async fn reconnects_after_redis_comes_back_and_only_then() {
    let mut server = RedisServer::start().await;
    let config = RedisConfig { url: server.url(), ..Default::default() };
    let redis = LazyConnection::new(Endpoint::new(config).unwrap());
    let first = client_id(&redis).await.unwrap();
    assert_eq!(client_id(&redis).await.unwrap(), first, "a second call opened another connection");

    let mut refused = redis::pipe();
    refused.cmd("NO-SUCH-COMMAND");
    let error = redis.query::<()>(&refused).await.unwrap_err();
    assert!(matches!(error, QueryError::Command(_)), "{error}");
    assert_eq!(client_id(&redis).await.unwrap(), first, "a refused command dropped the connection");

    server.kill().await;
    assert!(client_id(&redis).await.is_err(), "a call succeeded with Redis down");
    server.restart().await;
    // The failure above dropped the broken connection, so this call opens a new one.
    client_id(&redis).await.expect("no new connection after Redis came back");
}
