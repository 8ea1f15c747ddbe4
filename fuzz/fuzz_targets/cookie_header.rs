//! A `Cookie` header, as bytes, read by a session of two parts: signed ids
//! for a server-side part and an encrypted cookie part. Whatever the bytes,
//! reading the session answers "no session" or a session, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use multisession::store::{CookieStore, MemoryStore};
use multisession::{Device, Fields, Key, KeyRing, SessionConfig, SessionSpec, Sessions};

fn setup() -> &'static (tokio::runtime::Runtime, Sessions) {
    static SETUP: OnceLock<(tokio::runtime::Runtime, Sessions)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        // Fixed keys, so that inputs the fuzzer keeps stay meaningful.
        let key = |byte: u8| Key::from(&[byte; 64]);
        let ring = |byte: u8| KeyRing::new(vec![key(byte)]).expect("a key ring");
        let sessions = Sessions::from_specs([
            SessionSpec::new(MemoryStore::new(), SessionConfig::default().with_signed_id(ring(1)))
                .with_fields(Fields::include(["user_id"])),
            SessionSpec::new(CookieStore::new(ring(2)), SessionConfig::default().with_cookie_name("data"))
                .with_fields(Fields::Auto),
        ])
        .expect("a valid configuration");
        (runtime, sessions)
    })
}

fuzz_target!(|header: &[u8]| {
    let (runtime, sessions) = setup();
    let session = sessions.session([header], Device::default());
    runtime.block_on(async {
        let _ = session.user().await;
        let _ = session.get::<serde_json::Value>("theme").await;
        let _ = session.commit().await;
    });
});
