//! One session in three parts, configured in code: flask-session-plus's
//! example. The `csrf` cookie keeps `csrf_token`, the server-side `session`
//! (SQLite) keeps `user_id` and `user_data`, and the `data` cookie keeps
//! every other key. Each request writes only the parts whose keys changed.
//!
//! `cargo run --example multi_backend` walks a browser through it and prints
//! which cookies each request set; add `-- --serve` to serve it instead.
//! Keys come from `MULTISESSION_KEYS` (base64, at least 64 bytes each), or a
//! throwaway key is generated.

#[path = "shared/app.rs"]
mod shared;

use base64::Engine as _;
use multisession::store::{CookieStore, SqlStore};
use multisession::{Fields, Key, KeyRing, SessionConfig, SessionSpec, Sessions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = match std::env::var("MULTISESSION_KEYS") {
        Ok(text) => {
            let keys = text
                .split_whitespace()
                .map(|k| {
                    let bytes = base64::engine::general_purpose::STANDARD.decode(k)?;
                    Ok(Key::try_from(bytes.as_slice())?)
                })
                .collect::<Result<Vec<Key>, Box<dyn std::error::Error>>>()?;
            KeyRing::new(keys)?
        }
        Err(_) => {
            println!("MULTISESSION_KEYS is not set: using a throwaway key (cookies die with this process)");
            KeyRing::new(vec![Key::generate()])?
        }
    };
    let folder = tempfile::tempdir()?;
    let db = folder.path().join("sessions.db");
    // Plain http on localhost: browsers drop `Secure` cookies there.
    let config = |name: &str| SessionConfig::default().with_cookie_name(name).with_secure(false);
    let sessions = Sessions::from_specs([
        SessionSpec::new(CookieStore::new(keys.clone()), config("csrf")).with_fields(Fields::include(["csrf_token"])),
        SessionSpec::new(SqlStore::open(&db).await?, config("session"))
            .with_fields(Fields::include(["user_id", "user_data"])),
        SessionSpec::new(CookieStore::new(keys), config("data")).with_fields(Fields::Auto),
    ])?;
    if std::env::args().any(|a| a == "--serve") { shared::serve(sessions).await } else { shared::tour(sessions).await }
}
