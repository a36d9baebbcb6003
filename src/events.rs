//! Verification events: one [`AuthEvent`] for every request an
//! [`AuthLayer`](crate::auth::AuthLayer) admits or turns away, handed to an [`AuthEvents`]
//! hook, for audit logs and analytics.
//!
//! An event says when the request was judged (by the layer's [clock](crate::clock)), how it
//! ended ([`Outcome`]), what kind of credential it carried, who the caller is (principal id,
//! owner and key id, also for a known key that was refused) and, when known, the client's
//! address. It says nothing of the route: the same layer judges every route alike. It never
//! holds the credential.
//!
//! The hook is called on the request's task, before the request goes on or its error response
//! is made, so it must not block. To do slow work (write to a file, a database, a queue), hand
//! the events to a background task with [`channel`]: a bounded queue that drops, and counts,
//! the events it has no room for rather than make a request wait.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use keygate::{auth::AuthLayer, events, key::KeyRecord, store::MemoryStore};
//! use tower::{Layer, ServiceExt as _};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let store = MemoryStore::new();
//!     let key = store.issue(KeyRecord::new("key_1", "acme"))?;
//!
//!     let (sender, mut receiver) = events::channel(1024);
//!     let audit = tokio::spawn(async move {
//!         let mut lines = Vec::new();
//!         while let Some(event) = receiver.recv().await {
//!             // In a service: write an audit record.
//!             lines.push(format!("{} {:?}", event.outcome().as_str(), event.key_id()));
//!         }
//!         lines
//!     });
//!
//!     let layer = AuthLayer::new(store).events(sender);
//!     let svc = layer.layer(tower::service_fn(|_: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("sunny")))
//!     }));
//!
//!     let good = Request::get("/").header("x-api-key", key.expose_secret()).body(())?;
//!     assert_eq!(svc.clone().oneshot(good).await?.status(), StatusCode::OK);
//!     let bad = Request::get("/").header("x-api-key", "no such key").body(())?;
//!     assert_eq!(svc.oneshot(bad).await?.status(), StatusCode::UNAUTHORIZED);
//!
//!     drop(layer); // the last sender: the receiver ends
//!     assert_eq!(
//!         audit.await?,
//!         ["authenticated Some(\"key_1\")", "unknown_key None"]
//!     );
//!     Ok(())
//! }
//! ```
//!
//! A closure is a hook too, for work that is quick (a counter, a `tracing` event):
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//! use keygate::{auth::AuthLayer, events::AuthEvent, store::MemoryStore};
//!
//! let refused = Arc::new(AtomicU64::new(0));
//! let count = refused.clone();
//! let layer = AuthLayer::new(MemoryStore::new()).events(move |event: &AuthEvent| {
//!     if !event.outcome().is_admitted() {
//!         count.fetch_add(1, Ordering::Relaxed);
//!     }
//! });
//! # let _ = layer;
//! ```
//!
//! Without a hook, the layer makes no event and resolves no client address: the cost is one
//! branch per request.

use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::error::{AuthError, Forbidden, InvalidCredential, Unavailable};
use crate::key::KeyRecord;
use crate::principal::{Principal, PrincipalKind};

/// Receives one [`AuthEvent`] for every request an [`AuthLayer`](crate::auth::AuthLayer) judges.
///
/// Set with [`AuthLayer::events`](crate::auth::AuthLayer::events). Implemented for closures
/// `Fn(&AuthEvent)` and for the sending half of a [`channel`].
///
/// # Non-blocking
///
/// [`on_event`](Self::on_event) runs on the request's task, within the request's time: it must
/// return at once, without waiting on a lock that slow work holds, on I/O or on a full queue.
/// Work that may wait belongs on another task; [`channel`] takes the events there, dropping
/// (and counting) those it has no room for.
///
/// ```
/// use std::sync::Mutex;
/// use keygate::events::{AuthEvent, AuthEvents};
///
/// /// Counts the refusals per outcome, in memory.
/// #[derive(Default)]
/// struct Refusals(Mutex<std::collections::BTreeMap<&'static str, u64>>);
///
/// impl AuthEvents for Refusals {
///     fn on_event(&self, event: &AuthEvent) {
///         if !event.outcome().is_admitted() {
///             // A lock held for an insert only: never long.
///             let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
///             *counts.entry(event.outcome().as_str()).or_default() += 1;
///         }
///     }
/// }
///
/// let layer = keygate::auth::AuthLayer::new(keygate::store::MemoryStore::new())
///     .events(Refusals::default());
/// # let _ = layer;
/// ```
pub trait AuthEvents: Send + Sync + 'static {
    /// Takes note of `event`. Must not block (see the [trait](Self) docs); clone the event to
    /// keep it (a clone costs a few reference counts).
    fn on_event(&self, event: &AuthEvent);
}

