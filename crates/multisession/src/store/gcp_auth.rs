//! Tokens for Firestore in Google Cloud from Application Default
//! Credentials, through the `gcp_auth` crate (feature `gcp-auth`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::TokenSource;
use crate::{Error, ErrorKind, Result};

/// The OAuth scope Firestore's REST API needs.
const DATASTORE_SCOPE: &str = "https://www.googleapis.com/auth/datastore";

/// How long fetching a token may take before a request answers
/// `Unavailable` (a token is cached by `gcp_auth` for its lifetime, so this
/// is paid about once an hour).
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`TokenSource`] over Google's Application Default Credentials: a
/// service-account key file named by `GOOGLE_APPLICATION_CREDENTIALS`, the
/// `gcloud auth application-default login` file, the metadata server of
/// Compute Engine, Cloud Run or GKE, or the `gcloud` CLI, in that order
/// (`gcp_auth::provider`). A token is fetched once and kept until shortly
/// before it expires; while the next is fetched, requests wait for it. The
/// `gcloud` CLI fallback runs the command synchronously, blocking a runtime
/// thread for its duration: use it for development only.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
/// use multisession::store::{FirestoreStore, GcpAuth};
///
/// let store = FirestoreStore::connect("https://firestore.googleapis.com", "my-project", "sessions")?
///     .with_token_source(GcpAuth::from_adc().await?);
/// # let _ = store;
/// # Ok(()) }
/// ```
pub struct GcpAuth {
    provider: Arc<dyn gcp_auth::TokenProvider>,
    /// The token in use. Behind an async lock, so that when it expires one
    /// request fetches the next and the others wait for it, rather than
    /// each fetching its own one after another (gcp_auth refetches under
    /// its own lock without looking at its cache again).
    current: tokio::sync::Mutex<Option<Arc<gcp_auth::Token>>>,
}

impl GcpAuth {
    /// Finds the credentials as Google's libraries do (see [`GcpAuth`]).
    ///
    /// # Errors
    ///
    /// `Config` if no credentials are found (or the file
    /// `GOOGLE_APPLICATION_CREDENTIALS` names is not a key file), with
    /// `gcp_auth`'s reason.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// let tokens = multisession::store::GcpAuth::from_adc().await?;
    /// # let _ = tokens;
    /// # Ok(()) }
    /// ```
    pub async fn from_adc() -> Result<Self> {
        let provider = tokio::time::timeout(TOKEN_TIMEOUT, gcp_auth::provider())
            .await
            .map_err(|_| no_credentials("looking for them took more than 10 s"))?
            .map_err(|e| no_credentials(&e.to_string()))?;
        Ok(Self { provider, current: tokio::sync::Mutex::new(None) })
    }

    /// The service-account key file at `path` (the JSON file Google Cloud's
    /// console hands out), whatever the environment says.
    ///
    /// # Errors
    ///
    /// `Config` if the file cannot be read or is not a service-account key.
    ///
    /// ```
    /// let missing = multisession::store::GcpAuth::from_credentials_file("/nonexistent/key.json");
    /// assert_eq!(missing.err().map(|e| e.kind()), Some(multisession::ErrorKind::Config));
    /// ```
    pub fn from_credentials_file(path: impl AsRef<Path>) -> Result<Self> {
        let account = gcp_auth::CustomServiceAccount::from_file(path.as_ref()).map_err(|e| {
            Error::config(format!(
                "gcp-auth: {} is not a readable service-account key file: {e}",
                path.as_ref().display()
            ))
        })?;
        Ok(Self { provider: Arc::new(account), current: tokio::sync::Mutex::new(None) })
    }
}

fn no_credentials(why: &str) -> Error {
    Error::config(format!(
        "gcp-auth: no Google Cloud credentials found ({why}); set GOOGLE_APPLICATION_CREDENTIALS to a \
         service-account key file, run `gcloud auth application-default login`, or run on Google Cloud"
    ))
}

#[async_trait]
impl TokenSource for GcpAuth {
    async fn token(&self) -> Result<String> {
        let mut current = self.current.lock().await;
        // `has_expired` allows a margin before the real expiry.
        if let Some(token) = current.as_ref().filter(|t| !t.has_expired()) {
            return Ok(token.as_str().to_owned());
        }
        let token = tokio::time::timeout(TOKEN_TIMEOUT, self.provider.token(&[DATASTORE_SCOPE]))
            .await
            .map_err(|_| Error::new(ErrorKind::Unavailable, "gcp-auth: fetching an access token timed out"))?
            // gcp_auth's errors name what failed, never a token or key.
            .map_err(|e| Error::new(ErrorKind::Unavailable, format!("gcp-auth: no access token: {e}")))?;
        let text = token.as_str().to_owned();
        *current = Some(token);
        Ok(text)
    }
}
