#![doc = include_str!("docs/guide.md")]
#![forbid(unsafe_code)]

mod audit;
mod config;
mod csrf;
mod device_name;
mod engine;
mod error;
mod fields;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod id;
mod record;
mod session;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod users;
pub mod web;

pub use audit::{AUDIT_TARGET, AuditEvent, AuditKind};
pub use config::{IdHeader, KeyRing, OnLimit, SessionConfig, SessionLimit, SessionSpec};
pub use engine::Commit;
pub use error::{Error, ErrorKind, Result};
pub use fields::Fields;
pub use id::{SessionId, StoreKey};
pub use record::{Change, Device, Meta, RECORD_FORMAT_VERSION, Record};
pub use session::{CSRF_TOKEN_KEY, MAX_USER_ID_BYTES, Session, USER_ID_KEY};
pub use users::{DeviceSession, SessionHandle, Sessions};
#[cfg(feature = "actix")]
pub use web::actix::SessionMiddleware;
#[cfg(feature = "axum")]
pub use web::axum::SessionLayer;

/// The `cookie` crate's 64-byte key, for [`KeyRing`].
pub use cookie::Key;
/// The `SameSite` cookie attribute, for [`SessionConfig::with_same_site`].
pub use cookie::SameSite;
/// Durations for lifetimes, from the `time` crate.
pub use time::Duration;

/// The README's examples compile: the axum and actix-web ones side by side,
/// so with both adapters (as `scripts/test` builds them).
#[doc = include_str!("../../../README.md")]
#[cfg(all(doctest, feature = "axum", feature = "actix", feature = "sqlite"))]
pub struct ReadmeDoctests;

/// docs/MIGRATING.md's examples compile (and run, but for `no_run`): every
/// store and both adapters, and the TOML files loaded from a temporary folder.
#[doc = include_str!("../../../docs/MIGRATING.md")]
#[cfg(all(
    doctest,
    feature = "axum",
    feature = "actix",
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "memcached",
    feature = "mongodb",
    feature = "firestore",
    feature = "gcp-auth",
    feature = "dynamodb",
    feature = "toml"
))]
pub struct MigratingDoctests;
