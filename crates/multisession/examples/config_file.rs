//! The same three-part session as `multi_backend`, loaded from
//! `examples/multisession.toml` (or the file given as the first argument).
//!
//! ```text
//! MULTISESSION_KEYS=$(head -c 64 /dev/urandom | base64 -w0) cargo run --features toml --example config_file
//! ```
//!
//! walks a browser through it and prints which cookies each request set; add
//! `-- --serve` to serve it instead.

#[path = "shared/app.rs"]
mod shared;

use multisession::Sessions;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .filter(|a| a != "--serve")
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/examples/multisession.toml").to_owned());
    let sessions = Sessions::from_config_file(&path).await?;
    println!("loaded {path}");
    if std::env::args().any(|a| a == "--serve") { shared::serve(sessions).await } else { shared::tour(sessions).await }
}
