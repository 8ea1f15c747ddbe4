//! Framework adapters: thin shells over the framework-free [`Sessions`](crate::Sessions)
//! and [`Session::commit`](crate::Session::commit).

/// The constructor and origin options every adapter has, for an adapter
/// type holding `sessions: Sessions` and `origins: OriginCheck`: one
/// definition, so the frameworks cannot drift apart.
#[cfg(any(feature = "axum", feature = "actix"))]
macro_rules! adapter_options {
    ($adapter:ident) => {
        impl $adapter {
            #[doc = concat!("A `", stringify!($adapter), "` serving `sessions`.")]
            ///
            /// ```
            /// let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
            #[doc = concat!("let adapter = multisession::", stringify!($adapter), "::new(sessions.clone());   // keep `sessions` for admin code")]
            /// # let _ = adapter;
            /// # Ok::<(), multisession::Error>(())
            /// ```
            pub fn new(sessions: crate::Sessions) -> Self {
                Self { sessions, origins: crate::csrf::OriginCheck::default() }
            }

            /// Lets cross-origin requests from `origin` (`scheme://host[:port]`, as
            /// browsers send it in `Origin`) through: a login provider that posts
            /// its answer back, for example.
            ///
            /// ```
            /// let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
            #[doc = concat!("let adapter = multisession::", stringify!($adapter), "::new(sessions).trust_origin(\"https://appleid.apple.com\");")]
            /// # let _ = adapter;
            /// # Ok::<(), multisession::Error>(())
            /// ```
            pub fn trust_origin(mut self, origin: impl Into<String>) -> Self {
                self.origins.trust(origin.into());
                self
            }

            /// Lets cross-origin browser requests through, for an application whose
            /// pages on other origins post to it with credentials on purpose. Its
            /// forms then rely on CSRF tokens alone.
            ///
            /// ```
            /// let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
            #[doc = concat!("let adapter = multisession::", stringify!($adapter), "::new(sessions).allow_cross_origin();")]
            /// # let _ = adapter;
            /// # Ok::<(), multisession::Error>(())
            /// ```
            pub fn allow_cross_origin(mut self) -> Self {
                self.origins.turn_off();
                self
            }
        }
    };
}
#[cfg(any(feature = "axum", feature = "actix"))]
use adapter_options;

#[cfg(feature = "actix")]
pub mod actix;
#[cfg(feature = "axum")]
pub mod axum;