impl<F> AuthEvents for F
where
    F: Fn(&AuthEvent) + Send + Sync + 'static,
{
    fn on_event(&self, event: &AuthEvent) {
        self(event)
    }
}

/// How a request ended, as an [`AuthEvent`] tells it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Outcome {
    /// Admitted with a credential: the event has a [`principal`](AuthEvent::principal).
    Authenticated,
    /// Admitted without a credential, by an [optional](crate::auth::AuthLayer::optional) layer.
    Anonymous,
    /// Turned away with this error (the one the response was rendered from).
    Refused(AuthError),
}

impl Outcome {
    /// A short, fixed name: `authenticated`, `anonymous`, or the error's
    /// [`kind`](AuthError::kind) (`missing_credential`, `unknown_key`, `revoked_key`, ...), the
    /// names that logs and spans use.
    ///
    /// ```
    /// use keygate::{error::AuthError, events::Outcome};
    ///
    /// assert_eq!(Outcome::Authenticated.as_str(), "authenticated");
    /// assert_eq!(Outcome::Refused(AuthError::MissingCredential).as_str(), "missing_credential");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Authenticated => "authenticated",
            Self::Anonymous => "anonymous",
            Self::Refused(error) => error.kind(),
        }
    }

    /// Whether the request was let through.
    pub fn is_admitted(&self) -> bool {
        matches!(self, Self::Authenticated | Self::Anonymous)
    }

    /// The error the request was turned away with.
    pub fn error(&self) -> Option<&AuthError> {
        match self {
            Self::Refused(error) => Some(error),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whom an event is about.
#[derive(Clone)]
enum Caller {
    /// Nobody known: no credential, or one that names no key or token that could be read.
    Unknown,
    /// The admitted caller.
    Admitted(Principal),
    /// A known key, refused (revoked, disabled, expired, not from this address).
    RefusedKey(Arc<KeyRecord>),
}

/// One decision of an [`AuthLayer`](crate::auth::AuthLayer): when, how it ended, and who asked.
///
/// Cloning is cheap: a few reference counts, no copy of a string. `Debug` shows every field;
/// nothing in an event is a secret (it never holds the credential, nor its digest).
///
/// An event carries nothing of the route or method: a layer judges every route alike, and an
/// audit record that needs the route is written by a layer or handler that sees it, with the
/// [`Principal`].
#[derive(Clone)]
pub struct AuthEvent {
    at: SystemTime,
    outcome: Outcome,
    kind: Option<PrincipalKind>,
    caller: Caller,
    client_addr: Option<IpAddr>,
}

impl AuthEvent {
    /// The event of a request admitted as `principal` (`None`: anonymously).
    pub(crate) fn admitted(
        at: SystemTime,
        principal: Option<Principal>,
        client_addr: Option<IpAddr>,
    ) -> Self {
        let (outcome, kind, caller) = match principal {
            Some(p) => (Outcome::Authenticated, Some(p.kind()), Caller::Admitted(p)),
            None => (Outcome::Anonymous, None, Caller::Unknown),
        };
        Self {
            at,
            outcome,
            kind,
            caller,
            client_addr,
        }
    }

    /// The event of a request turned away with `error`; `key` is the record of the key it
    /// presented, when a known key was refused.
    pub(crate) fn refused(
        at: SystemTime,
        error: &AuthError,
        key: Option<Arc<KeyRecord>>,
        client_addr: Option<IpAddr>,
    ) -> Self {
        let (kind, caller) = match key {
            Some(record) => (Some(PrincipalKind::ApiKey), Caller::RefusedKey(record)),
            None => (credential_kind(error), Caller::Unknown),
        };
        Self {
            at,
            outcome: Outcome::Refused(error.clone()),
            kind,
            caller,
            client_addr,
        }
    }

    /// When the layer judged the request, by its [clock](crate::auth::AuthLayer::clock).
    pub fn at(&self) -> SystemTime {
        self.at
    }

    /// How the request ended.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// The kind of credential the request was judged by: [`ApiKey`](PrincipalKind::ApiKey) or
    /// [`Jwt`](PrincipalKind::Jwt). Known for every admitted caller, and for a refused
    /// credential once the layer could tell: a key the store does not know, or that fails its
    /// format's checksum, is an API key (so is any credential a layer without keys for it
    /// refuses as an unknown key); a token with a bad signature or past its expiry is a JWT.
    /// `None` for an anonymous request, a missing credential, and one that could not be read
    /// (`invalid_request`).
    pub fn kind(&self) -> Option<PrincipalKind> {
        self.kind
    }

    /// The admitted caller, as the handler sees it; `None` when the request was turned away or
    /// admitted anonymously.
    pub fn principal(&self) -> Option<&Principal> {
        match &self.caller {
            Caller::Admitted(p) => Some(p),
            _ => None,
        }
    }

    /// The admitted caller's [id](Principal::id): the key record's id, or the token's subject.
    /// `None` when nobody was admitted (a refused known key has a [`key_id`](Self::key_id) and
    /// an [`owner`](Self::owner), and no principal).
    pub fn principal_id(&self) -> Option<&str> {
        self.principal().map(Principal::id)
    }

    /// The owner of the caller's key, or of an admitted token's caller when its verifier reads
    /// one. Also for a known key that was refused.
    pub fn owner(&self) -> Option<&str> {
        match &self.caller {
            Caller::Admitted(p) => p.owner(),
            Caller::RefusedKey(record) => Some(&record.owner),
            Caller::Unknown => None,
        }
    }

    /// The id of the API key's record, for a key the store knows, admitted or refused. `None`
    /// for a token (its subject is the [`principal_id`](Self::principal_id)), and for a key
    /// the store does not know.
    pub fn key_id(&self) -> Option<&str> {
        self.key_record().map(|record| record.id.as_str())
    }

    /// The record of the API key, for a key the store knows, admitted or refused: its
    /// metadata, status and the rest.
    pub fn key_record(&self) -> Option<&KeyRecord> {
        match &self.caller {
            Caller::Admitted(p) => p.key_record(),
            Caller::RefusedKey(record) => Some(record),
            Caller::Unknown => None,
        }
    }

    /// The [environment](Principal::environment) of the admitted caller's key.
    pub fn environment(&self) -> Option<&str> {
        self.principal().and_then(Principal::environment)
    }

    /// The client's address, when known: the connection's peer or, behind the layer's
    /// [trusted proxies](crate::auth::AuthLayer::trusted_proxies), the client the forwarding
    /// headers name (see [`client_addr`](crate::client_addr)).
    pub fn client_addr(&self) -> Option<IpAddr> {
        self.client_addr
    }
}

impl fmt::Debug for AuthEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthEvent")
            .field("at", &self.at)
            .field("outcome", &self.outcome.as_str())
            .field("kind", &self.kind)
            .field("principal_id", &self.principal_id())
            .field("owner", &self.owner())
            .field("key_id", &self.key_id())
            .field("environment", &self.environment())
            .field("client_addr", &self.client_addr)
            .finish()
    }
}

