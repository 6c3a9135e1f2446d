//! The one error of every configuration check: which key to fix, and what is wrong with it.
//!
//! Every `validate()` of every crate returns it, so a bad value stops start-up with
//! `key: problem`, the key spelled as in the configuration file (`publisher.api_keys[1]`,
//! `redis.url`), whichever crate found the problem.

use std::fmt;

/// A configuration value Herald cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// The key as written in the configuration file, dotted from its section:
    /// `gateway.ping_interval`, `namespaces.chat`, `publisher.api_keys[0]`.
    pub key: String,
    /// What is wrong with the value and, where it helps, what would be right. Any underlying
    /// parse error is part of it: a configuration error is read by people, not matched on.
    pub problem: String,
}

impl ConfigError {
    /// The error for `key`: `ConfigError::new("redis.response_timeout", "must be greater than 0")`.
    pub fn new(key: impl Into<String>, problem: impl fmt::Display) -> Self {
        Self { key: key.into(), problem: problem.to_string() }
    }

    /// The key to fix.
    pub fn key(&self) -> &str {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_the_key_then_the_problem() {
        let e = ConfigError::new("publisher.max_batch", "must be greater than 0");
        assert_eq!(e.key(), "publisher.max_batch");
        assert_eq!(e.to_string(), "publisher.max_batch: must be greater than 0");
    }
}
