//! OPAQUE password authentication (RFC 9807, via opaque-ke 3).
//!
//! Cipher suite: Ristretto255 for the OPRF and the key exchange group (opaque-ke's, with
//! public keys from the precomputed basepoint table: see `group`),
//! TripleDH key exchange, Argon2id as the key stretching function (run on the
//! client only, with [`OpaqueParams`]). Both sides bind the login to the
//! context string `"qpc/v1/opaque-login"`.
//!
//! Each flow is a typestate: `start` returns the state and the message to
//! send, and `finish(self, …)` consumes the state, so a flow cannot be
//! finished twice or out of order. Every message crosses the wire as the
//! fixed-length byte string opaque-ke serialises it to.

use std::fmt;

use opaque_ke::errors::ProtocolError;
use opaque_ke::key_exchange::tripledh::TripleDh;
use opaque_ke::{
    ClientLoginFinishParameters, ClientRegistrationFinishParameters, CredentialFinalization, CredentialRequest,
    CredentialResponse, Identifiers, RegistrationRequest, RegistrationResponse, RegistrationUpload, Ristretto255,
    ServerLoginStartParameters, ServerRegistration, ServerSetup,
};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::error::CoreError;
use crate::keystore::argon2id;

mod group;

/// Context both sides bind into the login key exchange.
const LOGIN_CONTEXT: &[u8] = b"qpc/v1/opaque-login";

/// The OPAQUE cipher suite used by quicprochat.
struct Suite;

impl opaque_ke::CipherSuite for Suite {
    type OprfCs = Ristretto255;
    type KeGroup = group::KeRistretto255;
    type KeyExchange = TripleDh;
    type Ksf = argon2::Argon2<'static>;
}

/// Argon2id cost parameters for the client's key stretching.
///
/// Registration and every later login must use the same parameters, or the
/// login fails with [`CoreError::InvalidLogin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpaqueParams {
    /// Memory cost in KiB.
    pub m_cost_kib: u32,
    /// Number of iterations.
    pub t_cost: u32,
    /// Degree of parallelism.
    pub p_cost: u32,
}

impl Default for OpaqueParams {
    /// Production strength: 64 MiB, 3 iterations, 1 lane.
    fn default() -> Self {
        Self { m_cost_kib: 64 * 1024, t_cost: 3, p_cost: 1 }
    }
}

impl OpaqueParams {
    /// The cheapest parameters Argon2 allows (8 KiB, 1 iteration, 1 lane).
    /// For tests only.
    pub fn light() -> Self {
        Self { m_cost_kib: 8, t_cost: 1, p_cost: 1 }
    }

    fn ksf(&self) -> Result<argon2::Argon2<'static>, CoreError> {
        argon2id(self.m_cost_kib, self.t_cost, self.p_cost, None)
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// Client side of registration, waiting for the server's response.
pub struct ClientRegistration {
    state: opaque_ke::ClientRegistration<Suite>,
}

impl ClientRegistration {
    /// Blinds the password; returns the state and the `RegistrationRequest`.
    pub fn start(rng: &mut impl CryptoRngCore, password: &[u8]) -> Result<(Self, Vec<u8>), CoreError> {
        let result = opaque_ke::ClientRegistration::<Suite>::start(rng, password).map_err(CoreError::OpaqueProtocol)?;
        Ok((Self { state: result.state }, result.message.serialize().to_vec()))
    }

    /// Consumes the server's `RegistrationResponse`; returns the
    /// `RegistrationUpload` to send back.
    pub fn finish(
        self,
        rng: &mut impl CryptoRngCore,
        password: &[u8],
        response: &[u8],
        params: &OpaqueParams,
    ) -> Result<Vec<u8>, CoreError> {
        let response = RegistrationResponse::<Suite>::deserialize(response)
            .map_err(|source| decode_error("RegistrationResponse", source))?;
        let ksf = params.ksf()?;
        let result = self
            .state
            .finish(
                rng,
                password,
                response,
                ClientRegistrationFinishParameters::new(Identifiers::default(), Some(&ksf)),
            )
            .map_err(CoreError::OpaqueProtocol)?;
        Ok(result.message.serialize().to_vec())
    }
}

impl fmt::Debug for ClientRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientRegistration { .. }")
    }
}

