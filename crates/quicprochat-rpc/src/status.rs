//! The status byte of a response frame. The numbers are stable wire values (SPEC §3).

use std::fmt;

/// Outcome of an RPC, carried in the first byte of every response frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Status {
    /// The payload is the method's response message.
    Ok = 0,
    /// The request was malformed: truncated frame, undecodable payload or invalid field.
    BadRequest = 1,
    /// The method needs a session and the connection has none.
    Unauthenticated = 2,
    /// The session may not do this.
    Forbidden = 3,
    /// The addressed object does not exist.
    NotFound = 4,
    /// The request conflicts with current state (e.g. a stale MLS epoch).
    Conflict = 5,
    /// Too many requests; see `retry_after_ms`.
    RateLimited = 6,
    /// The declared payload exceeds the server's limit.
    PayloadTooLarge = 7,
    /// A bounded queue is full; see `retry_after_ms`.
    QueueFull = 8,
    /// The request did not complete within its deadline.
    DeadlineExceeded = 9,
    /// The server cannot serve the request right now (e.g. shutting down).
    Unavailable = 10,
    /// No handler is registered for the method id.
    UnknownMethod = 11,
    /// The server failed; details are in its logs, never on the wire.
    Internal = 12,
}

impl Status {
    /// Every status, in wire order.
    pub const ALL: [Status; 13] = [
        Status::Ok,
        Status::BadRequest,
        Status::Unauthenticated,
        Status::Forbidden,
        Status::NotFound,
        Status::Conflict,
        Status::RateLimited,
        Status::PayloadTooLarge,
        Status::QueueFull,
        Status::DeadlineExceeded,
        Status::Unavailable,
        Status::UnknownMethod,
        Status::Internal,
    ];

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Parses a wire value; `None` for codes this version does not know.
    pub fn from_u8(v: u8) -> Option<Status> {
        Self::ALL.get(usize::from(v)).copied()
    }

    /// The canonical upper-case name, e.g. `"BAD_REQUEST"`.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "BAD_REQUEST",
            Status::Unauthenticated => "UNAUTHENTICATED",
            Status::Forbidden => "FORBIDDEN",
            Status::NotFound => "NOT_FOUND",
            Status::Conflict => "CONFLICT",
            Status::RateLimited => "RATE_LIMITED",
            Status::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Status::QueueFull => "QUEUE_FULL",
            Status::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Status::Unavailable => "UNAVAILABLE",
            Status::UnknownMethod => "UNKNOWN_METHOD",
            Status::Internal => "INTERNAL",
        }
    }

    /// Whether the same request may succeed if sent again later (possibly after
    /// `retry_after_ms`). Callers still decide whether the method is safe to repeat.
    pub fn is_retryable(self) -> bool {
        matches!(self, Status::RateLimited | Status::QueueFull | Status::DeadlineExceeded | Status::Unavailable)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_are_stable() {
        let expected = [
            (Status::Ok, 0, "OK"),
            (Status::BadRequest, 1, "BAD_REQUEST"),
            (Status::Unauthenticated, 2, "UNAUTHENTICATED"),
            (Status::Forbidden, 3, "FORBIDDEN"),
            (Status::NotFound, 4, "NOT_FOUND"),
            (Status::Conflict, 5, "CONFLICT"),
            (Status::RateLimited, 6, "RATE_LIMITED"),
            (Status::PayloadTooLarge, 7, "PAYLOAD_TOO_LARGE"),
            (Status::QueueFull, 8, "QUEUE_FULL"),
            (Status::DeadlineExceeded, 9, "DEADLINE_EXCEEDED"),
            (Status::Unavailable, 10, "UNAVAILABLE"),
            (Status::UnknownMethod, 11, "UNKNOWN_METHOD"),
            (Status::Internal, 12, "INTERNAL"),
        ];
        for (status, code, name) in expected {
            assert_eq!(status.as_u8(), code);
            assert_eq!(Status::from_u8(code), Some(status));
            assert_eq!(status.name(), name);
            assert_eq!(status.to_string(), name);
        }
        for code in 13..=u8::MAX {
            assert_eq!(Status::from_u8(code), None);
        }
    }
}
