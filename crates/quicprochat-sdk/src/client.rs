//! `QpcClient`: connection, account, and the background push listener.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use quicprochat_core::identity::IdentityKeyPair;
use quicprochat_core::ids::{DeviceId, device_binding_challenge};
use quicprochat_core::mls::{MlsClient, MlsSuite};
use quicprochat_core::opaque::{ClientLogin, ClientRegistration, OpaqueParams};
use quicprochat_proto::{event, method, v1};
use quicprochat_rpc::{RpcClient, ServerTrust, Status};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use zeroize::Zeroizing;

use crate::account::{self, AccountSecrets};
use crate::config::{ClientConfig, KdfStrength, Trust};
use crate::error::Result;
use crate::store::LocalStore;
use crate::{ClientEvent, ConversationHandle, ConversationId, ConversationInfo, Message, SdkError};

/// A device's pool is refilled when it holds fewer key packages than this.
const KEY_PACKAGE_LOW_WATER: u32 = 10;
/// Pool size after a refill.
const KEY_PACKAGE_TARGET: u32 = 20;
/// Buffered events per subscriber before the slowest one starts missing some.
const EVENT_CAPACITY: usize = 1024;
/// Local database file name.
const DATABASE_FILE: &str = "state.db";

/// A connection to a quicprochat server, and after `login` an account on it.
///
/// Cheap to clone; clones share everything. Dropping the last clone stops its background tasks.
#[derive(Clone)]
pub struct QpcClient {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for QpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QpcClient").field("server", &self.inner.config.server).finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub config: ClientConfig,
    pub rpc: RwLock<RpcClient>,
    /// Set by `close`: no reconnecting after that.
    pub closed: AtomicBool,
    pub events: broadcast::Sender<ClientEvent>,
    pub account: OnceLock<Account>,
    /// One inbound processor at a time, so envelopes are applied in queue order.
    pub sync_lock: tokio::sync::Mutex<()>,
    pub tasks: Mutex<JoinSet<()>>,
    /// Wakes the disappearing-message timer when a message with a timer is stored.
    pub expiry_wakeup: Arc<tokio::sync::Notify>,
    /// One outbox flush at a time, so sends leave in the order they were made.
    pub send_lock: tokio::sync::Mutex<()>,
    /// Wakes the background sender (a send is waiting, the connection is back).
    pub outbox_wakeup: Arc<tokio::sync::Notify>,
    /// The highest queue sequence applied from a push, for the acknowledging task.
    pub ack: tokio::sync::watch::Sender<u64>,
    /// Who is typing where (see `typing.rs`).
    pub typing: Mutex<crate::typing::TypingTracker>,
    /// Wakes the typing timer when an indicator starts.
    pub typing_wakeup: Arc<tokio::sync::Notify>,
    /// Test support: the next send accepted by the server is left in the outbox, as if the
    /// process died between the server's answer and the local update.
    #[cfg(feature = "test-util")]
    pub crash_after_enqueue: AtomicBool,
    /// Test support: push frames are read and ignored, as if the server had dropped them.
    #[cfg(feature = "test-util")]
    pub ignore_push: AtomicBool,
    /// Test support: how many pages sync passes have read from the queue.
    #[cfg(feature = "test-util")]
    pub pages_read: std::sync::atomic::AtomicU64,
}

/// The `ServerInfo` feature of servers that take `BatchEnqueueRequest.shared_welcome`.
const SHARED_WELCOME_FEATURE: &str = "shared_welcome";

/// The server's limit on one payload; a server that does not say gets the smallest any
/// version had (1 MiB).
fn max_payload(info: &v1::ServerInfoResponse) -> usize {
    match usize::try_from(info.max_payload_bytes) {
        Ok(0) | Err(_) => 1024 * 1024,
        Ok(limit) => limit,
    }
}

/// Whether the server takes one Welcome for several devices.
fn shares_welcomes(info: &v1::ServerInfoResponse) -> bool {
    info.features.iter().any(|f| f == SHARED_WELCOME_FEATURE)
}