/// Client side of a login, waiting for the server's response.
pub struct ClientLogin {
    state: opaque_ke::ClientLogin<Suite>,
}

/// What a successful client login yields.
pub struct ClientLoginOutput {
    /// The `CredentialFinalization` to send to the server.
    pub finalization: Vec<u8>,
    /// The key shared with the server for this session (64 bytes).
    pub session_key: Zeroizing<Vec<u8>>,
    /// A key only the client can derive, stable across logins (64 bytes);
    /// usable to encrypt client-side backups.
    pub export_key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for ClientLoginOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLoginOutput")
            .field("finalization_len", &self.finalization.len())
            .field("session_key", &"<redacted>")
            .field("export_key", &"<redacted>")
            .finish()
    }
}

impl ClientLogin {
    /// Blinds the password and starts the key exchange; returns the state and
    /// the `CredentialRequest`.
    pub fn start(rng: &mut impl CryptoRngCore, password: &[u8]) -> Result<(Self, Vec<u8>), CoreError> {
        let result = opaque_ke::ClientLogin::<Suite>::start(rng, password).map_err(CoreError::OpaqueProtocol)?;
        Ok((Self { state: result.state }, result.message.serialize().to_vec()))
    }

    /// Consumes the server's `CredentialResponse`.
    ///
    /// A wrong password (or an unknown user, which the server answers with a
    /// dummy record) yields [`CoreError::InvalidLogin`].
    pub fn finish(
        self,
        password: &[u8],
        response: &[u8],
        params: &OpaqueParams,
    ) -> Result<ClientLoginOutput, CoreError> {
        let response = CredentialResponse::<Suite>::deserialize(response)
            .map_err(|source| decode_error("CredentialResponse", source))?;
        let ksf = params.ksf()?;
        let result = self
            .state
            .finish(
                password,
                response,
                ClientLoginFinishParameters::new(Some(LOGIN_CONTEXT), Identifiers::default(), Some(&ksf)),
            )
            .map_err(login_error)?;
        Ok(ClientLoginOutput {
            finalization: result.message.serialize().to_vec(),
            session_key: Zeroizing::new(result.session_key.to_vec()),
            export_key: Zeroizing::new(result.export_key.to_vec()),
        })
    }
}

impl fmt::Debug for ClientLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientLogin { .. }")
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// The server's long-term OPAQUE secrets: OPRF seed and static key pair.
/// Generated once and kept in the data directory.
pub struct OpaqueServerSetup {
    setup: ServerSetup<Suite>,
}

impl OpaqueServerSetup {
    /// Generates fresh server secrets.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self { setup: ServerSetup::<Suite>::new(rng) }
    }

    /// Serialises the setup for storage. Secret: store it encrypted.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.setup.serialize().to_vec())
    }

    /// Parses bytes produced by [`Self::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CoreError> {
        let setup = ServerSetup::<Suite>::deserialize(bytes).map_err(|source| decode_error("ServerSetup", source))?;
        Ok(Self { setup })
    }
}

impl fmt::Debug for OpaqueServerSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpaqueServerSetup { <redacted> }")
    }
}

/// Answers a client's `RegistrationRequest`; returns the
/// `RegistrationResponse`. `credential_id` identifies the account (the
/// case-folded username) and must be the same at every login.
pub fn server_registration_start(
    setup: &OpaqueServerSetup,
    request: &[u8],
    credential_id: &[u8],
) -> Result<Vec<u8>, CoreError> {
    let request = RegistrationRequest::<Suite>::deserialize(request)
        .map_err(|source| decode_error("RegistrationRequest", source))?;
    let result =
        ServerRegistration::<Suite>::start(&setup.setup, request, credential_id).map_err(CoreError::OpaqueProtocol)?;
    Ok(result.message.serialize().to_vec())
}

