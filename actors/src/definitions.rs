//! Definitions parsed once and shared by every instance of a version.

use crate::Error;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use troupe_engine::definition::{self, Definition};
use troupe_protocol::ErrorCode;
use troupe_storage::Store;

/// Definitions parsed once and shared by every instance of a version, and
/// the latest version of each name (so starts need no storage scan).
#[derive(Default)]
pub struct DefinitionCache {
    parsed: RwLock<HashMap<(String, u32), Arc<Definition>>>,
    latest: RwLock<HashMap<String, u32>>,
}

impl DefinitionCache {
    /// The latest deployed version of `name`.
    pub fn latest(&self, store: &Store, name: &str) -> Result<Option<u32>, Error> {
        if let Some(v) = self.latest.read().expect("cache lock").get(name) {
            return Ok(Some(*v));
        }
        let latest = store.definition_versions(name)?.last().map(|d| d.version);
        if let Some(v) = latest {
            self.deployed(name, v);
        }
        Ok(latest)
    }

    /// Records that `name` v`version` was deployed.
    pub fn deployed(&self, name: &str, version: u32) {
        let mut latest = self.latest.write().expect("cache lock");
        let entry = latest.entry(name.to_owned()).or_insert(version);
        *entry = (*entry).max(version);
    }

    /// The parsed definition `name` v`version`, loading it from the store.
    pub fn get(
        &self,
        store: &Store,
        name: &str,
        version: u32,
    ) -> Result<Option<Arc<Definition>>, Error> {
        let key = (name.to_owned(), version);
        if let Some(def) = self.parsed.read().expect("cache lock").get(&key) {
            return Ok(Some(def.clone()));
        }
        let Some(record) = store.definition(name, version)? else {
            return Ok(None);
        };
        let def = definition::load(&record.source).map_err(|_| {
            Error::new(
                ErrorCode::Internal,
                format!("stored definition {name} v{version} no longer parses"),
            )
        })?;
        let def = Arc::new(def);
        self.parsed
            .write()
            .expect("cache lock")
            .insert(key, def.clone());
        Ok(Some(def))
    }
}
