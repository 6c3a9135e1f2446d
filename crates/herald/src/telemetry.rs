//! Structured logs through `tracing`, and panics logged through them too.

use herald_protocol::ConfigError;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber, writing to standard output. `RUST_LOG`, when set,
/// overrides `log.level`. Fails, naming the key, when the filter is not valid.
pub fn init(config: &LogConfig) -> Result<(), ConfigError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => {
            EnvFilter::try_new(env).map_err(|e| ConfigError::new("RUST_LOG", e.to_string()))?
        }
        _ => EnvFilter::try_new(&config.level).map_err(|e| ConfigError::new("log.level", e.to_string()))?,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
    log_panics();
    Ok(())
}

/// Logs a panic as an error line in the configured format, instead of the plain text the
/// default hook writes to standard error. A panic in a connection's task ends only that task,
/// so this is the only trace it leaves; the backtrace is included when `RUST_BACKTRACE` asks
/// for one.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let backtrace = std::backtrace::Backtrace::capture();
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(panic = message, location, thread, backtrace = %backtrace, "panic");
        } else {
            tracing::error!(panic = message, location, thread, "panic");
        }
    }));
}
