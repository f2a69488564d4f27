//! Static configuration: command-line flags (names as consts, one place) and the local config
//! file (ztunnel's LOCAL_XDS YAML) turned into a validated `Snapshot`.
//!
//! Owns: reading and parsing files, and errors that name the file, the entry and the field.
//! Must not touch: sockets, shards, the published snapshot (the control thread publishes).

pub mod env;
pub mod flags;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::policy::Authorization;
use crate::state::{Service, Snapshot, StateError, Workload};

/// ztunnel's `LocalConfig`: the top level of a LOCAL_XDS YAML file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalConfig {
    #[serde(default)]
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub policies: Vec<Authorization>,
}

/// Why a config file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid ztunnel local config: {reason}")]
    Parse { path: String, reason: String },
    #[error("config file {path} has {} problem(s):\n  {}", errors.len(), errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  "))]
    Invalid {
        path: String,
        errors: Vec<StateError>,
    },
}

/// Parses YAML text (`path` is only used in messages).
pub fn parse(path: &str, text: &str) -> Result<LocalConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(LocalConfig::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// Parses and validates YAML text into a snapshot with the given version.
pub fn snapshot_from_str(path: &str, text: &str, version: u64) -> Result<Snapshot, ConfigError> {
    let cfg = parse(path, text)?;
    Snapshot::build(version, cfg.workloads, cfg.services, cfg.policies).map_err(|errors| {
        ConfigError::Invalid {
            path: path.to_string(),
            errors,
        }
    })
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path, version: u64) -> Result<Snapshot, ConfigError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: p.clone(),
        source,
    })?;
    snapshot_from_str(&p, &text, version)
}

/// Serializes a config back to YAML (the lab writes node configs with it).
pub fn to_yaml(cfg: &LocalConfig) -> String {
    serde_yaml_ng::to_string(cfg).unwrap_or_default()
}

#[cfg(test)]
mod tests;
