//! Checks of the settings both APIs have alike.

use std::net::SocketAddr;

use herald_protocol::ConfigError;

/// Refuses an HTTP and a gRPC listener on the same fixed port; `section` (`publisher`,
/// `presence`) names the keys. Port 0 (any free port, in tests) is allowed on both.
pub fn distinct_listeners(section: &str, http: SocketAddr, grpc: SocketAddr) -> Result<(), ConfigError> {
    if http == grpc && http.port() != 0 {
        return Err(ConfigError::new(
            format!("{section}.grpc_listen"),
            format!("{grpc} is already {section}.http_listen; they need different ports"),
        ));
    }
    Ok(())
}
