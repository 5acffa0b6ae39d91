//! The record-ids protocol: which signed records a peer holds for a package.
//!
//! Protocol id [`RECORD_IDS_PROTOCOL`], one request per stream:
//!
//! ```text
//! request  = name_len:u8 (1..=214)  name:name_len bytes (the npm package name, UTF-8)
//! response = count:u8 (0..=16)  count × ( cid_len:u8 (1..=64)  cid:cid_len bytes )
//! ```
//!
//! Each CID is the blob id of one stored signed record for the name (the bytes a DHT pointer
//! names), fetched afterwards over the [blob protocol](super::blob). A node asks this only of
//! peers on its own LAN (found by mDNS), beside the DHT lookup of the trusted operators'
//! pointers: when the DHT cannot answer (the community node gone, the laptops Kademlia
//! clients that answer no queries), a LAN neighbour that installed the package still can.
//! Nothing in an answer is believed: the asker fetches each record, checks its id, its
//! signature, its signer against the trust policy and its sequence against rollback, exactly
//! as for a record found through the DHT.
//!
//! Bounds: at most [`MAX_RECORD_IDS`] ids per answer (a reader refuses more before reading
//! them), [`MAX_SERVING`] requests served at once (the rest are reset), and every read and
//! write within the stall timeout.

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, StreamExt as _};
use libp2p::StreamProtocol;
use libp2p_stream::{Control, IncomingStreams};
use open_registry_protocol::BlobId;
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::blob::MAX_CID_LEN;
use super::{BlobSource, NetError};

/// The record-ids protocol's id.
pub const RECORD_IDS_PROTOCOL: StreamProtocol =
    StreamProtocol::new("/open-registry/record-ids/1.0.0");

/// The most record ids one answer carries (a node keeps one record per signer and name).
pub const MAX_RECORD_IDS: usize = 16;

/// The longest package name npm allows, and so the longest request.
pub const MAX_NAME_LEN: usize = 214;

/// Requests answered at once; more are reset on arrival.
pub const MAX_SERVING: usize = 16;

/// Writes a request for `name`'s record ids.
pub(crate) async fn write_request<W>(w: &mut W, name: &str) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let len = u8::try_from(name.len())
        .ok()
        .filter(|l| (1..=MAX_NAME_LEN).contains(&usize::from(*l)))
        .ok_or(std::io::ErrorKind::InvalidInput)?;
    let mut buf = Vec::with_capacity(1 + name.len());
    buf.push(len);
    buf.extend_from_slice(name.as_bytes());
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads a request; `InvalidData` if the length is out of range or the name is not UTF-8.
pub(crate) async fn read_request<R>(r: &mut R) -> std::io::Result<String>
where
    R: AsyncRead + Unpin,
{
    let mut len = [0u8; 1];
    r.read_exact(&mut len).await?;
    let len = usize::from(len[0]);
    if len == 0 || len > MAX_NAME_LEN {
        return Err(invalid(format!(
            "name length {len} outside 1..={MAX_NAME_LEN}"
        )));
    }
    let mut name = vec![0u8; len];
    r.read_exact(&mut name).await?;
    String::from_utf8(name).map_err(|_| invalid("name is not UTF-8".into()))
}

/// Writes an answer: at most [`MAX_RECORD_IDS`] of `ids` (the first ones).
pub(crate) async fn write_answer<W>(w: &mut W, ids: &[BlobId]) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let ids = &ids[..ids.len().min(MAX_RECORD_IDS)];
    let mut buf = vec![u8::try_from(ids.len()).expect("at most 16")];
    for id in ids {
        let cid = id.to_bytes();
        buf.push(u8::try_from(cid.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?);
        buf.extend_from_slice(&cid);
    }
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads an answer. Ids that are not ours (wrong codec or hash) are skipped; a count or a CID
/// length out of range is `InvalidData`.
pub(crate) async fn read_answer<R>(r: &mut R) -> std::io::Result<Vec<BlobId>>
where
    R: AsyncRead + Unpin,
{
    let mut count = [0u8; 1];
    r.read_exact(&mut count).await?;
    let count = usize::from(count[0]);
    if count > MAX_RECORD_IDS {
        return Err(invalid(format!(
            "{count} record ids, more than {MAX_RECORD_IDS}"
        )));
    }
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let mut len = [0u8; 1];
        r.read_exact(&mut len).await?;
        let len = usize::from(len[0]);
        if len == 0 || len > MAX_CID_LEN {
            return Err(invalid(format!(
                "CID length {len} outside 1..={MAX_CID_LEN}"
            )));
        }
        let mut cid = vec![0u8; len];
        r.read_exact(&mut cid).await?;
        if let Ok(id) = BlobId::from_bytes(&cid) {
            ids.push(id);
        }
    }
    Ok(ids)
}

