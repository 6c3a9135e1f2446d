//! The gRPC transport: the generated `herald.v1.Presence` service over the same
//! [`PresenceService`](crate::PresenceService) as HTTP, and [`GrpcTransport`], the client
//! gateways report through. `pb` types are converted to domain types here, at the edge.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use herald_api_common::auth::Operation;
pub use herald_api_common::auth::RequireApiKey;
use herald_api_common::client_tls::ClientTlsConfig;
use herald_protocol::{ChannelName, ConfigError, ErrorCode, UserId};
use serde_json::value::RawValue;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::Shared;
use crate::error::ApiError;
use crate::model::{
    Ack, Change, ChannelPresence, ConnState, Info, Member, Report, ReportBody, Stats, UserPresence,
};
use crate::pb;
use crate::reporter::{ReportError, Transport};

/// Largest gRPC message accepted: a full-state report of a busy gateway.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

pub type GrpcService = InterceptedService<pb::presence_server::PresenceServer<GrpcPresence>, RequireApiKey>;

pub(crate) fn service(shared: Arc<Shared>) -> GrpcService {
    let counted = shared.clone();
    let keys = RequireApiKey::new(shared.keys.clone())
        .on_refused(move || counted.service.metrics().keys.record(None, ErrorCode::Unauthorized.as_str()));
    let server = pb::presence_server::PresenceServer::new(GrpcPresence { shared })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    InterceptedService::new(server, keys)
}

#[derive(Clone)]
pub struct GrpcPresence {
    shared: Arc<Shared>,
}

impl GrpcPresence {
    /// Runs `work` if the call's key may use `operation` (on `channel`), and counts the call
    /// under its key and outcome, as the HTTP middleware does.
    async fn authorized<M, T>(
        &self,
        request: &Request<M>,
        operation: Operation,
        channel: Option<&str>,
        work: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<Response<T>, Status> {
        let (caller, result) = match herald_api_common::auth::caller(request) {
            Ok(caller) => {
                let result = match self.shared.authorize(&caller, operation, channel) {
                    Ok(()) => work.await,
                    Err(e) => Err(e),
                };
                (Some(caller), result)
            }
            Err(e) => (None, Err(ApiError::from(e))),
        };
        let outcome = result.as_ref().map_or_else(|e| e.code().as_str(), |_| "ok");
        self.shared.service.metrics().keys.record(caller.as_ref().map(|c| c.name()), outcome);
        Ok(Response::new(result?))
    }
}

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidChannel, message)
}

fn info(value: &Option<String>, at: &str) -> Result<Info, ApiError> {
    match value {
        None => Ok(None),
        Some(text) => RawValue::from_string(text.clone())
            .map(|raw| Some(Arc::from(raw.get())))
            .map_err(|e| ApiError::new(ErrorCode::MalformedFrame, format!("{at}.info: not JSON: {e}"))),
    }
}

fn user(value: &str, at: &str) -> Result<UserId, ApiError> {
    UserId::parse(value).map_err(|e| invalid(format!("{at}.user: invalid user id {value:?}: {e}")))
}

fn channel(value: &str, at: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(value)
        .map_err(|e| invalid(format!("{at}.channel: invalid channel name {value:?}: {e}")))
}

impl TryFrom<&pb::ReportRequest> for Report {
    type Error = ApiError;
    fn try_from(m: &pb::ReportRequest) -> Result<Self, ApiError> {
        if m.gateway.is_empty() || m.gateway.len() > 128 {
            return Err(ApiError::new(ErrorCode::MalformedFrame, "gateway: 1 to 128 bytes"));
        }
        let body = if m.full {
            let conns = m
                .connections
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let at = format!("connections[{i}]");
                    let channels = c.channels.iter().map(|ch| channel(ch, &at)).collect::<Result<_, _>>()?;
                    Ok(ConnState {
                        conn: c.conn,
                        user: user(&c.user, &at)?,
                        info: info(&c.info, &at)?,
                        channels,
                    })
                })
                .collect::<Result<_, ApiError>>()?;
            ReportBody::Full(conns)
        } else {
            use pb::change::Kind;
            let changes = m
                .changes
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let at = format!("changes[{i}]");
                    Ok(match Kind::try_from(c.kind).unwrap_or(Kind::Unspecified) {
                        Kind::Connect => Change::Connect {
                            conn: c.conn,
                            user: user(&c.user, &at)?,
                            info: info(&c.info, &at)?,
                        },
                        Kind::Disconnect => Change::Disconnect { conn: c.conn, user: user(&c.user, &at)? },
                        Kind::Subscribe => Change::Subscribe {
                            conn: c.conn,
                            user: user(&c.user, &at)?,
                            channel: channel(&c.channel, &at)?,
                        },
                        Kind::Unsubscribe => Change::Unsubscribe {
                            conn: c.conn,
                            user: user(&c.user, &at)?,
                            channel: channel(&c.channel, &at)?,
                        },
                        Kind::Unspecified => {
                            return Err(ApiError::new(
                                ErrorCode::MalformedFrame,
                                format!("{at}.kind: unknown"),
                            ));
                        }
                    })
                })
                .collect::<Result<_, ApiError>>()?;
            ReportBody::Changes(changes)
        };
        Ok(Report { gateway: m.gateway.as_str().into(), seq: m.seq, body })
    }
}