/// The kind of credential that `error` refused, when it tells.
fn credential_kind(error: &AuthError) -> Option<PrincipalKind> {
    match error {
        AuthError::InvalidCredential(why) => match why {
            InvalidCredential::TokenExpired | InvalidCredential::InvalidToken => {
                Some(PrincipalKind::Jwt)
            }
            InvalidCredential::UnknownKey
            | InvalidCredential::MalformedKey
            | InvalidCredential::RevokedKey
            | InvalidCredential::DisabledKey
            | InvalidCredential::ExpiredKey => Some(PrincipalKind::ApiKey),
        },
        AuthError::Unavailable(Unavailable::KeyStore(_)) => Some(PrincipalKind::ApiKey),
        AuthError::Unavailable(Unavailable::JwtKeys) => Some(PrincipalKind::Jwt),
        AuthError::Forbidden(Forbidden::AddressNotAllowed) => Some(PrincipalKind::ApiKey),
        _ => None,
    }
}

/// A bounded queue of events for a task of their own: the [`EventSender`] goes to
/// [`AuthLayer::events`](crate::auth::AuthLayer::events), the [`EventReceiver`] to the task.
///
/// The sender never waits: an event that finds the queue full (or its receiver gone) is dropped
/// and [counted](EventSender::dropped). `capacity` is how many events may wait; size it for the
/// longest stall of the consumer at the peak request rate.
///
/// ```
/// use keygate::events;
///
/// let (sender, mut receiver) = events::channel(4096);
/// let layer = keygate::auth::AuthLayer::new(keygate::store::MemoryStore::new()).events(sender);
/// # let _ = layer;
/// # async fn consume(mut receiver: keygate::events::EventReceiver) {
/// while let Some(event) = receiver.recv().await {
///     println!("{} {:?} {:?}", event.outcome(), event.principal_id(), event.client_addr());
/// }
/// # }
/// # let _ = receiver.try_recv();
/// ```
///
/// # Panics
///
/// If `capacity` is 0.
pub fn channel(capacity: usize) -> (EventSender, EventReceiver) {
    assert!(capacity > 0, "events::channel with no room for an event");
    let (tx, rx) = mpsc::channel(capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    (
        EventSender {
            tx,
            dropped: dropped.clone(),
        },
        EventReceiver { rx, dropped },
    )
}

/// The sending half of a [`channel`]: an [`AuthEvents`] hook that queues each event without
/// waiting. Clones share the queue and the count of dropped events.
#[derive(Clone)]
pub struct EventSender {
    tx: mpsc::Sender<AuthEvent>,
    dropped: Arc<AtomicU64>,
}

impl EventSender {
    /// How many events were dropped so far: the queue was full, or the receiver gone.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl AuthEvents for EventSender {
    fn on_event(&self, event: &AuthEvent) {
        if self.tx.try_send(event.clone()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::event_dropped();
        }
    }
}

impl fmt::Debug for EventSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSender")
            .field("capacity", &self.tx.max_capacity())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// The receiving half of a [`channel`], for the task that consumes the events. It is also a
/// [`Stream`](futures_core::Stream) of them.
pub struct EventReceiver {
    rx: mpsc::Receiver<AuthEvent>,
    dropped: Arc<AtomicU64>,
}

impl EventReceiver {
    /// The next event, in the order they were queued; `None` once every sender is dropped (with
    /// the layers that hold them) and the queue is empty.
    pub async fn recv(&mut self) -> Option<AuthEvent> {
        self.rx.recv().await
    }

    /// Waits for at least one event, then moves up to `limit` of those queued into `buffer`,
    /// for a consumer that writes in batches; returns how many. 0 once every sender is dropped
    /// and the queue is empty (or when `limit` is 0).
    pub async fn recv_many(&mut self, buffer: &mut Vec<AuthEvent>, limit: usize) -> usize {
        self.rx.recv_many(buffer, limit).await
    }

    /// The next event, if one is queued now.
    pub fn try_recv(&mut self) -> Option<AuthEvent> {
        self.rx.try_recv().ok()
    }

    /// Polls for the next event, as [`recv`](Self::recv) waits for it.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<AuthEvent>> {
        self.rx.poll_recv(cx)
    }

    /// How many events the senders dropped so far (see [`EventSender::dropped`]).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl futures_core::Stream for EventReceiver {
    type Item = AuthEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<AuthEvent>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

impl fmt::Debug for EventReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventReceiver")
            .field("queued", &self.rx.len())
            .field("dropped", &self.dropped())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant, UNIX_EPOCH};

    use super::*;
    use crate::error::Unavailable;
    use crate::key::KeyStatus;
    use crate::store::StoreError;

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn key_event() -> AuthEvent {
        let record = KeyRecord::new("key_1", "acme");
        let principal =
            Principal::from_key_record(Arc::new(record)).in_environment(Some("live".into()));
        AuthEvent::admitted(at(), Some(principal), Some([192, 0, 2, 7].into()))
    }

    #[test]
    fn an_admitted_key_carries_its_caller() {
        let event = key_event();
        assert_eq!(event.at(), at());
        assert!(matches!(event.outcome(), Outcome::Authenticated));
        assert_eq!(event.outcome().as_str(), "authenticated");
        assert!(event.outcome().is_admitted());
        assert!(event.outcome().error().is_none());
        assert_eq!(event.kind(), Some(PrincipalKind::ApiKey));
        assert_eq!(event.principal_id(), Some("key_1"));
        assert_eq!(event.owner(), Some("acme"));
        assert_eq!(event.key_id(), Some("key_1"));
        assert_eq!(event.environment(), Some("live"));
        assert_eq!(event.client_addr(), Some([192, 0, 2, 7].into()));
    }

    #[test]
    fn a_token_caller_has_no_key_id() {
        let p = Principal::new("user-7", PrincipalKind::Jwt).with_owner("acme");
        let event = AuthEvent::admitted(at(), Some(p), None);
        assert_eq!(event.kind(), Some(PrincipalKind::Jwt));
        assert_eq!(event.principal_id(), Some("user-7"));
        assert_eq!(event.owner(), Some("acme"));
        assert_eq!(event.key_id(), None);
        assert_eq!(event.client_addr(), None);
    }

    #[test]
    fn an_anonymous_request_has_no_caller() {
        let event = AuthEvent::admitted(at(), None, None);
        assert_eq!(event.outcome().as_str(), "anonymous");
        assert!(event.outcome().is_admitted());
        assert_eq!(event.kind(), None);
        assert!(event.principal().is_none());
        assert_eq!(event.owner(), None);
        assert_eq!(event.key_id(), None);
    }

    #[test]
    fn a_refused_known_key_names_the_key_but_admits_nobody() {
        let mut record = KeyRecord::new("key_2", "globex");
        record.status = KeyStatus::Revoked;
        let error = AuthError::InvalidCredential(InvalidCredential::RevokedKey);
        let event = AuthEvent::refused(at(), &error, Some(Arc::new(record)), None);
        assert_eq!(event.outcome().as_str(), "revoked_key");
        assert!(!event.outcome().is_admitted());
        assert!(matches!(
            event.outcome().error(),
            Some(AuthError::InvalidCredential(InvalidCredential::RevokedKey))
        ));
        assert_eq!(event.kind(), Some(PrincipalKind::ApiKey));
        assert!(event.principal().is_none());
        assert_eq!(event.principal_id(), None);
        assert_eq!(event.key_id(), Some("key_2"));
        assert_eq!(event.owner(), Some("globex"));
    }

    #[test]
    fn a_refusal_tells_the_credential_kind_when_it_can() {
        let kind = |error: AuthError| AuthEvent::refused(at(), &error, None, None).kind();
        let invalid = AuthError::InvalidCredential;
        assert_eq!(kind(AuthError::MissingCredential), None);
        assert_eq!(
            kind(AuthError::InvalidRequest(
                crate::credential::CredentialError::TooLong
            )),
            None
        );
        assert_eq!(
            kind(invalid(InvalidCredential::UnknownKey)),
            Some(PrincipalKind::ApiKey)
        );
        assert_eq!(
            kind(invalid(InvalidCredential::MalformedKey)),
            Some(PrincipalKind::ApiKey)
        );
        assert_eq!(
            kind(invalid(InvalidCredential::InvalidToken)),
            Some(PrincipalKind::Jwt)
        );
        assert_eq!(
            kind(invalid(InvalidCredential::TokenExpired)),
            Some(PrincipalKind::Jwt)
        );
        let down = Arc::new(StoreError::unavailable("connection refused"));
        assert_eq!(
            kind(AuthError::Unavailable(Unavailable::KeyStore(down))),
            Some(PrincipalKind::ApiKey)
        );
        assert_eq!(
            kind(AuthError::Unavailable(Unavailable::JwtKeys)),
            Some(PrincipalKind::Jwt)
        );
    }

    #[test]
    fn debug_shows_the_fields() {
        let text = format!("{:?}", key_event());
        for part in [
            "outcome: \"authenticated\"",
            "kind: Some(ApiKey)",
            "principal_id: Some(\"key_1\")",
            "owner: Some(\"acme\")",
            "key_id: Some(\"key_1\")",
            "environment: Some(\"live\")",
            "client_addr: Some(192.0.2.7)",
        ] {
            assert!(text.contains(part), "{part} not in {text}");
        }
    }

    #[test]
    fn closures_are_hooks() {
        let seen = Arc::new(AtomicU64::new(0));
        let count = seen.clone();
        let hook: Box<dyn AuthEvents> = Box::new(move |_: &AuthEvent| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        hook.on_event(&key_event());
        hook.on_event(&key_event());
        assert_eq!(seen.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_channel_delivers_in_order() {
        let (sender, mut receiver) = channel(4);
        sender.on_event(&key_event());
        sender.on_event(&AuthEvent::admitted(at(), None, None));
        assert_eq!(
            receiver.recv().await.unwrap().outcome().as_str(),
            "authenticated"
        );
        assert_eq!(receiver.try_recv().unwrap().outcome().as_str(), "anonymous");
        assert!(receiver.try_recv().is_none());
        drop(sender);
        assert!(receiver.recv().await.is_none(), "no sender left: the end");
        assert_eq!(receiver.dropped(), 0);
    }

    #[test]
    fn a_full_channel_drops_and_counts_without_blocking() {
        let (sender, mut receiver) = channel(2);
        let started = Instant::now();
        for _ in 0..1000 {
            sender.on_event(&key_event());
        }
        // No runtime, nobody receiving: a sender that waited for room would never return.
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(sender.dropped(), 998);
        assert_eq!(receiver.dropped(), 998);
        let clone = sender.clone();
        clone.on_event(&key_event());
        assert_eq!(sender.dropped(), 999, "clones share the count");

        // Room again: events are queued again.
        assert!(receiver.try_recv().is_some());
        sender.on_event(&key_event());
        assert_eq!(sender.dropped(), 999);
        assert!(receiver.try_recv().is_some());
        assert!(receiver.try_recv().is_some());
        assert!(receiver.try_recv().is_none());
    }

    #[test]
    fn events_for_a_gone_receiver_are_dropped_too() {
        let (sender, receiver) = channel(8);
        drop(receiver);
        sender.on_event(&key_event());
        assert_eq!(sender.dropped(), 1);
    }

    #[tokio::test]
    async fn recv_many_takes_a_batch() {
        let (sender, mut receiver) = channel(8);
        for _ in 0..5 {
            sender.on_event(&key_event());
        }
        let mut batch = Vec::new();
        assert_eq!(receiver.recv_many(&mut batch, 3).await, 3);
        assert_eq!(receiver.recv_many(&mut batch, 8).await, 2);
        assert_eq!(batch.len(), 5);
    }

    #[test]
    #[should_panic(expected = "no room for an event")]
    fn a_channel_without_room_is_a_configuration_error() {
        let _ = channel(0);
    }

    #[test]
    fn debug_of_the_channel_halves() {
        let (sender, receiver) = channel(3);
        sender.on_event(&key_event());
        assert_eq!(
            format!("{sender:?}"),
            "EventSender { capacity: 3, dropped: 0 }"
        );
        assert_eq!(
            format!("{receiver:?}"),
            "EventReceiver { queued: 1, dropped: 0 }"
        );
    }
}