fn invalid(reason: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, reason)
}

/// Registers the protocol and starts answering it from `source`.
pub(crate) fn start(
    control: &mut Control,
    source: Arc<dyn BlobSource>,
    stall: Duration,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<(), NetError> {
    let incoming = control
        .accept(RECORD_IDS_PROTOCOL)
        .map_err(|e| NetError::Setup(format!("{RECORD_IDS_PROTOCOL}: {e}")))?;
    tracker.spawn(serve(incoming, source, stall, tracker.clone(), cancel));
    Ok(())
}

async fn serve(
    mut incoming: IncomingStreams,
    source: Arc<dyn BlobSource>,
    stall: Duration,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_SERVING));
    loop {
        let (peer, mut stream) = tokio::select! {
            _ = cancel.cancelled() => return,
            next = incoming.next() => match next {
                Some(s) => s,
                None => return,
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "record-ids server at capacity, stream reset");
            continue;
        };
        let (source, cancel) = (source.clone(), cancel.clone());
        tracker.spawn(async move {
            let _permit = permit;
            let answer = async {
                let name = timeout(stall, read_request(&mut stream)).await??;
                let ids = timeout(stall, source.record_ids(&name)).await??;
                timeout(stall, write_answer(&mut stream, &ids)).await??;
                timeout(stall, stream.close()).await??;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(ids.len())
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = answer => match r {
                    Ok(n) => tracing::debug!(%peer, ids = n, "record ids answered"),
                    // Dropping the stream resets it: a bad request gets no answer.
                    Err(e) => tracing::debug!(%peer, error = %e, "record-ids request failed"),
                },
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[tokio::test]
    async fn a_request_is_the_length_then_the_name() {
        let mut buf = Cursor::new(Vec::new());
        write_request(&mut buf, "@scope/pkg").await.unwrap();
        let bytes = buf.into_inner();
        assert_eq!(bytes[0], 10);
        assert_eq!(&bytes[1..], b"@scope/pkg");
        let name = read_request(&mut Cursor::new(bytes)).await.unwrap();
        assert_eq!(name, "@scope/pkg");
    }

    #[tokio::test]
    async fn bad_requests_are_refused() {
        let mut w = Cursor::new(Vec::new());
        assert!(write_request(&mut w, "").await.is_err());
        assert!(write_request(&mut w, &"a".repeat(215)).await.is_err());
        for bytes in [vec![0u8], vec![215; 220], vec![2, 0xff, 0xfe]] {
            let e = read_request(&mut Cursor::new(bytes)).await.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        }
    }

    #[tokio::test]
    async fn an_answer_carries_at_most_sixteen_ids() {
        let ids: Vec<BlobId> = (0..20u8).map(|i| BlobId::of(&[i])).collect();
        let mut buf = Cursor::new(Vec::new());
        write_answer(&mut buf, &ids).await.unwrap();
        let bytes = buf.into_inner();
        assert_eq!(bytes[0], 16);
        assert_eq!(bytes.len(), 1 + 16 * 37);
        assert_eq!(bytes[1], 36);
        let read = read_answer(&mut Cursor::new(bytes)).await.unwrap();
        assert_eq!(read, ids[..16]);
    }

    #[tokio::test]
    async fn a_reader_refuses_too_many_ids_and_skips_foreign_cids() {
        let e = read_answer(&mut Cursor::new(vec![17u8; 100]))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        let e = read_answer(&mut Cursor::new(vec![1u8, 0]))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        let ours = BlobId::of(b"x").to_bytes();
        let mut bytes = vec![2u8, 3, 1, 2, 3, u8::try_from(ours.len()).unwrap()];
        bytes.extend_from_slice(&ours);
        let read = read_answer(&mut Cursor::new(bytes)).await.unwrap();
        assert_eq!(read, vec![BlobId::of(b"x")]);
    }
}
