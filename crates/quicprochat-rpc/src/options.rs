//! Tunables of the server and of the QUIC transport, with their defaults.

use std::time::Duration;

use crate::Error;
use crate::frame::DEFAULT_MAX_PAYLOAD;

/// QUIC transport settings shared by server and client configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportOptions {
    /// How many RPC streams one client may have open at once (server side). Default 256.
    pub max_concurrent_bidi_streams: u32,
    /// A connection with no traffic for this long is closed. Must be positive. Default 30 s.
    pub idle_timeout: Duration,
    /// Interval of keep-alive packets, shorter than `idle_timeout`; zero disables them.
    /// Default 10 s, so an idle client keeps its push stream.
    pub keep_alive: Duration,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            max_concurrent_bidi_streams: 256,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
        }
    }
}

impl TransportOptions {
    /// A quinn transport configuration with the idle timeout and keep-alive of these options
    /// (stream limits are set by the caller, which knows its side).
    pub(crate) fn transport_config(&self) -> Result<quinn::TransportConfig, Error> {
        if self.idle_timeout.is_zero() {
            return Err(Error::InvalidOption { option: "idle_timeout", problem: "must be positive" });
        }
        if !self.keep_alive.is_zero() && self.keep_alive >= self.idle_timeout {
            return Err(Error::InvalidOption { option: "keep_alive", problem: "must be shorter than idle_timeout" });
        }
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| Error::InvalidOption { option: "idle_timeout", problem: "too large for QUIC" })?;
        let mut config = quinn::TransportConfig::default();
        config
            .max_idle_timeout(Some(idle))
            .keep_alive_interval((!self.keep_alive.is_zero()).then_some(self.keep_alive));
        Ok(config)
    }
}

/// Settings of an [`crate::RpcServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// Largest payload of a request, response or push frame. Default 8 MiB.
    pub max_payload: u32,
    /// Time a handler may take before the caller gets DEADLINE_EXCEEDED, unless its route has
    /// its own deadline ([`crate::Router::with_deadline`], e.g. for long polls). Default 30 s.
    pub request_deadline: Duration,
    /// Time within which a whole request frame (header and payload) must arrive; a slower
    /// writer gets DEADLINE_EXCEEDED and its stream is stopped. Default 15 s.
    pub read_timeout: Duration,
    /// Time within which a response frame, or one push frame, must be written and
    /// acknowledged; a client that reads slower loses that stream (a stalled push stream is
    /// closed, and its [`crate::PushSender`]s report [`Error::PushClosed`]). Default 15 s.
    pub write_timeout: Duration,
    /// Capacity of each connection's push queue, in frames. Must be positive. Default 1024.
    pub push_queue_len: usize,
    /// On shutdown, how long in-flight RPCs may take to finish before they are cut off.
    /// Default 10 s.
    pub shutdown_grace: Duration,
    /// Connections beyond this many are refused. Default 10 000.
    pub max_connections: usize,
    /// Per connection, the most request payload bytes held at once (being read or being
    /// handled), counted by declared length before the body is read. A request that cannot
    /// get its share within `read_timeout` is answered UNAVAILABLE. At least `max_payload`.
    /// Default 64 MiB.
    pub max_request_bytes_in_flight: u32,
    /// QUIC transport settings.
    pub transport: TransportOptions,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_payload: DEFAULT_MAX_PAYLOAD,
            request_deadline: Duration::from_secs(30),
            read_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(15),
            push_queue_len: 1024,
            shutdown_grace: Duration::from_secs(10),
            max_connections: 10_000,
            max_request_bytes_in_flight: 64 << 20,
            transport: TransportOptions::default(),
        }
    }
}

impl ServerOptions {
    /// Refuses values the server cannot work with.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |option, problem| Err(Error::InvalidOption { option, problem });
        if self.push_queue_len == 0 {
            return invalid("push_queue_len", "must be positive");
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be positive");
        }
        if self.max_request_bytes_in_flight < self.max_payload {
            return invalid("max_request_bytes_in_flight", "must be at least max_payload");
        }
        if self.read_timeout.is_zero() || self.write_timeout.is_zero() {
            return invalid("read_timeout/write_timeout", "must be positive");
        }
        if self.request_deadline.is_zero() {
            return invalid("request_deadline", "must be positive");
        }
        self.transport.transport_config().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ServerOptions::default().validate().unwrap();
    }

    #[test]
    fn nonsense_is_refused() {
        let opts = ServerOptions { push_queue_len: 0, ..ServerOptions::default() };
        assert!(matches!(opts.validate(), Err(Error::InvalidOption { option: "push_queue_len", .. })));
        let transport = TransportOptions { keep_alive: Duration::from_secs(60), ..TransportOptions::default() };
        assert!(transport.transport_config().is_err());
        let transport = TransportOptions { keep_alive: Duration::ZERO, ..TransportOptions::default() };
        assert!(transport.transport_config().is_ok());
    }
}
