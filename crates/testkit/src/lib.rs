//! Test harness shared by Herald's integration tests: real `redis-server` processes on free
//! ports (that tests kill and restart to cause real outages), a real Redis Cluster of six of
//! them ([`RedisCluster`]), and WebSocket test clients.

mod redis_cluster;
mod redis_server;
mod ws;

pub use redis_cluster::RedisCluster;
pub use redis_server::{Frozen, RedisSentinel, RedisServer};
pub use ws::{Closed, WsClient};

/// A free TCP port on 127.0.0.1, found by binding port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process (a `herald` role, say) that is killed when this is dropped, so a failing
/// test leaves nothing running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
