//! The operator's identity: one ed25519 key, kept in the data dir with mode 0600.
//!
//! The same key signs the operator's mirror records and is the node's libp2p identity, so the
//! PeerId a node connects with names the signer of what it serves. The file holds the 32-byte
//! secret seed and nothing else; it is created once (by `init` or the first `start`) and never
//! rewritten.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use open_registry_protocol::PeerId;

/// The key file's name inside the data dir.
pub const KEY_FILE: &str = "operator.key";

/// The operator's signing key.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.peer_id())
    }
}

impl Identity {
    /// Loads the key from `dir`, creating it if there is none.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Identity> {
        let path = dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    anyhow::anyhow!("{} is not a 32-byte ed25519 key", path.display())
                })?;
                crate::private_file::check_mode(&path)?;
                Ok(Identity {
                    key: SigningKey::from_bytes(&seed),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let mut seed = [0u8; 32];
                getrandom(&mut seed)?;
                write_private(&path, &seed)?;
                Ok(Identity {
                    key: SigningKey::from_bytes(&seed),
                })
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Loads the key from `dir` if there is one (never creates it).
    pub fn load(dir: &Path) -> anyhow::Result<Option<Identity>> {
        if !dir.join(KEY_FILE).exists() {
            return Ok(None);
        }
        Self::load_or_create(dir).map(Some)
    }

    /// An identity from a fixed seed (tests, test vectors).
    pub fn from_seed(seed: [u8; 32]) -> Identity {
        Identity {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The operator id.
    pub fn peer_id(&self) -> PeerId {
        PeerId::from_public_key(&self.key.verifying_key())
    }

    /// The same key as a libp2p keypair.
    pub fn to_libp2p(&self) -> libp2p::identity::Keypair {
        libp2p::identity::Keypair::ed25519_from_bytes(self.key.to_bytes())
            .expect("a 32-byte seed is a valid ed25519 secret")
    }
}

fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    // The kernel's CSPRNG; no extra dependency for 32 bytes once per operator.
    let mut f = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    std::io::Read::read_exact(&mut f, buf).context("reading /dev/urandom")?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(
                dir.path().join(KEY_FILE),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
            assert!(Identity::load_or_create(dir.path()).is_err());
        }
    }

    #[test]
    fn libp2p_peer_id_is_the_operator_id() {
        let id = Identity::from_seed([9; 32]);
        let p2p = id.to_libp2p().public().to_peer_id();
        assert_eq!(p2p.to_string(), id.peer_id().to_string());
    }
}