impl From<&Report> for pb::ReportRequest {
    fn from(r: &Report) -> Self {
        use pb::change::Kind;
        let mut m = pb::ReportRequest { gateway: r.gateway.to_string(), seq: r.seq, ..Default::default() };
        let info = |i: &Info| i.as_deref().map(String::from);
        match &r.body {
            ReportBody::Full(conns) => {
                m.full = true;
                m.connections = conns
                    .iter()
                    .map(|c| pb::Connection {
                        conn: c.conn,
                        user: c.user.to_string(),
                        info: info(&c.info),
                        channels: c.channels.iter().map(|ch| ch.to_string()).collect(),
                    })
                    .collect();
            }
            ReportBody::Changes(changes) => {
                m.changes = changes
                    .iter()
                    .map(|c| match c {
                        Change::Connect { conn, user, info: i } => pb::Change {
                            kind: Kind::Connect.into(),
                            conn: *conn,
                            user: user.to_string(),
                            info: info(i),
                            ..Default::default()
                        },
                        Change::Disconnect { conn, user } => pb::Change {
                            kind: Kind::Disconnect.into(),
                            conn: *conn,
                            user: user.to_string(),
                            ..Default::default()
                        },
                        Change::Subscribe { conn, user, channel } => pb::Change {
                            kind: Kind::Subscribe.into(),
                            conn: *conn,
                            user: user.to_string(),
                            channel: channel.to_string(),
                            ..Default::default()
                        },
                        Change::Unsubscribe { conn, user, channel } => pb::Change {
                            kind: Kind::Unsubscribe.into(),
                            conn: *conn,
                            user: user.to_string(),
                            channel: channel.to_string(),
                            ..Default::default()
                        },
                    })
                    .collect();
            }
        }
        m
    }
}

impl From<UserPresence> for pb::UserPresence {
    fn from(u: UserPresence) -> Self {
        pb::UserPresence {
            user: u.user.to_string(),
            online: u.online,
            connections: u.connections,
            gateways: u.gateways,
        }
    }
}

