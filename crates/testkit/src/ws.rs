//! A WebSocket test client speaking Herald's JSON protocol.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long helpers wait for an expected frame.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to `url` (`ws://host:port/ws?token=...`) and returns the client together with
    /// the server's `connected` frame.
    pub async fn connect(url: &str) -> anyhow::Result<(Self, Value)> {
        let mut client = Self::connect_raw(url).await?;
        let hello = client.recv().await?;
        anyhow::ensure!(hello["type"] == "connected", "expected connected, got {hello}");
        Ok((client, hello))
    }

    /// Connects without reading anything.
    pub async fn connect_raw(url: &str) -> anyhow::Result<Self> {
        let request = url.into_client_request()?;
        Self::connect_request(request).await
    }

    /// Connects with a prepared request (for headers).
    pub async fn connect_request(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> anyhow::Result<Self> {
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request)).await??;
        Ok(Self { ws })
    }

    pub async fn send_json(&mut self, frame: Value) -> anyhow::Result<()> {
        self.send_text(frame.to_string()).await
    }

    pub async fn send_text(&mut self, text: String) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) -> anyhow::Result<()> {
        self.ws.send(Message::binary(data)).await?;
        Ok(())
    }

    /// The next JSON text frame (pings and pongs are skipped).
    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        self.recv_within(TIMEOUT).await
    }

    pub async fn recv_within(&mut self, wait: Duration) -> anyhow::Result<Value> {
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next())
                .await
                .map_err(|_| anyhow::anyhow!("no frame within {wait:?}"))?
                .ok_or_else(|| anyhow::anyhow!("connection ended"))??;
            match msg {
                Message::Text(t) => return Ok(serde_json::from_str(&t)?),
                Message::Close(c) => anyhow::bail!("closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Sends `frame` and returns the reply: the next frame that is not pushed on the server's
    /// own accord (`message`, `join`, `leave`), since those may arrive at any point, even a
    /// client's own join on a channel it subscribed to just before.
    pub async fn request(&mut self, frame: Value) -> anyhow::Result<Value> {
        self.send_json(frame).await?;
        loop {
            let v = self.recv().await?;
            if !matches!(v["type"].as_str(), Some("message" | "join" | "leave")) {
                return Ok(v);
            }
        }
    }

    /// Subscribes and asserts the server confirmed it.
    pub async fn subscribe(&mut self, channel: &str) -> anyhow::Result<()> {
        let reply = self.request(serde_json::json!({"type": "subscribe", "channel": channel})).await?;
        anyhow::ensure!(reply["type"] == "subscribed", "subscribe {channel}: {reply}");
        Ok(())
    }

    /// Reads until the server closes the connection, returning its close frame. Text frames
    /// before the close are skipped.
    pub async fn closed(&mut self) -> anyhow::Result<Closed> {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .map_err(|_| anyhow::anyhow!("not closed within {TIMEOUT:?}"))?;
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Ok(Closed { code: u16::from(frame.code), reason: frame.reason.to_string() });
                }
                Some(Ok(Message::Close(None))) | None => {
                    return Ok(Closed { code: u16::from(CloseCode::Status), reason: String::new() });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => anyhow::bail!("connection failed before a close frame: {e}"),
            }
        }
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// The underlying stream, for tests that misbehave on purpose.
    pub fn into_inner(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.ws
    }
}
