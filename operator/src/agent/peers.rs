//! Who a remote IP is: pod, namespace and node. The agent asks a
//! [`PeerDirectory`]; the file-backed one here serves nodes without the API
//! server, the Kubernetes-backed one fills it from a pod reflector.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The pod at the other end of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Peer {
    pub namespace: String,
    pub pod: String,
    /// The node the pod runs on.
    pub node: String,
}

pub trait PeerDirectory {
    fn lookup(&self, ip: IpAddr) -> Option<Peer>;
}

impl PeerDirectory for HashMap<IpAddr, Peer> {
    fn lookup(&self, ip: IpAddr) -> Option<Peer> {
        self.get(&ip).cloned()
    }
}

/// A JSON file `{"10.244.1.5": {"namespace": "shop", "pod": "db-0", "node":
/// "node-b"}, ...}`, re-read when it changes. A missing file is an empty
/// directory; a broken one keeps the last good contents and says why.
#[derive(Debug)]
pub struct FilePeers {
    path: PathBuf,
    loaded_at: Option<SystemTime>,
    peers: HashMap<IpAddr, Peer>,
}

impl FilePeers {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            loaded_at: None,
            peers: HashMap::new(),
        }
    }

    /// Re-reads the file if its mtime moved; returns a warning to log when the
    /// file cannot be used.
    pub fn refresh(&mut self) -> Option<String> {
        let modified = match std::fs::metadata(&self.path).and_then(|m| m.modified()) {
            Ok(modified) => modified,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.peers.clear();
                self.loaded_at = None;
                return None;
            }
            Err(e) => return Some(format!("peers file {}: {e}", self.path.display())),
        };
        if self.loaded_at == Some(modified) {
            return None;
        }
        let parsed = std::fs::read(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                serde_json::from_slice::<HashMap<IpAddr, Peer>>(&bytes).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(peers) => {
                self.peers = peers;
                self.loaded_at = Some(modified);
                None
            }
            Err(e) => Some(format!(
                "peers file {} is unusable, keeping the last good one: {e}",
                self.path.display()
            )),
        }
    }
}

impl PeerDirectory for FilePeers {
    fn lookup(&self, ip: IpAddr) -> Option<Peer> {
        self.peers.get(&ip).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_peers_reload_and_survive_a_broken_file() {
        let path = std::env::temp_dir().join(format!("weir-peers-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut peers = FilePeers::new(&path);
        assert_eq!(peers.refresh(), None);
        let ip: IpAddr = "10.244.1.5".parse().unwrap();
        assert_eq!(peers.lookup(ip), None);
        std::fs::write(
            &path,
            r#"{"10.244.1.5": {"namespace": "shop", "pod": "db-0", "node": "node-b"}}"#,
        )
        .unwrap();
        assert_eq!(peers.refresh(), None);
        assert_eq!(peers.lookup(ip).unwrap().node, "node-b");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"{broken").unwrap();
        let warning = peers.refresh().expect("a broken file is reported");
        assert!(warning.contains("keeping the last good one"), "{warning}");
        assert_eq!(peers.lookup(ip).unwrap().pod, "db-0");
        std::fs::remove_file(&path).unwrap();
    }
}