/// The logged-in account: identity, MLS state and local store, behind one lock.
pub(crate) struct Account {
    pub username: String,
    /// The session token, for `Resume` after a reconnect.
    pub session_token: Zeroizing<Vec<u8>>,
    /// The server's delivery-proof key, from `ServerInfo` at login.
    pub server_signing_key: [u8; 32],
    /// Whether the server takes one Welcome for several devices (`ServerInfo` feature
    /// `shared_welcome`); an older one gets a copy per device. Asked again on every new
    /// connection, since the server behind the address may have changed.
    pub shared_welcomes: std::sync::atomic::AtomicBool,
    /// The server's limit on one payload (`ServerInfo`), asked again on every new connection.
    pub max_payload: std::sync::atomic::AtomicUsize,
    pub user_id: Vec<u8>,
    pub device_id: DeviceId,
    pub local: Mutex<Local>,
}

pub(crate) struct Local {
    pub mls: MlsClient,
    pub store: LocalStore,
}

impl Local {
    /// Applies `change` together with the MLS storage entries changed since the last persist,
    /// in one transaction; returns what [`LocalStore::apply`] returns. If the write fails, the
    /// same entries are written by the next persist.
    pub fn persist(&mut self, change: crate::store::Change<'_>) -> Result<bool> {
        let changes = self.mls.state_changes()?;
        let change = crate::store::Change { mls: Some(&changes), ..change };
        let fresh = self.store.apply(change)?;
        self.mls.mark_persisted(&changes)?;
        Ok(fresh)
    }
}

impl Account {
    /// Takes the server's terms from its `ServerInfo`, or, without one, assumes an older
    /// server's: a copy of a Welcome per device, and the payload limit as it was.
    pub fn learn_server(&self, info: Option<&v1::ServerInfoResponse>) {
        use std::sync::atomic::Ordering::Relaxed;
        self.shared_welcomes.store(info.is_some_and(shares_welcomes), Relaxed);
        if let Some(info) = info {
            self.max_payload.store(max_payload(info), Relaxed);
        }
    }

    pub fn lock(&self) -> Result<MutexGuard<'_, Local>> {
        self.local.lock().map_err(|_| SdkError::Poisoned)
    }
}

fn opaque_params(strength: KdfStrength) -> OpaqueParams {
    match strength {
        KdfStrength::Production => OpaqueParams::default(),
        KdfStrength::InsecureTestOnly => OpaqueParams::light(),
    }
}

/// Lower-cases and trims a username the way the server does.
pub(crate) fn fold_username(name: &str) -> String {
    name.trim().to_lowercase()
}

