//! The result document of `create`, `merge`, `check` and `create -t oci` (`-J/--output-json`),
//! in the shape nydus-image writes and nydusify, nydus-snapshotter and acceleration-service read:
//! one builder, so the four cannot drift apart.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::codec::Compressor;

/// What a `-J` document reports.
#[derive(Debug, Clone)]
pub struct Report {
    /// Bootstrap path written or read (empty when inlined into the blob).
    pub bootstrap: String,
    /// Blob ids in blob-table order.
    pub blobs: Vec<String>,
    /// RAFS version.
    pub fs_version: u32,
    /// Chunk compression.
    pub compressor: Compressor,
    /// Seconds per build phase (`trace.consumed_time`; empty where nothing was timed).
    pub timings: BTreeMap<String, f64>,
    /// Counters (`trace.registered_events`; empty where nothing was counted).
    pub events: BTreeMap<&'static str, u64>,
    /// Fields only some commands add (`create -t oci`: `manifest`, `image_layout`).
    pub extra: Map<String, Value>,
}

impl Report {
    /// A report with no timings, events or extra fields.
    pub fn new(
        bootstrap: String,
        blobs: Vec<String>,
        fs_version: u32,
        compressor: Compressor,
    ) -> Report {
        Report {
            bootstrap,
            blobs,
            fs_version,
            compressor,
            timings: BTreeMap::new(),
            events: BTreeMap::new(),
            extra: Map::new(),
        }
    }

    /// The document. Keys come out sorted (serde_json's map), as nydus-image's do.
    pub fn to_value(&self) -> Value {
        let mut doc = json!({
            "version": concat!(env!("CARGO_PKG_NAME"), "-", env!("CARGO_PKG_VERSION")),
            "bootstrap": self.bootstrap,
            "blobs": self.blobs,
            "external_bootstrap": "",
            "external_blobs": [],
            "trace": {
                "consumed_time": self.timings,
                "registered_events": self.events,
            },
            "fs_version": self.fs_version.to_string(),
            "compressor": self.compressor.name(),
        });
        if let Value::Object(map) = &mut doc {
            map.extend(self.extra.clone());
        }
        doc
    }

    /// Pretty-printed, as `create` and `merge` write it.
    pub fn pretty(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).unwrap_or_default()
    }

    /// On one line, as `check` writes it.
    pub fn compact(&self) -> String {
        self.to_value().to_string()
    }
}
