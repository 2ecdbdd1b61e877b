//! The RPC adapter: one route per method, converting protobuf to domain calls and back.
//! Authentication is applied at registration (`route_authed`) and session checks, rate limits,
//! metrics and audit by the middleware layers added here, not inside handlers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quicprochat_proto::{method, v1};
use quicprochat_rpc::middleware::{Metrics, Trace};
use quicprochat_rpc::{Context, Router, RpcError};

use crate::middleware::{Audit, RateLimit, SessionCheck};

use crate::services::{self, delivery::Submission};
use crate::session::Session;
use crate::state::AppState;
use crate::store::WelcomeFor;
use crate::wire;

type Ctx = Context<Session>;
type RpcResult<T> = Result<T, RpcError>;

/// Adapts `f(state, ctx, req)` into a route handler.
fn open<Req, Resp, Fut, F>(state: &Arc<AppState>, f: F) -> impl Fn(Ctx, Req) -> Fut + Send + Sync + 'static
where
    F: Fn(Arc<AppState>, Ctx, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = RpcResult<Resp>> + Send + 'static,
{
    let state = Arc::clone(state);
    move |ctx, req| f(Arc::clone(&state), ctx, req)
}

/// Adapts `f(state, ctx, session, req)` into an authenticated route handler. Session
/// revocation and expiry are checked before, by [`SessionCheck`].
fn authed<Req, Resp, Fut, F>(state: &Arc<AppState>, f: F) -> impl Fn(Ctx, Session, Req) -> Fut + Send + Sync + 'static
where
    F: Fn(Arc<AppState>, Ctx, Session, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = RpcResult<Resp>> + Send + 'static,
{
    let state = Arc::clone(state);
    move |ctx, session, req| f(Arc::clone(&state), ctx, session, req)
}

/// Builds the router of every method this server implements.
pub fn router(state: &Arc<AppState>) -> Router<Session> {
    let long_poll = state.limits.max_wait + Duration::from_secs(5);
    let hub_state = Arc::clone(state);
    Router::new()
        .route(method::REGISTER_START, open(state, register_start))
        .route(method::REGISTER_FINISH, open(state, register_finish))
        .route(method::LOGIN_START, open(state, login_start))
        .route(method::LOGIN_FINISH, open(state, login_finish))
        .route(method::RESUME, open(state, resume))
        .route_authed(method::LOGOUT, authed(state, logout))
        .route_authed(method::DELETE_ACCOUNT, authed(state, delete_account))
        .route_authed(method::REGISTER_DEVICE, authed(state, register_device))
        .route_authed(method::UPLOAD_KEY_PACKAGES, authed(state, upload_key_packages))
        .route_authed(method::FETCH_KEY_PACKAGES, authed(state, fetch_key_packages))
        .route_authed(method::CREATE_CHANNEL, authed(state, create_channel))
        .route_authed(method::ENQUEUE, authed(state, enqueue))
        .route_authed(method::BATCH_ENQUEUE, authed(state, batch_enqueue))
        .route_authed(method::PEEK, authed(state, peek))
        .route_authed(method::ACK, authed(state, ack))
        .route_authed(method::FETCH, authed(state, fetch))
        .route_authed(method::FETCH_WAIT, authed(state, fetch_wait))
        .with_deadline(method::FETCH_WAIT, long_poll)
        .route_authed(method::SUBSCRIBE, authed(state, subscribe))
        .route_authed(method::RESOLVE_USER, authed(state, resolve_user))
        .route_authed(method::KEY_PACKAGE_STATUS, authed(state, key_package_status))
        .route_authed(method::UPLOAD_HYBRID_KEY, authed(state, upload_hybrid_key))
        .route_authed(method::FETCH_HYBRID_KEY, authed(state, fetch_hybrid_key))
        .route_authed(method::FETCH_HYBRID_KEYS, authed(state, fetch_hybrid_keys))
        .route_authed(method::GET_CHANNEL, authed(state, get_channel))
        .route_authed(method::LIST_CHANNELS, authed(state, list_channels))
        .route_authed(method::SET_CHANNEL_RETENTION, authed(state, set_channel_retention))
        .route_authed(method::GET_GROUP_INFO, authed(state, get_group_info))
        .route_authed(method::RESOLVE_IDENTITY, authed(state, resolve_identity))
        .route_authed(method::LIST_DEVICES, authed(state, list_devices))
        .route_authed(method::REVOKE_DEVICE, authed(state, revoke_device))
        .route_authed(method::PUBLISH_ENDPOINT, authed(state, publish_endpoint))
        .route_authed(method::RESOLVE_ENDPOINT, authed(state, resolve_endpoint))
        .route_authed(method::UPLOAD_BLOB_CHUNK, authed(state, upload_blob_chunk))
        .route_authed(method::DOWNLOAD_BLOB_CHUNK, authed(state, download_blob_chunk))
        .route_authed(method::BLOB_INFO, authed(state, blob_info))
        .route(method::HEALTH, open(state, health))
        .route(method::SERVER_INFO, open(state, server_info))
        .on_disconnect(move |connection_id, _session| hub_state.hub.connection_closed(connection_id))
        .layer(Metrics)
        .layer(Trace)
        .layer(Audit::new(state))
        .layer(SessionCheck::new(state))
        .layer(RateLimit::new(state, state.limits.rates()))
}

fn b(v: impl Into<Vec<u8>>) -> Bytes {
    Bytes::from(v.into())
}

async fn register_start(
    st: Arc<AppState>,
    _: Ctx,
    r: v1::RegisterStartRequest,
) -> RpcResult<v1::RegisterStartResponse> {
    let resp = services::auth::register_start(&st, &r.username, &r.registration_request).await?;
    Ok(v1::RegisterStartResponse { registration_response: b(resp) })
}

async fn register_finish(
    st: Arc<AppState>,
    _: Ctx,
    r: v1::RegisterFinishRequest,
) -> RpcResult<v1::RegisterFinishResponse> {
    let id = services::auth::register_finish(&st, &r.username, &r.registration_upload).await?;
    Ok(v1::RegisterFinishResponse { user_id: b(id.0.to_vec()) })
}

async fn login_start(st: Arc<AppState>, _: Ctx, r: v1::LoginStartRequest) -> RpcResult<v1::LoginStartResponse> {
    let (id, resp) = services::auth::login_start(&st, &r.username, &r.credential_request).await?;
    Ok(v1::LoginStartResponse { login_id: b(id.to_vec()), credential_response: b(resp) })
}

async fn login_finish(st: Arc<AppState>, ctx: Ctx, r: v1::LoginFinishRequest) -> RpcResult<v1::LoginFinishResponse> {
    let out = services::auth::login_finish(&st, &r.login_id, &r.credential_finalization).await?;
    let resp = v1::LoginFinishResponse {
        session_token: b(out.token.to_vec()),
        user_id: b(out.session.user_id.0.to_vec()),
        expires_at_ms: out.session.expires_ms,
    };
    ctx.bind_session(out.session);
    Ok(resp)
}

async fn resume(st: Arc<AppState>, ctx: Ctx, r: v1::ResumeRequest) -> RpcResult<v1::ResumeResponse> {
    let session = services::auth::resume(&st, &r.session_token).await?;
    let resp = v1::ResumeResponse {
        user_id: b(session.user_id.0.to_vec()),
        username: session.username.clone(),
        expires_at_ms: session.expires_ms,
        device_id: b(session.device_id.map(|d| d.0.to_vec()).unwrap_or_default()),
    };
    ctx.bind_session(session);
    Ok(resp)
}

async fn logout(st: Arc<AppState>, ctx: Ctx, s: Session, _: v1::LogoutRequest) -> RpcResult<v1::LogoutResponse> {
    services::auth::logout(&st, &s).await?;
    ctx.clear_session();
    st.hub.connection_closed(ctx.connection_id());
    Ok(v1::LogoutResponse {})
}

async fn delete_account(
    st: Arc<AppState>,
    ctx: Ctx,
    s: Session,
    _: v1::DeleteAccountRequest,
) -> RpcResult<v1::DeleteAccountResponse> {
    services::auth::delete_account(&st, &s).await?;
    ctx.clear_session();
    st.hub.connection_closed(ctx.connection_id());
    Ok(v1::DeleteAccountResponse {})
}

async fn register_device(
    st: Arc<AppState>,
    ctx: Ctx,
    s: Session,
    r: v1::RegisterDeviceRequest,
) -> RpcResult<v1::RegisterDeviceResponse> {
    let (id, bound) = services::devices::register_device(&st, &s, &r.identity_key, &r.signature, &r.name).await?;
    ctx.bind_session(bound);
    Ok(v1::RegisterDeviceResponse { device_id: b(id.0.to_vec()) })
}

async fn upload_key_packages(
    st: Arc<AppState>,
    _: Ctx,
    s: Session,
    r: v1::UploadKeyPackagesRequest,
) -> RpcResult<v1::UploadKeyPackagesResponse> {
    let packages = r.key_packages.into_iter().map(|k| k.to_vec()).collect();
    let last_resort = (!r.last_resort.is_empty()).then(|| r.last_resort.to_vec());
    let pool_size = services::keys::upload(&st, &s, packages, last_resort).await?;
    Ok(v1::UploadKeyPackagesResponse { pool_size })
}

async fn fetch_key_packages(
    st: Arc<AppState>,
    _: Ctx,
    _: Session,
    r: v1::FetchKeyPackagesRequest,
) -> RpcResult<v1::FetchKeyPackagesResponse> {
    let (user, packages) = services::keys::fetch(&st, &r.username).await?;
    Ok(v1::FetchKeyPackagesResponse {
        user_id: b(user.0.to_vec()),
        key_packages: packages
            .into_iter()
            .map(|p| v1::DeviceKeyPackage {
                device_id: b(p.device_id.0.to_vec()),
                key_package: b(p.key_package),
                last_resort: p.last_resort,
            })
            .collect(),
    })
}

async fn create_channel(
    st: Arc<AppState>,
    _: Ctx,
    s: Session,
    r: v1::CreateChannelRequest,
) -> RpcResult<v1::CreateChannelResponse> {
    let kind = wire::channel_kind(r.kind)?;
    let c = services::channels::create(&st, &s, kind, &r.peer).await?;
    Ok(v1::CreateChannelResponse {
        channel_id: b(c.id.0.to_vec()),
        was_new: c.was_new,
        epoch: c.epoch,
        kind: wire::channel_kind_to_proto(c.kind) as i32,
        is_member: c.is_member,
    })
}

fn proof(channel: &[u8], a: &services::delivery::Accepted) -> v1::DeliveryProof {
    v1::DeliveryProof {
        envelope_id: b(a.envelope_id.to_vec()),
        channel_id: Bytes::copy_from_slice(channel),
        seq: a.seq,
        timestamp_ms: a.timestamp_ms,
        signature: b(a.signature.to_vec()),
    }
}

async fn enqueue(st: Arc<AppState>, _: Ctx, s: Session, r: v1::EnqueueRequest) -> RpcResult<v1::EnqueueResponse> {
    let channel = wire::channel_id(&r.channel_id)?;
    let env = r.envelope.ok_or_else(|| RpcError::bad_request("missing envelope"))?;
    let sub = Submission {
        channel,
        kind: wire::envelope_kind(env.kind)?,
        epoch: env.epoch,
        payload: env.payload,
        idempotency_key: r.idempotency_key.to_vec(),
        ttl_secs: r.ttl_secs,
        ephemeral: r.ephemeral,
        group_info: (!r.group_info.is_empty()).then(|| r.group_info.to_vec()),
        welcomes: Vec::new(),
    };
    let a = services::delivery::enqueue(&st, &s, sub).await?;
    Ok(v1::EnqueueResponse {
        seq: a.seq,
        envelope_id: b(a.envelope_id.to_vec()),
        proof: Some(proof(&r.channel_id, &a)),
        epoch: a.epoch,
    })
}

async fn batch_enqueue(
    st: Arc<AppState>,
    _: Ctx,
    s: Session,
    r: v1::BatchEnqueueRequest,
) -> RpcResult<v1::BatchEnqueueResponse> {
    let channel = wire::channel_id(&r.channel_id)?;
    let commit = r.commit.ok_or_else(|| RpcError::bad_request("missing commit"))?;
    let kind = wire::envelope_kind(commit.kind)?;
    if kind != crate::store::EnvelopeKind::Commit {
        return Err(RpcError::bad_request("BatchEnqueue carries a commit"));
    }
    let mut welcomes = r
        .welcomes
        .into_iter()
        .map(|w| Ok(WelcomeFor { devices: vec![wire::device_id(&w.device_id)?], payload: w.payload }))
        .collect::<RpcResult<Vec<_>>>()?;
    if let Some(shared) = r.shared_welcome {
        let devices = shared.device_ids.iter().map(|d| wire::device_id(d)).collect::<RpcResult<Vec<_>>>()?;
        welcomes.push(WelcomeFor { devices, payload: shared.payload });
    }
    let sub = Submission {
        channel,
        kind,
        epoch: commit.epoch,
        payload: commit.payload,
        idempotency_key: r.idempotency_key.to_vec(),
        ttl_secs: 0,
        ephemeral: false,
        group_info: (!r.group_info.is_empty()).then(|| r.group_info.to_vec()),
        welcomes,
    };
    let a = services::delivery::enqueue(&st, &s, sub).await?;
    Ok(v1::BatchEnqueueResponse {
        seq: a.seq,
        envelope_id: b(a.envelope_id.to_vec()),
        proof: Some(proof(&r.channel_id, &a)),
        epoch: a.epoch,
    })
}

async fn peek(st: Arc<AppState>, _: Ctx, s: Session, r: v1::PeekRequest) -> RpcResult<v1::PeekResponse> {
    let page = services::delivery::peek(&st, &s, r.after_seq, r.limit, r.max_bytes).await?;
    Ok(wire::page_to_proto(&page))
}

async fn ack(st: Arc<AppState>, _: Ctx, s: Session, r: v1::AckRequest) -> RpcResult<v1::AckResponse> {
    let removed = services::delivery::ack(&st, &s, r.up_to_seq).await?;
    Ok(v1::AckResponse { removed })
}

async fn fetch(st: Arc<AppState>, _: Ctx, s: Session, r: v1::FetchRequest) -> RpcResult<v1::FetchResponse> {
    let entries = services::delivery::fetch(&st, &s, r.limit).await?;
    Ok(v1::FetchResponse { envelopes: entries.iter().map(wire::queued_to_proto).collect() })
}

async fn fetch_wait(st: Arc<AppState>, _: Ctx, s: Session, r: v1::FetchWaitRequest) -> RpcResult<v1::PeekResponse> {
    let timeout = Duration::from_millis(u64::from(r.timeout_ms));
    let page = services::delivery::fetch_wait(&st, &s, r.after_seq, r.limit, timeout).await?;
    Ok(wire::page_to_proto(&page))
}

async fn subscribe(
    st: Arc<AppState>,
    ctx: Ctx,
    s: Session,
    _: v1::SubscribeRequest,
) -> RpcResult<v1::SubscribeResponse> {
    let device = s.device().map_err(RpcError::from)?;
    st.hub.subscribe(device, ctx.push());
    Ok(v1::SubscribeResponse {})
}

async fn resolve_user(
    st: Arc<AppState>,
    _: Ctx,
    _: Session,
    r: v1::ResolveUserRequest,
) -> RpcResult<v1::ResolveUserResponse> {
    let (user, devices) = services::users::resolve(&st, &r.username).await?;
    Ok(v1::ResolveUserResponse {
        user_id: b(user.id.0.to_vec()),
        username: user.username,
        device_keys: devices.into_iter().map(|d| b(d.identity_key.to_vec())).collect(),
    })
}

async fn health(_: Arc<AppState>, _: Ctx, _: v1::HealthRequest) -> RpcResult<v1::HealthResponse> {
    Ok(v1::HealthResponse { status: "serving".into(), version: env!("CARGO_PKG_VERSION").into() })
}

/// Optional protocol features this server speaks (`ServerInfoResponse.features`).
const FEATURES: &[&str] = &["shared_welcome"];

async fn server_info(st: Arc<AppState>, _: Ctx, _: v1::ServerInfoRequest) -> RpcResult<v1::ServerInfoResponse> {
    Ok(v1::ServerInfoResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        signing_key: b(st.signing_key.public_key().to_vec()),
        max_payload_bytes: u32::try_from(st.limits.max_payload).unwrap_or(u32::MAX),
        features: FEATURES.iter().map(|f| (*f).to_owned()).collect(),
    })
}

async fn key_package_status(
    st: Arc<AppState>,
    _: Ctx,
    s: Session,
    _: v1::KeyPackageStatusRequest,
) -> RpcResult<v1::KeyPackageStatusResponse> {
    let (pool_size, has_last_resort) = services::keys::status(&st, &s).await?;
    Ok(v1::KeyPackageStatusResponse { pool_size, has_last_resort, low_water: st.limits.key_package_low_water })
}

async fn upload_hybrid_key(
    st: Arc<AppState>,
    _: Ctx,
    s: Session,
    r: v1::UploadHybridKeyRequest,
) -> RpcResult<v1::UploadHybridKeyResponse> {
    services::keys::upload_hybrid(&st, &s, r.public_key.to_vec()).await?;
    Ok(v1::UploadHybridKeyResponse {})
}

async fn fetch_hybrid_key(
    st: Arc<AppState>,
    _: Ctx,
    _: Session,
    r: v1::FetchHybridKeyRequest,
) -> RpcResult<v1::FetchHybridKeyResponse> {
    let key = services::keys::fetch_hybrid(&st, wire::device_id(&r.device_id)?).await?;
    Ok(v1::FetchHybridKeyResponse { public_key: b(key) })
}

async fn fetch_hybrid_keys(
    st: Arc<AppState>,
    _: Ctx,
    _: Session,
    r: v1::FetchHybridKeysRequest,
) -> RpcResult<v1::FetchHybridKeysResponse> {
    let keys = services::keys::fetch_hybrid_keys(&st, &r.username).await?;
    Ok(v1::FetchHybridKeysResponse {
        keys: keys
            .into_iter()
            .map(|(d, k)| v1::DeviceHybridKey { device_id: b(d.0.to_vec()), public_key: b(k) })
            .collect(),
    })
}

fn channel_info(v: services::channels::ChannelView) -> v1::ChannelInfo {
    v1::ChannelInfo {
        channel_id: b(v.channel.id.0.to_vec()),
        kind: wire::channel_kind_to_proto(v.channel.kind) as i32,
        epoch: v.channel.epoch,
        retention_secs: v.channel.retention_secs,
        member_devices: v.members.into_iter().map(|d| b(d.0.to_vec())).collect(),
    }
}

async fn get_channel(
    st: Arc<AppState>,
    _: Ctx,
    s: Session,
    r: v1::GetChannelRequest,
) -> RpcResult<v1::GetChannelResponse> {
    let view = services::channels::get(&st, &s, wire::channel_id(&r.channel_id)?).await?;
    Ok(v1::GetChannelResponse { channel: Some(channel_info(view)) })
}

async fn list_channels(
    st: Arc<AppState>,
    _: Ctx,
    s: Session,
    _: v1::ListChannelsRequest,
) -> RpcResult<v1::ListChannelsResponse> {
    let views = services::channels::list(&st, &s).await?;
    Ok(v1::ListChannelsResponse { channels: views.into_iter().map(channel_info).collect() })
}

async fn set_channel_retention(
    st: Arc<AppState>,
    _: Ctx,
    s: Session,
    r: v1::SetChannelRetentionRequest,
) -> RpcResult<v1::SetChannelRetentionResponse> {
    services::channels::set_retention(&st, &s, wire::channel_id(&r.channel_id)?, r.retention_secs).await?;
    Ok(v1::SetChannelRetentionResponse {})
}

async fn get_group_info(
    st: Arc<AppState>,
    _: Ctx,
    s: Session,
    r: v1::GetGroupInfoRequest,
) -> RpcResult<v1::GetGroupInfoResponse> {
    let (info, epoch) = services::channels::group_info(&st, &s, wire::channel_id(&r.channel_id)?).await?;
    Ok(v1::GetGroupInfoResponse { group_info: b(info), epoch })
}

async fn resolve_identity(
    st: Arc<AppState>,
    _: Ctx,
    _: Session,
    r: v1::ResolveIdentityRequest,
) -> RpcResult<v1::ResolveIdentityResponse> {
    let (user, device) = services::users::resolve_identity(&st, &r.identity_key).await?;
    Ok(v1::ResolveIdentityResponse {
        user_id: b(user.id.0.to_vec()),
        username: user.username,
        device_id: b(device.id.0.to_vec()),
    })
}

async fn list_devices(
    st: Arc<AppState>,
    _: Ctx,
    s: Session,
    _: v1::ListDevicesRequest,
) -> RpcResult<v1::ListDevicesResponse> {
    let devices = services::devices::list(&st, &s).await?;
    Ok(v1::ListDevicesResponse {
        devices: devices
            .into_iter()
            .map(|d| v1::DeviceInfo {
                device_id: b(d.id.0.to_vec()),
                identity_key: b(d.identity_key.to_vec()),
                name: d.name,
                created_at_ms: d.created_ms,
            })
            .collect(),
    })
}

async fn revoke_device(
    st: Arc<AppState>,
    _: Ctx,
    s: Session,
    r: v1::RevokeDeviceRequest,
) -> RpcResult<v1::RevokeDeviceResponse> {
    services::devices::revoke(&st, &s, wire::device_id(&r.device_id)?).await?;
    Ok(v1::RevokeDeviceResponse {})
}

async fn publish_endpoint(
    st: Arc<AppState>,
    _: Ctx,
    s: Session,
    r: v1::PublishEndpointRequest,
) -> RpcResult<v1::PublishEndpointResponse> {
    services::devices::publish_endpoint(&st, &s, r.endpoint.to_vec(), r.ttl_secs).await?;
    Ok(v1::PublishEndpointResponse {})
}

async fn resolve_endpoint(
    st: Arc<AppState>,
    _: Ctx,
    _: Session,
    r: v1::ResolveEndpointRequest,
) -> RpcResult<v1::ResolveEndpointResponse> {
    let endpoints = services::devices::resolve_endpoint(&st, &r.username).await?;
    Ok(v1::ResolveEndpointResponse {
        endpoints: endpoints
            .into_iter()
            .map(|e| v1::DeviceEndpoint {
                device_id: b(e.device_id.0.to_vec()),
                endpoint: b(e.endpoint),
                expires_at_ms: e.expires_ms,
            })
            .collect(),
    })
}

async fn upload_blob_chunk(
    st: Arc<AppState>,
    _: Ctx,
    s: Session,
    r: v1::UploadBlobChunkRequest,
) -> RpcResult<v1::UploadBlobChunkResponse> {
    let p = services::blobs::upload_chunk(&st, &s, &r.blob_id, r.total_size, r.offset, &r.data).await?;
    Ok(v1::UploadBlobChunkResponse { received: p.received, complete: p.complete })
}

async fn download_blob_chunk(
    st: Arc<AppState>,
    _: Ctx,
    _: Session,
    r: v1::DownloadBlobChunkRequest,
) -> RpcResult<v1::DownloadBlobChunkResponse> {
    let (data, total_size) = services::blobs::download_chunk(&st, &r.blob_id, r.offset, r.max_len).await?;
    Ok(v1::DownloadBlobChunkResponse { data: b(data), total_size })
}

async fn blob_info(st: Arc<AppState>, _: Ctx, _: Session, r: v1::BlobInfoRequest) -> RpcResult<v1::BlobInfoResponse> {
    let b = services::blobs::info(&st, &r.blob_id).await?;
    Ok(v1::BlobInfoResponse {
        total_size: b.total_size,
        received: b.received,
        complete: b.complete,
        expires_at_ms: b.expires_ms,
    })
}