/// Turns the client's `RegistrationUpload` into the password file to store.
/// The file holds no secret that lets anyone log in without the password.
pub fn server_registration_finish(upload: &[u8]) -> Result<Vec<u8>, CoreError> {
    let upload = RegistrationUpload::<Suite>::deserialize(upload)
        .map_err(|source| decode_error("RegistrationUpload", source))?;
    Ok(ServerRegistration::<Suite>::finish(upload).serialize().to_vec())
}

/// Server side of a login, waiting for the client's finalization.
pub struct ServerLogin {
    state: opaque_ke::ServerLogin<Suite>,
}

impl ServerLogin {
    /// Answers a `CredentialRequest`; returns the state and the
    /// `CredentialResponse`.
    ///
    /// Pass `None` as `password_file` for an unknown user: opaque-ke then
    /// answers from a dummy record, with a response of the same length and
    /// the same work, and the client's finish fails with
    /// [`CoreError::InvalidLogin`] exactly as for a wrong password.
    pub fn start(
        rng: &mut impl CryptoRngCore,
        setup: &OpaqueServerSetup,
        password_file: Option<&[u8]>,
        request: &[u8],
        credential_id: &[u8],
    ) -> Result<(Self, Vec<u8>), CoreError> {
        let password_file = password_file
            .map(ServerRegistration::<Suite>::deserialize)
            .transpose()
            .map_err(|source| decode_error("password file", source))?;
        let request = CredentialRequest::<Suite>::deserialize(request)
            .map_err(|source| decode_error("CredentialRequest", source))?;
        let result = opaque_ke::ServerLogin::start(
            rng,
            &setup.setup,
            password_file,
            request,
            credential_id,
            ServerLoginStartParameters { context: Some(LOGIN_CONTEXT), identifiers: Identifiers::default() },
        )
        .map_err(CoreError::OpaqueProtocol)?;
        Ok((Self { state: result.state }, result.message.serialize().to_vec()))
    }

    /// Checks the client's `CredentialFinalization`; returns the session key
    /// (equal to the client's). A wrong password yields
    /// [`CoreError::InvalidLogin`].
    pub fn finish(self, finalization: &[u8]) -> Result<Zeroizing<Vec<u8>>, CoreError> {
        let finalization = CredentialFinalization::<Suite>::deserialize(finalization)
            .map_err(|source| decode_error("CredentialFinalization", source))?;
        let result = self.state.finish(finalization).map_err(login_error)?;
        Ok(Zeroizing::new(result.session_key.to_vec()))
    }
}

impl fmt::Debug for ServerLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerLogin { .. }")
    }
}

fn decode_error(message: &'static str, source: ProtocolError) -> CoreError {
    CoreError::OpaqueDecode { message, source }
}

