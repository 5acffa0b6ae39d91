//! The blob protocol's wire format: one blob (or its tail) per stream, any size.
//!
//! Protocol id [`BLOB_PROTOCOL`], one request per stream, all integers big-endian:
//!
//! ```text
//! request  = cid_len:u8 (1..=64)  cid:cid_len bytes (binary CIDv1 raw/BLAKE3-256)  offset:u64
//! response = status:u8  [ remaining:u64  bytes:remaining bytes ]   -- the bracket only if OK
//! ```
//!
//! `status` is one of [`Status`]. After an OK header the server sends exactly `remaining`
//! (= blob length − offset) bytes and closes; the bytes carry no framing, so a blob of any size
//! moves with bounded memory on both sides (the server reads and writes [`CHUNK`] bytes at a
//! time, the reader yields at most [`CHUNK`] per item). A server at its concurrency limit
//! resets the stream without answering. Nothing in a response is trusted: the reader checks
//! `remaining` against its cap before reading a byte, never reads past it, and the caller
//! verifies the bytes against the CID.

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::StreamProtocol;
use open_registry_protocol::BlobId;

/// The blob protocol's id.
pub const BLOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/open-registry/blob/1.0.0");

/// The longest CID a request may carry (ours are 36 bytes).
pub const MAX_CID_LEN: usize = 64;

/// Bytes moved per read/write on either side.
pub const CHUNK: usize = 64 * 1024;

/// A response's status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// The length and the bytes follow.
    Ok = 0,
    /// The server does not have the blob.
    NotFound = 1,
    /// The CID is malformed or not raw/BLAKE3, or the offset is past the blob's end.
    BadRequest = 2,
    /// The server has the blob but failed to read it.
    Unavailable = 3,
}

impl Status {
    /// The status for a byte, if it is one.
    pub fn from_byte(b: u8) -> Option<Status> {
        match b {
            0 => Some(Status::Ok),
            1 => Some(Status::NotFound),
            2 => Some(Status::BadRequest),
            3 => Some(Status::Unavailable),
            _ => None,
        }
    }
}

/// A decoded request. The CID is kept raw so a malformed one can still be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) cid: Vec<u8>,
    pub(crate) offset: u64,
}

impl Request {
    /// The requested blob, if the CID is one of ours.
    pub(crate) fn blob_id(&self) -> Option<BlobId> {
        BlobId::from_bytes(&self.cid).ok()
    }
}

/// Writes a request.
pub(crate) async fn write_request<W>(w: &mut W, id: &BlobId, offset: u64) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let cid = id.to_bytes();
    // Our CIDs are 36 bytes; the length always fits the u8 prefix.
    let len = u8::try_from(cid.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let mut buf = Vec::with_capacity(1 + cid.len() + 8);
    buf.push(len);
    buf.extend_from_slice(&cid);
    buf.extend_from_slice(&offset.to_be_bytes());
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads a request; `InvalidData` if the CID length is out of range.
pub(crate) async fn read_request<R>(r: &mut R) -> std::io::Result<Request>
where
    R: AsyncRead + Unpin,
{
    let mut len = [0u8; 1];
    r.read_exact(&mut len).await?;
    let len = usize::from(len[0]);
    if len == 0 || len > MAX_CID_LEN {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("CID length {len} outside 1..={MAX_CID_LEN}"),
        ));
    }
    let mut cid = vec![0u8; len];
    r.read_exact(&mut cid).await?;
    let mut offset = [0u8; 8];
    r.read_exact(&mut offset).await?;
    Ok(Request {
        cid,
        offset: u64::from_be_bytes(offset),
    })
}

/// Writes a response header: the status, and for [`Status::Ok`] the remaining length.
pub(crate) async fn write_header<W>(
    w: &mut W,
    status: Status,
    remaining: u64,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut buf = [0u8; 9];
    buf[0] = status as u8;
    let n = if status == Status::Ok {
        buf[1..].copy_from_slice(&remaining.to_be_bytes());
        9
    } else {
        1
    };
    w.write_all(&buf[..n]).await?;
    w.flush().await
}

/// Reads a response header: the raw status byte, and the remaining length if it is OK.
pub(crate) async fn read_header<R>(r: &mut R) -> std::io::Result<(u8, Option<u64>)>
where
    R: AsyncRead + Unpin,
{
    let mut status = [0u8; 1];
    r.read_exact(&mut status).await?;
    if status[0] != Status::Ok as u8 {
        return Ok((status[0], None));
    }
    let mut len = [0u8; 8];
    r.read_exact(&mut len).await?;
    Ok((status[0], Some(u64::from_be_bytes(len))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[tokio::test]
    async fn request_round_trips_with_exact_layout() {
        let id = BlobId::of(b"hello");
        let mut buf = Cursor::new(Vec::new());
        write_request(&mut buf, &id, 7).await.unwrap();
        let bytes = buf.into_inner();
        assert_eq!(bytes.len(), 1 + 36 + 8);
        assert_eq!(bytes[0], 36);
        assert_eq!(&bytes[1..37], id.to_bytes().as_slice());
        assert_eq!(&bytes[37..], &7u64.to_be_bytes());
        let req = read_request(&mut Cursor::new(bytes)).await.unwrap();
        assert_eq!(req.blob_id(), Some(id));
        assert_eq!(req.offset, 7);
    }

    #[tokio::test]
    async fn bad_cid_lengths_are_rejected() {
        for first in [0u8, 65, 255] {
            let e = read_request(&mut Cursor::new(vec![first; 80]))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        }
        // A CID of the right length but the wrong kind decodes, and is refused later.
        let req = read_request(&mut Cursor::new([&[3u8, 1, 2, 3][..], &[0; 8]].concat()))
            .await
            .unwrap();
        assert_eq!(req.blob_id(), None);
    }

    #[tokio::test]
    async fn headers_round_trip() {
        let mut buf = Cursor::new(Vec::new());
        write_header(&mut buf, Status::Ok, 1 << 40).await.unwrap();
        write_header(&mut buf, Status::NotFound, 99).await.unwrap();
        let bytes = buf.into_inner();
        assert_eq!(bytes.len(), 9 + 1);
        let mut r = Cursor::new(bytes);
        assert_eq!(read_header(&mut r).await.unwrap(), (0, Some(1 << 40)));
        assert_eq!(read_header(&mut r).await.unwrap(), (1, None));
        assert_eq!(Status::from_byte(3), Some(Status::Unavailable));
        assert_eq!(Status::from_byte(4), None);
    }
}