impl QpcClient {
    /// Connects to the server (QUIC + TLS 1.3, ALPN `qpc/2`) with the configured trust.
    pub async fn connect(config: ClientConfig) -> Result<Self> {
        let trust = match &config.trust {
            Trust::PinnedCertificate(der) => ServerTrust::Pinned(der.clone()),
            Trust::CaCertificates(cas) => ServerTrust::Roots(cas.clone()),
        };
        let tls = quicprochat_rpc::tls::client_config(&trust)?;
        let rpc = RpcClient::connect(config.server, &config.server_name, tls).await?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                rpc: RwLock::new(rpc),
                closed: AtomicBool::new(false),
                events,
                account: OnceLock::new(),
                sync_lock: tokio::sync::Mutex::new(()),
                tasks: Mutex::new(JoinSet::new()),
                expiry_wakeup: Arc::new(tokio::sync::Notify::new()),
                send_lock: tokio::sync::Mutex::new(()),
                outbox_wakeup: Arc::new(tokio::sync::Notify::new()),
                ack: tokio::sync::watch::Sender::new(0),
                typing: Mutex::new(crate::typing::TypingTracker::default()),
                typing_wakeup: Arc::new(tokio::sync::Notify::new()),
                #[cfg(feature = "test-util")]
                crash_after_enqueue: AtomicBool::new(false),
                #[cfg(feature = "test-util")]
                ignore_push: AtomicBool::new(false),
                #[cfg(feature = "test-util")]
                pages_read: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// Registers a new account with OPAQUE (the password never leaves this process), then logs in.
    pub async fn register(&self, username: &str, password: &[u8]) -> Result<()> {
        let username = fold_username(username);
        // The local account is checked (or created) first, so a mistake costs no server state.
        let secrets =
            account::open_or_create(&self.inner.config.state_dir, &username, password, self.inner.config.kdf)?;
        let params = opaque_params(self.inner.config.kdf);
        let (registration, request) = ClientRegistration::start(&mut rand_core::OsRng, password)?;
        let start: v1::RegisterStartResponse = self
            .rpc()
            .call(
                method::REGISTER_START,
                &v1::RegisterStartRequest { username: username.clone(), registration_request: request.into() },
            )
            .await
            .map_err(registration_error)?;
        let upload = registration.finish(&mut rand_core::OsRng, password, &start.registration_response, &params)?;
        let _: v1::RegisterFinishResponse = self
            .rpc()
            .call(
                method::REGISTER_FINISH,
                &v1::RegisterFinishRequest { username: username.clone(), registration_upload: upload.into() },
            )
            .await
            .map_err(registration_error)?;
        self.login_with(secrets, password).await
    }

    /// Logs in with OPAQUE, binds this device, restores local state, tops up key packages,
    /// subscribes to push and fetches what is waiting.
    pub async fn login(&self, username: &str, password: &[u8]) -> Result<()> {
        let username = fold_username(username);
        let secrets =
            account::open_or_create(&self.inner.config.state_dir, &username, password, self.inner.config.kdf)?;
        self.login_with(secrets, password).await
    }

    async fn login_with(&self, secrets: AccountSecrets, password: &[u8]) -> Result<()> {
        let username = secrets.username.clone();
        let params = opaque_params(self.inner.config.kdf);
        let (login, request) = ClientLogin::start(&mut rand_core::OsRng, password)?;
        let start: v1::LoginStartResponse = self
            .rpc()
            .call(
                method::LOGIN_START,
                &v1::LoginStartRequest { username: username.clone(), credential_request: request.into() },
            )
            .await?;
        let output = login.finish(password, &start.credential_response, &params).map_err(|e| match e {
            quicprochat_core::CoreError::InvalidLogin => SdkError::InvalidCredentials,
            other => SdkError::Crypto(other),
        })?;
        let finish: v1::LoginFinishResponse = self
            .rpc()
            .call(
                method::LOGIN_FINISH,
                &v1::LoginFinishRequest {
                    login_id: start.login_id,
                    credential_finalization: output.finalization.into(),
                },
            )
            .await
            .map_err(|e| match e.rpc_status() {
                Some(Status::Unauthenticated) => SdkError::InvalidCredentials,
                _ => SdkError::from(e),
            })?;
        let token = Zeroizing::new(finish.session_token.to_vec());
        let secrets =
            account::open_or_create(&self.inner.config.state_dir, &username, password, self.inner.config.kdf)?;
        self.open_account(secrets, finish.user_id.to_vec(), &token).await
    }

    async fn open_account(&self, secrets: AccountSecrets, user_id: Vec<u8>, token: &[u8]) -> Result<()> {
        let device_id = self.register_device(&secrets.identity, token).await?;
        let info: v1::ServerInfoResponse = self.rpc().call(method::SERVER_INFO, &v1::ServerInfoRequest {}).await?;
        let server_signing_key =
            <[u8; 32]>::try_from(info.signing_key.as_ref()).map_err(|_| SdkError::Protocol("server signing key"))?;
        let store = LocalStore::open(&self.inner.config.state_dir.join(DATABASE_FILE), secrets.storage_key.clone())?;
        let entries = store.mls_entries()?;
        let snapshot = if entries.is_empty() { store.mls_state()? } else { None };
        let mls = match snapshot {
            // A snapshot of an earlier version: its entries are written (and it is dropped) by
            // the first change.
            Some(state) => MlsClient::restore(&secrets.identity, &secrets.username, MlsSuite::default(), &state)?,
            // Persisted entry by entry: the current layout.
            None if !entries.is_empty() => {
                MlsClient::restore_entries(&secrets.identity, &secrets.username, MlsSuite::default(), entries)?
            }
            None => MlsClient::new(&secrets.identity, &secrets.username, MlsSuite::default())?,
        };
        let account = Account {
            username: secrets.username.clone(),
            session_token: Zeroizing::new(token.to_vec()),
            server_signing_key,
            shared_welcomes: Default::default(),
            max_payload: Default::default(),
            user_id,
            device_id,
            local: Mutex::new(Local { mls, store }),
        };
        account.learn_server(Some(&info));
        if self.inner.account.set(account).is_err() {
            return Err(SdkError::Protocol("this client is already logged in"));
        }
        self.top_up_key_packages().await?;
        let _: v1::SubscribeResponse = self.rpc().call(method::SUBSCRIBE, &v1::SubscribeRequest {}).await?;
        self.spawn_push_listener()?;
        self.spawn_expiry_timer()?;
        self.spawn_typing_timer()?;
        self.spawn_acker()?;
        self.ack_applied(&self.rpc()).await?;
        self.sync().await?;
        // Sends queued in an earlier run (offline, or cut off by a crash) go out now.
        self.spawn_outbox_sender()?;
        Ok(())
    }

    async fn register_device(&self, identity: &IdentityKeyPair, token: &[u8]) -> Result<DeviceId> {
        let token_hash = quicprochat_core::ids::session_token_hash(token);
        let key = identity.public_key();
        let signature = identity.sign(&device_binding_challenge(&token_hash, &key));
        let resp: v1::RegisterDeviceResponse = self
            .rpc()
            .call(
                method::REGISTER_DEVICE,
                &v1::RegisterDeviceRequest {
                    identity_key: Bytes::copy_from_slice(&key),
                    signature: Bytes::copy_from_slice(&signature),
                    name: self.inner.config.device_name.clone(),
                },
            )
            .await?;
        let id = DeviceId::try_from(resp.device_id.as_ref()).map_err(|_| SdkError::Protocol("device id"))?;
        if id != identity.device_id() {
            return Err(SdkError::Protocol("server assigned a different device id"));
        }
        Ok(id)
    }

    /// Keeps this device's key package pool above its low-water mark. The private halves are
    /// saved locally before the public halves are uploaded.
    async fn top_up_key_packages(&self) -> Result<()> {
        let status: v1::UploadKeyPackagesResponse =
            self.rpc().call(method::UPLOAD_KEY_PACKAGES, &v1::UploadKeyPackagesRequest::default()).await?;
        if status.pool_size >= KEY_PACKAGE_LOW_WATER {
            return Ok(());
        }
        let account = self.account()?;
        let request = {
            let mut local = account.lock()?;
            let mut packages = Vec::new();
            for _ in status.pool_size..KEY_PACKAGE_TARGET {
                packages.push(Bytes::from(local.mls.generate_key_package()?));
            }
            let last_resort = Bytes::from(local.mls.generate_last_resort_key_package()?);
            // The private keys are on disk before their key packages are handed out.
            local.persist(crate::store::Change { durable: true, ..Default::default() })?;
            v1::UploadKeyPackagesRequest { key_packages: packages, last_resort }
        };
        let _: v1::UploadKeyPackagesResponse = self.rpc().call(method::UPLOAD_KEY_PACKAGES, &request).await?;
        Ok(())
    }

    /// Listens on the server's push stream and fetches whenever a notification arrives. When
    /// the connection drops, reconnects with exponential backoff and jitter, resumes the
    /// session, resubscribes and catches up from the last stored sequence.
    fn spawn_push_listener(&self) -> Result<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let mut tasks = self.inner.tasks.lock().map_err(|_| SdkError::Poisoned)?;
        tasks.spawn(async move {
            loop {
                let Some(rpc) = weak.upgrade().map(|inner| QpcClient { inner }.rpc()) else { return };
                let reason = listen(&weak, &rpc).await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.closed.load(Ordering::SeqCst) {
                    return;
                }
                let _ = inner.events.send(ClientEvent::ConnectionLost { reason });
                drop(inner);
                if !reconnect(&weak).await {
                    return;
                }
            }
        });
        Ok(())
    }

