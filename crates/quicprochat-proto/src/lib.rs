//! Wire messages of the quicprochat protocol and their stable numbers.
//!
//! The `.proto` files live in `proto/qpc/v1/` at the root of the workspace and are compiled at
//! build time with `protox`, so no system `protoc` is needed. `docs/protocol.md` describes the
//! framing that carries these messages.

/// Generated protobuf messages of package `qpc.v1`.
#[allow(missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/qpc.v1.rs"));
}

pub use prost::Message;

/// Stable RPC method ids (SPEC §3). Gaps are reserved for future methods of the same service.
pub mod method {
    /// 100: start OPAQUE registration.
    pub const REGISTER_START: u16 = 100;
    /// 101: finish OPAQUE registration.
    pub const REGISTER_FINISH: u16 = 101;
    /// 102: start OPAQUE login.
    pub const LOGIN_START: u16 = 102;
    /// 103: finish OPAQUE login and bind a session.
    pub const LOGIN_FINISH: u16 = 103;
    /// 104: bind an existing session.
    pub const RESUME: u16 = 104;
    /// 105: revoke the session.
    pub const LOGOUT: u16 = 105;
    /// 106: delete the account.
    pub const DELETE_ACCOUNT: u16 = 106;

    /// 200: enqueue an envelope to a channel.
    pub const ENQUEUE: u16 = 200;
    /// 201: enqueue a commit and its welcomes atomically.
    pub const BATCH_ENQUEUE: u16 = 201;
    /// 202: peek and ack (legacy).
    pub const FETCH: u16 = 202;
    /// 203: long-poll peek.
    pub const FETCH_WAIT: u16 = 203;
    /// 204: read the queue without deleting.
    pub const PEEK: u16 = 204;
    /// 205: delete acknowledged entries.
    pub const ACK: u16 = 205;
    /// 206: ask for push notifications.
    pub const SUBSCRIBE: u16 = 206;

    /// 300: upload key packages.
    pub const UPLOAD_KEY_PACKAGES: u16 = 300;
    /// 301: claim one key package per device of a user.
    pub const FETCH_KEY_PACKAGES: u16 = 301;
    /// 302: set this device's hybrid (X-Wing) public key.
    pub const UPLOAD_HYBRID_KEY: u16 = 302;
    /// 303: one device's hybrid key.
    pub const FETCH_HYBRID_KEY: u16 = 303;
    /// 304: hybrid keys of a user's devices.
    pub const FETCH_HYBRID_KEYS: u16 = 304;
    /// 305: this device's key package pool.
    pub const KEY_PACKAGE_STATUS: u16 = 305;

    /// 400: create a channel.
    pub const CREATE_CHANNEL: u16 = 400;
    /// 401: one channel.
    pub const GET_CHANNEL: u16 = 401;
    /// 402: this device's channels.
    pub const LIST_CHANNELS: u16 = 402;
    /// 403: a channel's default envelope TTL.
    pub const SET_CHANNEL_RETENTION: u16 = 403;
    /// 404: the latest MLS GroupInfo of a channel.
    pub const GET_GROUP_INFO: u16 = 404;

    /// 500: resolve a username.
    pub const RESOLVE_USER: u16 = 500;
    /// 501: resolve a device identity key.
    pub const RESOLVE_IDENTITY: u16 = 501;

    /// 600: append a chunk to a blob upload.
    pub const UPLOAD_BLOB_CHUNK: u16 = 600;
    /// 601: read a chunk of a stored blob.
    pub const DOWNLOAD_BLOB_CHUNK: u16 = 601;
    /// 602: state of a blob or an upload.
    pub const BLOB_INFO: u16 = 602;

    /// 700: bind a device identity key.
    pub const REGISTER_DEVICE: u16 = 700;
    /// 701: the account's devices.
    pub const LIST_DEVICES: u16 = 701;
    /// 702: remove one of the account's devices.
    pub const REVOKE_DEVICE: u16 = 702;

    /// 800: liveness.
    pub const HEALTH: u16 = 800;
    /// 801: server version, signing key and limits.
    pub const SERVER_INFO: u16 = 801;
    /// 802: publish peer-to-peer connection hints.
    pub const PUBLISH_ENDPOINT: u16 = 802;
    /// 803: a user's peer-to-peer connection hints.
    pub const RESOLVE_ENDPOINT: u16 = 803;
}

/// The name of a method id, for logs and metrics.
pub fn method_name(id: u16) -> Option<&'static str> {
    use method::*;
    Some(match id {
        REGISTER_START => "RegisterStart",
        REGISTER_FINISH => "RegisterFinish",
        LOGIN_START => "LoginStart",
        LOGIN_FINISH => "LoginFinish",
        RESUME => "Resume",
        LOGOUT => "Logout",
        DELETE_ACCOUNT => "DeleteAccount",
        ENQUEUE => "Enqueue",
        BATCH_ENQUEUE => "BatchEnqueue",
        FETCH => "Fetch",
        FETCH_WAIT => "FetchWait",
        PEEK => "Peek",
        ACK => "Ack",
        SUBSCRIBE => "Subscribe",
        UPLOAD_KEY_PACKAGES => "UploadKeyPackages",
        FETCH_KEY_PACKAGES => "FetchKeyPackages",
        UPLOAD_HYBRID_KEY => "UploadHybridKey",
        FETCH_HYBRID_KEY => "FetchHybridKey",
        FETCH_HYBRID_KEYS => "FetchHybridKeys",
        KEY_PACKAGE_STATUS => "KeyPackageStatus",
        CREATE_CHANNEL => "CreateChannel",
        GET_CHANNEL => "GetChannel",
        LIST_CHANNELS => "ListChannels",
        SET_CHANNEL_RETENTION => "SetChannelRetention",
        GET_GROUP_INFO => "GetGroupInfo",
        RESOLVE_USER => "ResolveUser",
        RESOLVE_IDENTITY => "ResolveIdentity",
        UPLOAD_BLOB_CHUNK => "UploadBlobChunk",
        DOWNLOAD_BLOB_CHUNK => "DownloadBlobChunk",
        BLOB_INFO => "BlobInfo",
        REGISTER_DEVICE => "RegisterDevice",
        LIST_DEVICES => "ListDevices",
        REVOKE_DEVICE => "RevokeDevice",
        HEALTH => "Health",
        SERVER_INFO => "ServerInfo",
        PUBLISH_ENDPOINT => "PublishEndpoint",
        RESOLVE_ENDPOINT => "ResolveEndpoint",
        _ => return None,
    })
}

/// Stable push event type ids (SPEC §3).
pub mod event {
    /// `MessageNotification`.
    pub const MESSAGE_NOTIFICATION: u16 = 1;
    /// `TypingNotification`.
    pub const TYPING_NOTIFICATION: u16 = 2;
    /// `ChannelUpdate`.
    pub const CHANNEL_UPDATE: u16 = 3;
    /// `SessionExpired`.
    pub const SESSION_EXPIRED: u16 = 4;
    /// `KeyPackagesLow`.
    pub const KEY_PACKAGES_LOW: u16 = 5;
}