impl From<ChannelPresence> for pb::ChannelPresence {
    fn from(c: ChannelPresence) -> Self {
        pb::ChannelPresence {
            channel: c.channel.to_string(),
            count: c.count,
            members: c
                .members
                .into_iter()
                .map(|m| pb::Member {
                    user: m.user.to_string(),
                    connections: m.connections,
                    info: m.info.as_deref().map(String::from),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::ChannelPresence> for ChannelPresence {
    type Error = ErrorCode;
    fn try_from(c: pb::ChannelPresence) -> Result<Self, ErrorCode> {
        let members = c
            .members
            .into_iter()
            .map(|m| {
                Ok(Member {
                    user: UserId::parse(&m.user).map_err(|_| ErrorCode::Internal)?,
                    connections: m.connections,
                    info: m.info.map(Arc::from),
                })
            })
            .collect::<Result<_, ErrorCode>>()?;
        Ok(ChannelPresence {
            channel: ChannelName::parse(&c.channel).map_err(|_| ErrorCode::Internal)?,
            count: c.count,
            members,
        })
    }
}

impl From<Stats> for pb::Stats {
    fn from(s: Stats) -> Self {
        pb::Stats { online_users: s.online_users, connections: s.connections }
    }
}

#[tonic::async_trait]
impl pb::presence_server::Presence for GrpcPresence {
    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::UserPresence>, Status> {
        let work = async { Ok(self.shared.service.user(&request.get_ref().user).await?.into()) };
        self.authorized(&request, Operation::PresenceRead, None, work).await
    }

    async fn get_users(
        &self,
        request: Request<pb::GetUsersRequest>,
    ) -> Result<Response<pb::GetUsersReply>, Status> {
        let work = async {
            let users = self.shared.service.users(&request.get_ref().users).await?;
            Ok(pb::GetUsersReply { users: users.into_iter().map(Into::into).collect() })
        };
        self.authorized(&request, Operation::PresenceRead, None, work).await
    }

    async fn get_channel(
        &self,
        request: Request<pb::GetChannelRequest>,
    ) -> Result<Response<pb::ChannelPresence>, Status> {
        let m = request.get_ref();
        let work = async {
            let limit = m.limit.map(|l| l as usize);
            Ok(self.shared.service.channel(&m.channel, limit).await?.into())
        };
        self.authorized(&request, Operation::PresenceRead, Some(&m.channel), work).await
    }

    async fn get_stats(&self, request: Request<pb::GetStatsRequest>) -> Result<Response<pb::Stats>, Status> {
        let work = async { Ok(self.shared.service.stats().await?.into()) };
        self.authorized(&request, Operation::PresenceRead, None, work).await
    }

    async fn report(&self, request: Request<pb::ReportRequest>) -> Result<Response<pb::ReportReply>, Status> {
        let work = async {
            let report = Report::try_from(request.get_ref())?;
            let ack = self.shared.service.report(&report).await.map_err(ApiError::from)?;
            Ok(pb::ReportReply { resync: ack == Ack::Resync })
        };
        self.authorized(&request, Operation::PresenceReport, None, work).await
    }
}

/// The gateway's way to a remote presence service: a lazily connected gRPC channel (HTTP/2,
/// over TLS for an `https://` endpoint, reconnected by tonic), carrying the API key on every
/// call.
#[derive(Clone)]
pub struct GrpcTransport {
    client: pb::presence_client::PresenceClient<tonic::transport::Channel>,
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl GrpcTransport {
    /// Does not connect yet, so a gateway starts while presence is down. An `https://`
    /// `endpoint` is reached over TLS with `tls` (`presence.client_tls`), whose files are read
    /// now: a missing or broken one stops start-up naming its key.
    pub fn new(endpoint: &str, api_key: &str, tls: &ClientTlsConfig) -> Result<Self, ConfigError> {
        let tls = if endpoint.starts_with("https://") {
            Some(Arc::new(tls.rustls_config("presence.client_tls", &[b"h2"])?))
        } else if tls.is_set() {
            return Err(ConfigError::new(
                "presence.client_tls",
                "set, but presence.endpoint is not https://",
            ));
        } else {
            None
        };
        let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| ConfigError::new("presence.endpoint", e))?
            .connect_timeout(std::time::Duration::from_secs(2))
            .tcp_nodelay(true);
        let channel = herald_api_common::client_tls::grpc_channel(endpoint, tls, "presence.client_tls");
        let authorization = format!("Bearer {api_key}")
            .parse()
            .map_err(|_| ConfigError::new("presence.api_keys", "the key cannot travel in a header"))?;
        let client = pb::presence_client::PresenceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(Self { client, authorization })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert("authorization", self.authorization.clone());
        request
    }
}

impl Transport for GrpcTransport {
    fn report(&self, report: Report) -> BoxFuture<'static, Result<Ack, ReportError>> {
        let mut client = self.client.clone();
        let request = self.request(pb::ReportRequest::from(&report));
        async move {
            let reply = client.report(request).await?;
            Ok(if reply.get_ref().resync { Ack::Resync } else { Ack::Applied })
        }
        .boxed()
    }

    fn members(&self, channel: &ChannelName) -> BoxFuture<'static, Result<ChannelPresence, ErrorCode>> {
        let mut client = self.client.clone();
        let request = self.request(pb::GetChannelRequest { channel: channel.to_string(), limit: None });
        async move {
            match client.get_channel(request).await {
                Ok(reply) => ChannelPresence::try_from(reply.into_inner()),
                Err(status) => {
                    tracing::debug!(%status, "presence member list failed");
                    Err(ErrorCode::Unavailable)
                }
            }
        }
        .boxed()
    }
}