    pub(crate) fn account(&self) -> Result<&Account> {
        self.inner.account.get().ok_or(SdkError::NotLoggedIn)
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ClientEvent> {
        self.inner.events.subscribe()
    }

    /// The logged-in username.
    pub fn whoami(&self) -> Result<String> {
        Ok(self.account()?.username.clone())
    }

    /// The logged-in account's id (16 bytes).
    pub fn user_id(&self) -> Result<Vec<u8>> {
        Ok(self.account()?.user_id.clone())
    }

    /// This device's id.
    pub fn device_id(&self) -> Result<[u8; 16]> {
        Ok(self.account()?.device_id.0)
    }

    /// The session token of the logged-in account, bound to this device: for load tools and
    /// tests that drive the protocol directly (`Resume` on a connection of their own). The
    /// session outlives [`Self::close`], which does not log out.
    #[cfg(feature = "test-util")]
    pub fn session_token(&self) -> Result<Zeroizing<Vec<u8>>> {
        Ok(self.account()?.session_token.clone())
    }

    /// Conversations this device is in (not those it left or was removed from), oldest first,
    /// each with its unread count.
    pub fn conversations(&self) -> Result<Vec<ConversationInfo>> {
        let account = self.account()?;
        let local = account.lock()?;
        let mut out = Vec::new();
        for c in local.store.conversations()? {
            out.push(ConversationInfo {
                id: c.id,
                unread: local.store.unread(&c.id)?,
                name: c.name,
                peer: c.peer,
                disappearing: c.disappearing_secs.map(|s| Duration::from_secs(u64::from(s))),
            });
        }
        Ok(out)
    }

    /// One stored message by id, in whichever conversation it is.
    pub fn message(&self, id: crate::MessageId) -> Result<Option<Message>> {
        self.purge_expired()?;
        let account = self.account()?;
        let local = account.lock()?;
        local.store.message(&id)
    }

    /// A handle to a stored conversation (also one this device left: its history stays
    /// readable, but sending into it fails with [`SdkError::LeftConversation`]).
    pub fn conversation(&self, id: ConversationId) -> Result<Option<ConversationHandle>> {
        let account = self.account()?;
        let row = account.lock()?.store.conversation(&id)?;
        Ok(row.map(|r| ConversationHandle::new(self.clone(), r.id, r.name)))
    }

    /// The safety number shared with `username`: 60 digits in 12 groups of 5, the same on both
    /// sides, computed from the two identity keys as this device sees them in a conversation
    /// with that user. Compare it out of band (in person, by phone) to rule out a key swap.
    pub fn safety_number(&self, username: &str) -> Result<String> {
        let account = self.account()?;
        let peer = fold_username(username);
        let local = account.lock()?;
        for conversation in local.store.conversations()? {
            let Ok(members) = local.mls.members(&conversation.id.0) else { continue };
            let me = members.iter().find(|m| m.device_id == account.device_id);
            let them = members.iter().find(|m| m.username == peer);
            if let (Some(me), Some(them)) = (me, them) {
                return Ok(quicprochat_core::safety_number::SafetyNumber::for_members(me, them).to_string());
            }
        }
        Err(SdkError::NoSharedConversation(peer))
    }

    /// Deletes the account on the server (with its devices, sessions, queues and key packages)
    /// and this device's local state. The client is logged out afterwards.
    pub async fn delete_account(&self) -> Result<()> {
        self.account()?;
        let _: v1::DeleteAccountResponse =
            self.rpc().call(method::DELETE_ACCOUNT, &v1::DeleteAccountRequest {}).await?;
        self.close();
        let dir = &self.inner.config.state_dir;
        std::fs::remove_dir_all(dir).map_err(|source| SdkError::Io { path: dir.clone(), source })
    }

    /// The conversation whose display name (group) or peer (DM) is `name`.
    pub fn find_conversation(&self, name: &str) -> Result<Option<ConversationHandle>> {
        let account = self.account()?;
        let rows = account.lock()?.store.conversations()?;
        let folded = fold_username(name);
        Ok(rows
            .into_iter()
            .find(|r| r.name == name || r.peer.as_deref() == Some(folded.as_str()))
            .map(|r| ConversationHandle::new(self.clone(), r.id, r.name)))
    }

    /// The last `limit` stored messages of a conversation, oldest first, with their edits,
    /// reactions and receipts applied. Messages whose disappearing timer ran out are deleted
    /// first.
    pub fn messages(&self, id: ConversationId, limit: u32) -> Result<Vec<Message>> {
        self.purge_expired()?;
        let account = self.account()?;
        let local = account.lock()?;
        local.store.messages(&id, limit)
    }

    /// Closes the connection. Pending background work stops; nothing reconnects.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            tasks.abort_all();
        }
        self.rpc().close("client closed");
    }

    /// The current connection.
    pub(crate) fn rpc(&self) -> RpcClient {
        match self.inner.rpc.read() {
            Ok(rpc) => rpc.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

fn registration_error(e: quicprochat_rpc::Error) -> SdkError {
    match e.rpc_status() {
        Some(Status::Conflict) => SdkError::UsernameTaken,
        _ => SdkError::from(e),
    }
}

/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Reads push frames until the connection or stream ends; returns why it ended.
/// How long the fallback long-poll waits on the server.
const LONG_POLL: Duration = Duration::from_secs(25);

/// What one fallback long-poll found.
enum Poll {
    /// Entries wait in the queue: fetch them.
    Found,
    /// Nothing new (or the poll failed; the next one tries again).
    Nothing,
    /// The client is gone: the listener ends.
    ClientGone,
}

/// After [`ClientConfig::push_quiet`] without a push, one `FetchWait` from the stored cursor
/// (a dropped notification, e.g. from a full push queue on the server, cannot leave messages
/// waiting). Every outcome but [`Poll::ClientGone`] comes after the quiet period, so the
/// listener never spins.
async fn long_poll(weak: Weak<Inner>, rpc: RpcClient) -> Poll {
    let Some(quiet) = weak.upgrade().map(|inner| inner.config.push_quiet) else { return Poll::ClientGone };
    tokio::time::sleep(quiet).await;
    let cursor = {
        let Some(inner) = weak.upgrade() else { return Poll::ClientGone };
        let client = QpcClient { inner };
        let Ok(account) = client.account() else { return Poll::Nothing };
        match account.lock().and_then(|local| local.store.cursor()) {
            Ok(cursor) => cursor,
            Err(_) => return Poll::Nothing,
        }
    };
    let request = v1::FetchWaitRequest { after_seq: cursor, limit: 1, timeout_ms: LONG_POLL.as_millis() as u32 };
    match rpc.call::<_, v1::PeekResponse>(method::FETCH_WAIT, &request).await {
        Ok(page) if !page.envelopes.is_empty() => Poll::Found,
        Ok(_) => Poll::Nothing,
        Err(e) => {
            tracing::debug!(error = %e, "long-poll fallback failed");
            Poll::Nothing
        }
    }
}

async fn listen(weak: &Weak<Inner>, rpc: &RpcClient) -> String {
    // The push stream opens with the server's first push; until then, and whenever it is
    // quiet, a long-poll runs beside it as the fallback.
    let mut stream: Option<quicprochat_rpc::PushStream> = None;
    let mut poll = Box::pin(long_poll(weak.clone(), rpc.clone()));
    loop {
        let frame = tokio::select! {
            opened = rpc.accept_push(), if stream.is_none() => {
                match opened {
                    Ok(opened) => stream = Some(opened),
                    Err(e) => return e.to_string(),
                }
                continue;
            }
            next = async { match stream.as_mut() { Some(s) => s.next().await, None => std::future::pending().await } } => {
                match next {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return "push stream ended".to_owned(),
                    Err(e) => return e.to_string(),
                }
            }
            found = &mut poll => {
                poll = Box::pin(long_poll(weak.clone(), rpc.clone()));
                match found {
                    Poll::ClientGone => return "client dropped".to_owned(),
                    Poll::Nothing => {}
                    Poll::Found => {
                        let Some(inner) = weak.upgrade() else { return "client dropped".to_owned() };
                        if let Err(e) = (QpcClient { inner }).sync().await {
                            tracing::warn!(error = %e, "catching up after a long-poll failed");
                        }
                    }
                }
                if rpc.close_reason().is_some() {
                    return "connection closed".to_owned();
                }
                continue;
            }
        };
        // A push arrived: the quiet period starts again.
        poll = Box::pin(long_poll(weak.clone(), rpc.clone()));
        let Some(inner) = weak.upgrade() else { return "client dropped".to_owned() };
        #[cfg(feature = "test-util")]
        if inner.ignore_push.load(Ordering::SeqCst) {
            continue;
        }
        let client = QpcClient { inner };
        let handled = match frame.event_type {
            event::MESSAGE_NOTIFICATION => match frame.decode::<v1::MessageNotification>() {
                // Sequence 0 marks an ephemeral envelope: pushed, never queued.
                Ok(v1::MessageNotification { seq: 0, envelope: Some(queued), .. }) => {
                    client.receive_ephemeral(&queued).await
                }
                // The envelope inline: applied at once when it is the next one.
                Ok(v1::MessageNotification { envelope: Some(queued), .. }) => client.receive_pushed(&queued).await,
                _ => client.sync().await.map(|_| ()),
            },
            event::KEY_PACKAGES_LOW => client.top_up_key_packages().await,
            event::SESSION_EXPIRED => {
                let _ = client.inner.events.send(ClientEvent::SessionExpired);
                Ok(())
            }
            other => {
                tracing::debug!(event_type = other, "ignoring push event");
                Ok(())
            }
        };
        if let Err(e) = handled {
            if rpc.close_reason().is_some() {
                return "connection closed".to_owned();
            }
            tracing::warn!(error = %e, event_type = frame.event_type, "handling a push failed");
        }
    }
}

/// Reconnects until it succeeds (true) or the session is gone or the client closed (false).
async fn reconnect(weak: &Weak<Inner>) -> bool {
    let mut backoff = MIN_BACKOFF;
    loop {
        // Full jitter: sleep a random part of the current backoff.
        let jitter = rand_core::RngCore::next_u64(&mut rand_core::OsRng) % (backoff.as_millis() as u64 + 1);
        tokio::time::sleep(Duration::from_millis(jitter.max(50))).await;
        let Some(inner) = weak.upgrade() else { return false };
        if inner.closed.load(Ordering::SeqCst) {
            return false;
        }
        let client = QpcClient { inner };
        match client.resume_connection().await {
            Ok(()) => {
                let _ = client.inner.events.send(ClientEvent::Reconnected);
                // Once the old connection is closed: a pass stuck on it has failed and let go
                // of the sync lock.
                if let Err(e) = client.ack_applied(&client.rpc()).await {
                    tracing::debug!(error = %e, "acknowledging what was applied before the reconnect failed");
                }
                if let Err(e) = client.sync().await {
                    tracing::warn!(error = %e, "catching up after reconnect failed");
                }
                client.inner.outbox_wakeup.notify_one();
                return true;
            }
            Err(SdkError::Server { status: "UNAUTHENTICATED", .. }) => {
                let _ = client.inner.events.send(ClientEvent::SessionExpired);
                return false;
            }
            Err(e) => tracing::debug!(error = %e, "reconnect failed; retrying"),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

impl QpcClient {
    /// Opens a fresh connection, resumes the session on it, resubscribes, and makes it current.
    async fn resume_connection(&self) -> Result<()> {
        let account = self.account()?;
        let config = &self.inner.config;
        let trust = match &config.trust {
            Trust::PinnedCertificate(der) => ServerTrust::Pinned(der.clone()),
            Trust::CaCertificates(cas) => ServerTrust::Roots(cas.clone()),
        };
        let tls = quicprochat_rpc::tls::client_config(&trust)?;
        let rpc = RpcClient::connect(config.server, &config.server_name, tls).await?;
        let _: v1::ResumeResponse = rpc
            .call(method::RESUME, &v1::ResumeRequest { session_token: Bytes::copy_from_slice(&account.session_token) })
            .await?;
        let _: v1::SubscribeResponse = rpc.call(method::SUBSCRIBE, &v1::SubscribeRequest {}).await?;
        // A copy of a Welcome per device is what every server takes: without an answer, that.
        let info: Option<v1::ServerInfoResponse> = rpc.call(method::SERVER_INFO, &v1::ServerInfoRequest {}).await.ok();
        account.learn_server(info.as_ref());
        let old = match self.inner.rpc.write() {
            Ok(mut current) => std::mem::replace(&mut *current, rpc),
            Err(_) => return Err(SdkError::Poisoned),
        };
        old.close("replaced by a new connection");
        Ok(())
    }
}
