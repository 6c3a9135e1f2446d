//! Finding the current master through Redis Sentinel.
//!
//! With `redis.sentinel_master` set, every connection Herald makes to Redis (publishing, each
//! gateway's Pub/Sub reader, presence) first asks the sentinels where the master is, and asks
//! again whenever that connection has to be re-established. After a failover the old
//! connections break, and the reconnects find the new master.

use super::RedisConfig;
use super::resp::PubSubConn;

/// Where commands go now: the URL's host and port, or the master the sentinels name.
pub async fn current_address(config: &RedisConfig, url_addr: (&str, u16)) -> Result<(String, u16), String> {
    let Some(master) = &config.sentinel_master else {
        return Ok((url_addr.0.to_string(), url_addr.1));
    };
    let mut last_error = String::from("no sentinel configured");
    for sentinel in &config.sentinel_addresses {
        match ask(sentinel, master, config).await {
            Ok(addr) => return Ok(addr),
            Err(e) => last_error = format!("sentinel {sentinel}: {e}"),
        }
    }
    Err(last_error)
}

/// `SENTINEL get-master-addr-by-name` on one sentinel, authenticated when the sentinels have
/// a password.
async fn ask(sentinel: &str, master: &str, config: &RedisConfig) -> Result<(String, u16), String> {
    let (host, port) = split_addr(sentinel)?;
    let query = async {
        let (user, password) = (config.sentinel_username.as_deref(), config.sentinel_password.as_deref());
        let mut conn = PubSubConn::connect(&host, port, user, password).await.map_err(|e| e.to_string())?;
        conn.send(&[b"SENTINEL", b"get-master-addr-by-name", master.as_bytes()])
            .await
            .map_err(|e| e.to_string())?;
        let reply = conn.reply_strings().await.map_err(|e| e.to_string())?;
        match reply.as_deref() {
            Some([host, port]) => {
                let host = String::from_utf8_lossy(host).into_owned();
                let port =
                    String::from_utf8_lossy(port).parse().map_err(|_| "invalid port in reply".to_string())?;
                Ok((host, port))
            }
            _ => Err(format!("does not know a master named {master:?}")),
        }
    };
    tokio::time::timeout(config.connect_timeout, query).await.map_err(|_| "timed out".to_string())?
}

/// `host:port`.
pub fn split_addr(addr: &str) -> Result<(String, u16), String> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("{addr:?} is not host:port"))?;
    let port = port.parse().map_err(|_| format!("{addr:?} has an invalid port"))?;
    if host.is_empty() {
        return Err(format!("{addr:?} has no host"));
    }
    Ok((host.to_string(), port))
}
