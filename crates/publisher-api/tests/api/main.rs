//! End-to-end tests of the publisher API: the real HTTP and gRPC servers on port 0, spoken to
//! over the wire, publishing into a real broker whose deliveries a test node collects.

mod grpc;
mod helpers;
mod history;
mod http;
mod keys;
mod limits;
mod load;
mod mtls;
mod ops;
mod outage;
mod shutdown;
mod truth;
