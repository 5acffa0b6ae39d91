//! npm-style registry signatures: an ECDSA P-256 key that signs `<name>@<version>:<integrity>`,
//! and the keys document at `/-/npm/v1/keys`, in exactly the shapes npm's registry uses.
//!
//! - `dist.signatures`: `[{ "keyid": "SHA256:<b64>", "sig": "<b64 DER ECDSA signature>" }]`,
//!   signature over the UTF-8 message with SHA-256 (what npm's `crypto.createVerify('SHA256')`
//!   checks).
//! - keys document: `{"keys":[{"expires":null,"keyid":…,"keytype":"ecdsa-sha2-nistp256",
//!   "scheme":"ecdsa-sha2-nistp256","key":"<b64 SPKI DER>"}]}`.
//! - The keyid is `SHA256:` and the unpadded base64 of the SHA-256 of the SPKI DER, the form
//!   of an OpenSSH fingerprint, as npm's keyids are.
//!
//! Keys are derived from a seed string, so a test's signatures are reproducible.

use anyhow::{Context, Result, anyhow};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD},
};
use p256::{
    ecdsa::{Signature, SigningKey, signature::Signer},
    pkcs8::EncodePublicKey,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A registry signing key.
#[derive(Debug, Clone)]
pub struct RegistryKey {
    signing: SigningKey,
    spki_der: Vec<u8>,
    keyid: String,
    expires: Option<String>,
}

impl RegistryKey {
    /// The key derived from `seed` (SHA-256 of the seed is the secret scalar).
    pub fn from_seed(seed: &str) -> Result<RegistryKey> {
        let secret = Sha256::digest(format!("open-registry-tests npm key: {seed}").as_bytes());
        let signing = SigningKey::from_slice(secret.as_slice())
            .map_err(|e| anyhow!("deriving a P-256 key: {e}"))?;
        let spki_der = signing
            .verifying_key()
            .to_public_key_der()
            .map_err(|e| anyhow!("encoding the public key: {e}"))
            .context("SPKI DER")?
            .as_bytes()
            .to_vec();
        let keyid = format!(
            "SHA256:{}",
            STANDARD_NO_PAD.encode(Sha256::digest(&spki_der))
        );
        Ok(RegistryKey {
            signing,
            spki_der,
            keyid,
            expires: None,
        })
    }

    /// The same key marked as expiring at `expires` (an ISO 8601 time, as npm writes it).
    pub fn expiring(mut self, expires: &str) -> RegistryKey {
        self.expires = Some(expires.to_owned());
        self
    }

    /// `SHA256:<base64>`.
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// The public key as base64 of its SPKI DER (the `key` field).
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(&self.spki_der)
    }

    /// The public key in PEM, as pacote wants it in `pemkey`.
    pub fn pem(&self) -> String {
        pem_of(&self.public_key_base64())
    }

    /// The message npm signs for a version.
    pub fn message(name: &str, version: &str, integrity: &str) -> String {
        format!("{name}@{version}:{integrity}")
    }

    /// The base64 DER signature over `<name>@<version>:<integrity>`.
    pub fn sign(&self, name: &str, version: &str, integrity: &str) -> String {
        let sig: Signature = self
            .signing
            .sign(Self::message(name, version, integrity).as_bytes());
        STANDARD.encode(sig.to_der().as_bytes())
    }

    /// One `dist.signatures` entry: `{keyid, sig}`.
    pub fn signature_entry(&self, name: &str, version: &str, integrity: &str) -> Value {
        json!({ "keyid": self.keyid, "sig": self.sign(name, version, integrity) })
    }

    /// This key's entry in the keys document.
    pub fn key_entry(&self) -> Value {
        json!({
            "expires": self.expires,
            "keyid": self.keyid,
            "keytype": "ecdsa-sha2-nistp256",
            "scheme": "ecdsa-sha2-nistp256",
            "key": self.public_key_base64(),
        })
    }
}

/// The `/-/npm/v1/keys` document for `keys`.
pub fn keys_document(keys: &[RegistryKey]) -> Value {
    json!({ "keys": keys.iter().map(RegistryKey::key_entry).collect::<Vec<_>>() })
}

/// The entries of a keys document, each with a `pemkey` added: the form npm passes to pacote
/// as `//host/:_keys` (npm's `audit signatures` does the same conversion).
pub fn pacote_keys(keys_document: &Value) -> Result<Value> {
    let keys = keys_document["keys"]
        .as_array()
        .ok_or_else(|| anyhow!("keys document has no `keys` array: {keys_document}"))?;
    let with_pem: Result<Vec<Value>> = keys
        .iter()
        .map(|k| {
            let b64 = k["key"]
                .as_str()
                .ok_or_else(|| anyhow!("key entry without `key`: {k}"))?;
            let mut k = k.clone();
            k["pemkey"] = json!(pem_of(b64));
            Ok(k)
        })
        .collect();
    Ok(Value::Array(with_pem?))
}

fn pem_of(b64: &str) -> String {
    format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----")
}
