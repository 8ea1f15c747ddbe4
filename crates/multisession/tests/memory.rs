//! The store conformance suite on the in-memory store.

use std::sync::Arc;

use multisession::StoreKey;
use multisession::store::{MemoryStore, Store};
use multisession::testing::Harness;

struct Memory(Arc<MemoryStore>);

#[async_trait::async_trait]
impl Harness for Memory {
    fn store(&self) -> Arc<dyn Store> {
        self.0.clone()
    }

    async fn corrupt(&self, key: &StoreKey) {
        self.0.write_raw(key, br#"{"v":1,"data":"not an object""#);
    }

    async fn work(&self) -> Option<u64> {
        Some(self.0.entries_examined())
    }
}

multisession::store_conformance_tests!(async { Memory(Arc::new(MemoryStore::new())) });