fn login_error(error: ProtocolError) -> CoreError {
    match error {
        ProtocolError::InvalidLoginError => CoreError::InvalidLogin,
        other => CoreError::OpaqueProtocol(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn register(setup: &OpaqueServerSetup, user: &[u8], password: &[u8]) -> Vec<u8> {
        let (client, request) = ClientRegistration::start(&mut OsRng, password).unwrap();
        let response = server_registration_start(setup, &request, user).unwrap();
        let upload = client.finish(&mut OsRng, password, &response, &OpaqueParams::light()).unwrap();
        server_registration_finish(&upload).unwrap()
    }

    #[test]
    fn register_then_login() {
        let setup = OpaqueServerSetup::generate(&mut OsRng);
        let file = register(&setup, b"alice", b"correct horse");

        let (client, request) = ClientLogin::start(&mut OsRng, b"correct horse").unwrap();
        let (server, response) = ServerLogin::start(&mut OsRng, &setup, Some(&file), &request, b"alice").unwrap();
        let output = client.finish(b"correct horse", &response, &OpaqueParams::light()).unwrap();
        let server_key = server.finish(&output.finalization).unwrap();
        assert_eq!(output.session_key.as_slice(), server_key.as_slice());
        assert_eq!(server_key.len(), 64);
        assert!(!format!("{output:?}").contains(&hex::encode(output.session_key.as_slice())));
    }

    #[test]
    fn export_key_is_stable_across_logins() {
        let setup = OpaqueServerSetup::generate(&mut OsRng);
        let file = register(&setup, b"alice", b"pw");
        let login = || {
            let (client, request) = ClientLogin::start(&mut OsRng, b"pw").unwrap();
            let (_, response) = ServerLogin::start(&mut OsRng, &setup, Some(&file), &request, b"alice").unwrap();
            client.finish(b"pw", &response, &OpaqueParams::light()).unwrap()
        };
        assert_eq!(login().export_key, login().export_key);
    }

    #[test]
    fn wrong_password_is_invalid_login() {
        let setup = OpaqueServerSetup::generate(&mut OsRng);
        let file = register(&setup, b"alice", b"right");
        let (client, request) = ClientLogin::start(&mut OsRng, b"wrong").unwrap();
        let (_, response) = ServerLogin::start(&mut OsRng, &setup, Some(&file), &request, b"alice").unwrap();
        assert!(matches!(client.finish(b"wrong", &response, &OpaqueParams::light()), Err(CoreError::InvalidLogin)));
    }

    #[test]
    fn mismatched_params_are_invalid_login() {
        let setup = OpaqueServerSetup::generate(&mut OsRng);
        let file = register(&setup, b"alice", b"pw");
        let (client, request) = ClientLogin::start(&mut OsRng, b"pw").unwrap();
        let (_, response) = ServerLogin::start(&mut OsRng, &setup, Some(&file), &request, b"alice").unwrap();
        let other = OpaqueParams { t_cost: 2, ..OpaqueParams::light() };
        assert!(matches!(client.finish(b"pw", &response, &other), Err(CoreError::InvalidLogin)));
    }

    #[test]
    fn server_rejects_bad_finalization() {
        let setup = OpaqueServerSetup::generate(&mut OsRng);
        let file = register(&setup, b"alice", b"pw");
        let (_, request) = ClientLogin::start(&mut OsRng, b"pw").unwrap();
        let (server, response) = ServerLogin::start(&mut OsRng, &setup, Some(&file), &request, b"alice").unwrap();
        // A finalization from a different, unrelated login does not verify.
        let (client, request2) = ClientLogin::start(&mut OsRng, b"pw").unwrap();
        let (_, response2) = ServerLogin::start(&mut OsRng, &setup, Some(&file), &request2, b"alice").unwrap();
        let other = client.finish(b"pw", &response2, &OpaqueParams::light()).unwrap();
        assert_eq!(response.len(), response2.len());
        assert!(matches!(server.finish(&other.finalization), Err(CoreError::InvalidLogin)));
    }

    #[test]
    fn unknown_user_looks_like_a_known_one() {
        let setup = OpaqueServerSetup::generate(&mut OsRng);
        let file = register(&setup, b"alice", b"pw");

        let (_, request) = ClientLogin::start(&mut OsRng, b"pw").unwrap();
        let (_, known) = ServerLogin::start(&mut OsRng, &setup, Some(&file), &request, b"alice").unwrap();

        let (client, request) = ClientLogin::start(&mut OsRng, b"pw").unwrap();
        let (_, unknown) = ServerLogin::start(&mut OsRng, &setup, None, &request, b"mallory").unwrap();
        assert_eq!(known.len(), unknown.len());
        assert!(matches!(client.finish(b"pw", &unknown, &OpaqueParams::light()), Err(CoreError::InvalidLogin)));
    }

    /// Our suite with opaque-ke's own Ristretto255 key-exchange group: what records were
    /// registered with before `group::KeRistretto255`.
    struct StockSuite;

    impl opaque_ke::CipherSuite for StockSuite {
        type OprfCs = Ristretto255;
        type KeGroup = Ristretto255;
        type KeyExchange = TripleDh;
        type Ksf = argon2::Argon2<'static>;
    }

    /// A login of a client on opaque-ke's stock group against our server; returns both
    /// session keys.
    fn stock_client_login(setup: &OpaqueServerSetup, file: &[u8], password: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let start = opaque_ke::ClientLogin::<StockSuite>::start(&mut OsRng, password).unwrap();
        let request = start.message.serialize().to_vec();
        let (server, response) = ServerLogin::start(&mut OsRng, setup, Some(file), &request, b"alice").unwrap();
        let ksf = OpaqueParams::light().ksf().unwrap();
        let finish = start
            .state
            .finish(
                password,
                CredentialResponse::<StockSuite>::deserialize(&response).unwrap(),
                ClientLoginFinishParameters::new(Some(LOGIN_CONTEXT), Identifiers::default(), Some(&ksf)),
            )
            .unwrap();
        let server_key = server.finish(&finish.message.serialize()).unwrap();
        (finish.session_key.to_vec(), server_key.to_vec())
    }

    #[test]
    fn our_key_exchange_group_interoperates_with_opaque_kes() {
        // A record registered with the stock group (as every record before this group was) logs
        // in with ours, and a client on the stock group logs in to our server.
        let setup = OpaqueServerSetup::generate(&mut OsRng);
        let stock_setup = opaque_ke::ServerSetup::<StockSuite>::deserialize(&setup.to_bytes()).unwrap();
        let ksf = OpaqueParams::light().ksf().unwrap();
        let client = opaque_ke::ClientRegistration::<StockSuite>::start(&mut OsRng, b"pw").unwrap();
        let response =
            opaque_ke::ServerRegistration::<StockSuite>::start(&stock_setup, client.message, b"alice").unwrap();
        let upload = client
            .state
            .finish(
                &mut OsRng,
                b"pw",
                response.message,
                ClientRegistrationFinishParameters::new(Identifiers::default(), Some(&ksf)),
            )
            .unwrap();
        let stock_file = opaque_ke::ServerRegistration::<StockSuite>::finish(upload.message).serialize().to_vec();

        let (ours, request) = ClientLogin::start(&mut OsRng, b"pw").unwrap();
        let (server, response) = ServerLogin::start(&mut OsRng, &setup, Some(&stock_file), &request, b"alice").unwrap();
        let output = ours.finish(b"pw", &response, &OpaqueParams::light()).unwrap();
        assert_eq!(output.session_key.as_slice(), server.finish(&output.finalization).unwrap().as_slice());

        let (client_key, server_key) = stock_client_login(&setup, &register(&setup, b"alice", b"pw"), b"pw");
        assert_eq!(client_key, server_key);
        // A wrong password still fails across the two.
        let (ours, request) = ClientLogin::start(&mut OsRng, b"wrong").unwrap();
        let (_, response) = ServerLogin::start(&mut OsRng, &setup, Some(&stock_file), &request, b"alice").unwrap();
        assert!(matches!(ours.finish(b"wrong", &response, &OpaqueParams::light()), Err(CoreError::InvalidLogin)));
    }

    #[test]
    fn setup_roundtrip_and_garbage_input() {
        let setup = OpaqueServerSetup::generate(&mut OsRng);
        let restored = OpaqueServerSetup::from_bytes(&setup.to_bytes()).unwrap();
        assert_eq!(restored.to_bytes().as_slice(), setup.to_bytes().as_slice());
        assert_eq!(format!("{setup:?}"), "OpaqueServerSetup { <redacted> }");

        assert!(matches!(OpaqueServerSetup::from_bytes(b"short"), Err(CoreError::OpaqueDecode { .. })));
        assert!(matches!(
            server_registration_start(&setup, b"garbage", b"alice"),
            Err(CoreError::OpaqueDecode { message: "RegistrationRequest", .. })
        ));
        assert!(matches!(server_registration_finish(&[0u8; 3]), Err(CoreError::OpaqueDecode { .. })));
    }
}
