//! The endpoints this node enforces for, persisted so a restarted agent re-attaches them.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use palisade_api::agent::EndpointSpec;
use serde::{Deserialize, Serialize};

/// One registered endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredEndpoint {
    /// What the CNI plugin registered.
    pub spec: EndpointSpec,
    /// Node-local endpoint id (stable across restarts; never reused while registered).
    pub endpoint_id: u32,
    /// Security identity.
    pub identity: u32,
}

impl RegisteredEndpoint {
    /// `<namespace>/<pod>`, the engine's name for it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.spec.pod_namespace, self.spec.pod_name)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    next_id: u32,
    /// Boxed: a B-tree node holds eleven values however few it has, and an endpoint is a few
    /// hundred bytes (the file's format is the same either way).
    endpoints: BTreeMap<String, Box<RegisteredEndpoint>>,
}

/// The registry.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    state: State,
}

fn key(container: &str, ifname: &str) -> String {
    format!("{container}/{ifname}")
}

impl Registry {
    /// Opens (or starts) the registry in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join("endpoints.json");
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                next_id: 1,
                ..State::default()
            },
            Err(e) => return Err(e),
        };
        Ok(Self { path, state })
    }

    /// Registers (or re-registers) an endpoint, keeping its id when it was known.
    pub fn insert(
        &mut self,
        spec: EndpointSpec,
        identity: u32,
    ) -> std::io::Result<RegisteredEndpoint> {
        let k = key(&spec.container_id, &spec.ifname);
        let endpoint_id = match self.state.endpoints.get(&k) {
            Some(e) => e.endpoint_id,
            None => {
                let id = self.state.next_id.max(1);
                self.state.next_id = id + 1;
                id
            }
        };
        let e = RegisteredEndpoint {
            spec,
            endpoint_id,
            identity,
        };
        self.state.endpoints.insert(k, Box::new(e.clone()));
        self.save()?;
        Ok(e)
    }

    /// Forgets an endpoint; `None` when it was unknown.
    pub fn remove(
        &mut self,
        container: &str,
        ifname: &str,
    ) -> std::io::Result<Option<RegisteredEndpoint>> {
        let e = self.state.endpoints.remove(&key(container, ifname));
        if e.is_some() {
            self.save()?;
        }
        Ok(e.map(|e| *e))
    }

    /// The endpoint of `(container, ifname)`.
    pub fn get(&self, container: &str, ifname: &str) -> Option<&RegisteredEndpoint> {
        self.state
            .endpoints
            .get(&key(container, ifname))
            .map(|e| &**e)
    }

    /// Every endpoint.
    pub fn iter(&self) -> impl Iterator<Item = &RegisteredEndpoint> {
        self.state.endpoints.values().map(|e| &**e)
    }

    /// Writes the file whole, then renames it over the old one. Streamed through a buffered
    /// writer rather than built in memory first: the document grows with every endpoint and is
    /// written on every registration, and a buffer of its size each time leaves the allocator's
    /// heap fragmented (resident memory that no endpoint uses).
    fn save(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut out = BufWriter::new(File::create(&tmp)?);
        serde_json::to_writer_pretty(&mut out, &self.state).map_err(std::io::Error::other)?;
        out.flush()?;
        drop(out);
        fs::rename(&tmp, &self.path)
    }
}
