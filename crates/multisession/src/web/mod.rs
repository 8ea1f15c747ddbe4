//! Framework adapters: thin shells over the framework-free [`Sessions`](crate::Sessions)
//! and [`Session::commit`](crate::Session::commit).

#[cfg(feature = "axum")]
pub mod axum;
