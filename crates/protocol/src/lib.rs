//! The vocabulary every Herald service and client shares.
//!
//! Layout, from the wire inwards:
//! - [`frame`]: the JSON frames a WebSocket client sends ([`ClientFrame`]) and the frames the
//!   gateway sends back ([`ServerFrame`]), with their parsing errors.
//! - [`publication`]: a message on its way through the broker. It is encoded once, by whoever
//!   publishes it, into the exact bytes every subscriber receives ([`Publication::encode`]).
//! - [`channel`] and [`user`]: validated names ([`ChannelName`], [`UserId`]). They are parsed
//!   once at the edge and are valid everywhere after.
//! - [`pattern`]: the globs of pattern subscriptions ([`ChannelPattern`]), Redis's syntax
//!   narrowed to what every engine matches alike.
//! - [`namespace`]: what clients may do in each channel namespace ([`Namespaces`]).
//! - [`history`]: which channels keep history ([`InboxConfig`] for personal channels,
//!   [`HistoryConfig`] for the limits) and the positions clients resume from ([`Since`]).
//! - [`events`]: the backends' event stream (`[events]`): which events go into it, under which
//!   Redis key, and how long it is.
//! - [`api_key`]: the API keys backends present to the publisher and presence APIs.
//! - [`config_error`]: [`ConfigError`], what every configuration check returns: the key to fix
//!   and what is wrong with it.
//! - [`observer`]: [`ConnectionObserver`], the seam through which presence learns of a
//!   gateway's connections and subscriptions.
//! - [`support`]: helpers every service uses the same way (config lists, shrinking maps).
//! - [`error`]: the one list of error codes, each mapped to its HTTP status, gRPC code and
//!   WebSocket close code.

pub mod api_key;
pub mod channel;
pub mod config_error;
pub mod error;
pub mod events;
pub mod frame;
pub mod history;
pub mod name;
pub mod namespace;
pub mod observer;
pub mod pattern;
pub mod publication;
pub mod support;
pub mod user;

pub use api_key::ApiKeys;
pub use channel::{BROADCAST_CHANNEL, ChannelKind, ChannelName, InvalidName, PERSONAL_NAMESPACE};
pub use config_error::ConfigError;
pub use error::{CloseCode, ErrorCode};
pub use events::{EventKind, EventsConfig, presence_part_tag};
pub use frame::{ClientFrame, FrameError, InboxState, RequestId, ServerFrame, StreamState};
pub use history::{ChannelHistory, HistoryConfig, InboxConfig, Position, Since};
pub use namespace::{DEFAULT_NAMESPACE, INTERNAL_NAMESPACE, NamespaceConfig, Namespaces};
pub use observer::{ConnectionInfo, ConnectionObserver, NoObserver};
pub use pattern::{ChannelPattern, InvalidPattern};
pub use publication::{Publication, PublicationError};
pub use user::UserId;
