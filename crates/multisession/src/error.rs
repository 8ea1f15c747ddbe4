//! One error type for stores, the engine and configuration.

use std::error::Error as StdError;
use std::fmt;

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

type Source = Box<dyn StdError + Send + Sync + 'static>;

/// What went wrong, in the terms a caller can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The store cannot be reached or did not answer in time. Requests get
    /// `503 Service Unavailable`; retrying later may succeed.
    Unavailable,
    /// Stored data could not be decoded. The engine treats such a session as
    /// no session.
    Corrupt,
    /// The store cannot do this (for example, a store without a user index
    /// asked to list a user's sessions).
    Unsupported,
    /// A write collided with another one: `create` on a key that exists, or a
    /// concurrent update that could not be retried.
    Conflict,
    /// The session was deleted or expired meanwhile: `apply` and `touch` never
    /// recreate it. The engine ends this device's session.
    Gone,
    /// The configuration is invalid; the message names the field.
    Config,
    /// A login was refused because the user is at `max_sessions_per_user`.
    TooManySessions,
    /// The session API was used in a way it does not allow; the message says
    /// what to do instead.
    Usage,
    /// A session is larger than its backend keeps: a cookie session over
    /// what browsers keep (4096 bytes; the message names the cookie and the
    /// size), or a record over a store's item limit (Memcached's). Nothing
    /// truncated is sent or stored.
    TooLarge,
    /// A request was refused as a possible cross-site request forgery: a
    /// missing or wrong CSRF token, or a browser request from another
    /// origin. Requests get `403 Forbidden`.
    Forbidden,
}

/// The error of every fallible operation in this crate: a kind, a message
/// that never contains a session id or session data, and the source.
///
/// ```
/// use multisession::{Error, ErrorKind};
///
/// let err = Error::gone();
/// assert_eq!(err.kind(), ErrorKind::Gone);
/// assert!(err.to_string().contains("no longer exists"));
/// ```
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Source>,
}

impl Error {
    /// An error of `kind` with a message.
    ///
    /// ```
    /// let err = multisession::Error::new(multisession::ErrorKind::Conflict, "key exists");
    /// assert_eq!(err.to_string(), "conflict: key exists");
    /// ```
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// Attaches the underlying cause, kept for [`std::error::Error::source`]
    /// and shown after the message.
    ///
    /// ```
    /// use std::error::Error as _;
    /// let io = std::io::Error::other("connection refused");
    /// let err = multisession::Error::unavailable("redis is down", io);
    /// assert!(err.source().is_some());
    /// assert_eq!(err.to_string(), "session store unavailable: redis is down: connection refused");
    /// ```
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The store could not be reached; see [`ErrorKind::Unavailable`].
    ///
    /// ```
    /// let err = multisession::Error::unavailable("timed out", std::io::Error::other("t"));
    /// assert!(err.is_unavailable());
    /// ```
    pub fn unavailable(message: impl Into<String>, source: impl Into<Source>) -> Self {
        Self::new(ErrorKind::Unavailable, message).with_source(source)
    }

    /// Stored data did not decode; see [`ErrorKind::Corrupt`].
    ///
    /// ```
    /// let err = multisession::Error::corrupt("not JSON");
    /// assert_eq!(err.kind(), multisession::ErrorKind::Corrupt);
    /// ```
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// The session was deleted or expired meanwhile; see [`ErrorKind::Gone`].
    ///
    /// ```
    /// assert_eq!(multisession::Error::gone().kind(), multisession::ErrorKind::Gone);
    /// ```
    pub fn gone() -> Self {
        Self::new(ErrorKind::Gone, "the session no longer exists")
    }

    /// The store cannot do this; see [`ErrorKind::Unsupported`].
    ///
    /// ```
    /// let err = multisession::Error::unsupported("cookie stores keep no user index");
    /// assert_eq!(err.kind(), multisession::ErrorKind::Unsupported);
    /// ```
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// Invalid configuration; the message must name the field.
    ///
    /// ```
    /// let err = multisession::Error::config("cookie_name: must not be empty");
    /// assert!(err.to_string().contains("cookie_name"));
    /// ```
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// The same error, its message prefixed with where it happened.
    pub(crate) fn context(mut self, prefix: impl std::fmt::Display) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Usage, message)
    }

    /// What kind of error this is.
    ///
    /// ```
    /// assert_eq!(multisession::Error::gone().kind(), multisession::ErrorKind::Gone);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the store was unreachable (the request gets 503).
    ///
    /// ```
    /// assert!(!multisession::Error::gone().is_unavailable());
    /// ```
    pub fn is_unavailable(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }

    /// How a web adapter answers this error: `503 Service Unavailable` when
    /// the store is down, `409 Conflict` for a refused login, `403
    /// Forbidden` for a failed CSRF or origin check, `500` otherwise, with a
    /// body that says which and never the session id. Server errors are
    /// logged as errors, refusals as information.
    #[cfg_attr(not(any(feature = "axum", feature = "actix")), allow(dead_code))]
    pub(crate) fn http_answer(&self) -> (u16, &'static str) {
        let status = self.http_status();
        if status >= 500 {
            tracing::error!(error = %self, "session error");
        } else if status == 403 {
            tracing::info!(error = %self, "request refused");
        }
        let body = match self.kind {
            ErrorKind::Unavailable => "The session store is unavailable. Please try again shortly.",
            ErrorKind::TooManySessions => "Too many active sessions: log out on another device first.",
            ErrorKind::Forbidden => "This request was refused: reload the page and try again.",
            _ => "Internal error in session handling.",
        };
        (status, body)
    }

    /// The status of [`Error::http_answer`], without logging.
    #[cfg_attr(not(any(feature = "axum", feature = "actix")), allow(dead_code))]
    pub(crate) fn http_status(&self) -> u16 {
        match self.kind {
            ErrorKind::Unavailable => 503,
            ErrorKind::TooManySessions => 409,
            ErrorKind::Forbidden => 403,
            _ => 500,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ErrorKind::Unavailable => "session store unavailable",
            ErrorKind::Corrupt => "corrupt session data",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Gone => "session gone",
            ErrorKind::Config => "invalid session configuration",
            ErrorKind::TooManySessions => "too many sessions",
            ErrorKind::Usage => "session API misuse",
            ErrorKind::TooLarge => "session too large",
            ErrorKind::Forbidden => "forbidden",
        };
        write!(f, "{kind}: {}", self.message)?;
        // The cause is part of the message: most applications print `{e}`
        // and would otherwise lose why the store failed.
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn StdError + 'static))
    }
}

/// Stored data that does not decode. serde's own message would quote the
/// offending value (`invalid type: string "…"`), which may be a secret, so
/// only where and what kind of error is kept.
impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        let what = match e.classify() {
            serde_json::error::Category::Io => "could not be read",
            serde_json::error::Category::Syntax => "is not valid JSON",
            serde_json::error::Category::Data => "does not have the expected shape",
            serde_json::error::Category::Eof => "is cut short",
        };
        Self::corrupt(format!("session data {what} (line {}, column {})", e.line(), e.column()))
    }
}
