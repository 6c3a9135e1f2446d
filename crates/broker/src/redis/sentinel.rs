//! Finding the current master through Redis Sentinel.
//!
//! With `redis.sentinel_master` set, every connection Herald makes to Redis (publishing, each
//! gateway's Pub/Sub reader, presence) first asks the sentinels where the master is, and asks
//! again whenever that connection has to be re-established. After a failover the old
//! connections break, and the reconnects find the new master.

use super::RedisConfig;
use super::resp::{PubSubConn, RespError};

/// Why the sentinels did not name a master: what the last sentinel asked answered.
#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    /// `redis.sentinel_master` is set without sentinels (validation refuses that).
    #[error("no sentinel configured")]
    NoSentinel,
    /// Every sentinel failed; this is the last one's failure.
    #[error("sentinel {sentinel}: {source}")]
    Ask {
        sentinel: String,
        #[source]
        source: AskError,
    },
}

/// Why one sentinel did not name the master.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error(transparent)]
    Address(#[from] AddrError),
    #[error(transparent)]
    Resp(#[from] RespError),
    #[error("invalid port in reply")]
    InvalidPort,
    #[error("does not know a master named {0:?}")]
    UnknownMaster(String),
    #[error("timed out")]
    Timeout,
}

/// Why an address is not `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("{0:?} is not host:port")]
    NotHostPort(String),
    #[error("{0:?} has an invalid port")]
    InvalidPort(String),
    #[error("{0:?} has no host")]
    NoHost(String),
}

/// Where commands go now: the URL's host and port, or the master the sentinels name.
pub async fn current_address(
    config: &RedisConfig,
    url_addr: (&str, u16),
) -> Result<(String, u16), SentinelError> {
    let Some(master) = &config.sentinel_master else {
        return Ok((url_addr.0.to_string(), url_addr.1));
    };
    let mut last_error = SentinelError::NoSentinel;
    for sentinel in &config.sentinel_addresses {
        match ask(sentinel, master, config).await {
            Ok(addr) => return Ok(addr),
            Err(source) => last_error = SentinelError::Ask { sentinel: sentinel.clone(), source },
        }
    }
    Err(last_error)
}

/// `SENTINEL get-master-addr-by-name` on one sentinel, authenticated when the sentinels have
/// a password.
async fn ask(sentinel: &str, master: &str, config: &RedisConfig) -> Result<(String, u16), AskError> {
    let (host, port) = split_addr(sentinel)?;
    let query = async {
        let (user, password) = (config.sentinel_username.as_deref(), config.sentinel_password.as_deref());
        let mut conn = PubSubConn::connect(&host, port, user, password).await?;
        conn.send(&[b"SENTINEL", b"get-master-addr-by-name", master.as_bytes()]).await?;
        let reply = conn.reply_strings().await?;
        match reply.as_deref() {
            Some([host, port]) => {
                let host = String::from_utf8_lossy(host).into_owned();
                let port = String::from_utf8_lossy(port).parse().map_err(|_| AskError::InvalidPort)?;
                Ok((host, port))
            }
            _ => Err(AskError::UnknownMaster(master.to_string())),
        }
    };
    tokio::time::timeout(config.connect_timeout, query).await.map_err(|_| AskError::Timeout)?
}

/// `host:port`.
pub fn split_addr(addr: &str) -> Result<(String, u16), AddrError> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| AddrError::NotHostPort(addr.to_string()))?;
    let port = port.parse().map_err(|_| AddrError::InvalidPort(addr.to_string()))?;
    if host.is_empty() {
        return Err(AddrError::NoHost(addr.to_string()));
    }
    Ok((host.to_string(), port))
}
