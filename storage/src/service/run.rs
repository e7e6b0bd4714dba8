//! A run of whole chunks in one request body: a client that has the file at hand sends it
//! from any chunk on in one request, and each chunk is stored and acknowledged as its last
//! byte arrives, exactly as if it had come in a request of its own, so a run cut anywhere
//! keeps every whole chunk before the cut.
//!
//! Why: one request is the cheapest way for a browser to send a file (it hands the file
//! itself to its network stack, where every slice of it is piped through another process
//! first). The client cannot say each chunk's digest before the bytes leave, so the chunks
//! of a run are stored with the digests the server computed, and the client's own follow
//! at completion ([`Uploads::complete_sized`]), before anything is published.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use common::api::UploadStatus;
use common::geometry::Geometry;
use common::UploadId;
use futures_util::Stream;

use super::Uploads;
use crate::error::{Error, Result};

impl Uploads {
    /// Stores chunks `from`, `from + 1`, ... from `body`, whose length (`declared_len`,
    /// required) must end at a chunk's end or at the file's end. Answers the upload's
    /// status once the last chunk is durable; on an error, the chunks stored before it
    /// stay stored.
    pub async fn put_chunk_run<S>(
        &self,
        id: UploadId,
        from: u64,
        declared_len: Option<u64>,
        body: S,
    ) -> Result<UploadStatus>
    where
        S: Stream<Item = Result<Bytes>> + Send + Unpin,
    {
        let status = self.status(id).await?;
        let lens = run_lengths(
            Geometry::new(status.size, status.chunk_size),
            status.length_deferred,
            from,
            declared_len,
        )?;
        let mut run = Run {
            body,
            rest: Bytes::new(),
        };
        for (index, len) in lens {
            self.put_chunk(id, index, Some(len), None, run.take(len))
                .await?;
        }
        self.status(id).await
    }
}

/// The chunks a run from `from` of `declared_len` bytes covers, with their lengths (none
/// while the upload's size is `deferred`).
fn run_lengths(
    g: Geometry,
    deferred: bool,
    from: u64,
    declared_len: Option<u64>,
) -> Result<Vec<(u64, u64)>> {
    if deferred {
        return Err(Error::Invalid(
            "a run of chunks needs the upload's size: until it is declared, send chunks one \
             by one"
                .into(),
        ));
    }
    let len = declared_len.ok_or(Error::LengthRequired(
        "a run of chunks needs Content-Length",
    ))?;
    let count = g.count();
    if from >= count {
        return Err(Error::Invalid(format!(
            "chunk {from} is out of range: the upload has {count} chunks"
        )));
    }
    let start = g.offset(from);
    let end = start
        .checked_add(len)
        .filter(|&e| len > 0 && e <= g.size && (e == g.size || e % g.chunk_size == 0));
    let end = end.ok_or_else(|| {
        Error::Invalid(format!(
            "the body is {len} bytes: a run from chunk {from} must end at a chunk's end \
             (every {} bytes) or at the file's end ({} bytes)",
            g.chunk_size, g.size
        ))
    })?;
    Ok((from..end.div_ceil(g.chunk_size))
        .filter_map(|i| Some((i, g.len(i)?)))
        .collect())
}

/// A body cut into consecutive pieces of given lengths.
struct Run<S> {
    body: S,
    /// Bytes read past the end of the previous piece.
    rest: Bytes,
}

impl<S> Run<S> {
    /// The next `len` bytes, as a stream that ends after them (or where the body ends).
    fn take(&mut self, len: u64) -> Piece<'_, S> {
        Piece {
            run: self,
            left: len,
        }
    }
}

struct Piece<'a, S> {
    run: &'a mut Run<S>,
    left: u64,
}

impl<S> Stream for Piece<'_, S>
where
    S: Stream<Item = Result<Bytes>> + Unpin,
{
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let mut bytes = if this.run.rest.is_empty() {
            match Pin::new(&mut this.run.body).poll_next(cx) {
                Poll::Ready(Some(Ok(b))) => b,
                other => return other,
            }
        } else {
            std::mem::take(&mut this.run.rest)
        };
        if bytes.len() as u64 > this.left {
            this.run.rest = bytes.split_off(this.left as usize);
        }
        this.left -= bytes.len() as u64;
        Poll::Ready(Some(Ok(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn a_run_ends_at_a_chunk_end_or_the_file_end() {
        let g = Geometry::new(25, 10);
        let lens = |from, len| run_lengths(g, false, from, Some(len));
        assert_eq!(lens(0, 25).unwrap(), [(0, 10), (1, 10), (2, 5)]);
        assert_eq!(lens(1, 10).unwrap(), [(1, 10)]);
        assert_eq!(lens(2, 5).unwrap(), [(2, 5)]);
        for (from, len) in [(0, 9), (0, 26), (1, 16), (0, 0), (3, 5), (2, 10)] {
            assert!(lens(from, len).is_err(), "{from} {len}");
        }
        assert!(matches!(
            run_lengths(g, false, 0, None),
            Err(Error::LengthRequired(_))
        ));
        assert!(run_lengths(g, true, 0, Some(10)).is_err());
    }

    #[tokio::test]
    async fn pieces_split_the_body_where_chunks_end() {
        let parts: Vec<Result<Bytes>> = ["abcdefg", "hij", "klmnopqrstu"]
            .into_iter()
            .map(|p| Ok(Bytes::from(p)))
            .collect();
        let mut run = Run {
            body: futures_util::stream::iter(parts),
            rest: Bytes::new(),
        };
        let mut got = Vec::new();
        for len in [5, 5, 5, 6] {
            let piece: Vec<Bytes> = run.take(len).map(|b| b.unwrap()).collect().await;
            got.push(piece.concat());
        }
        assert_eq!(got, [&b"abcde"[..], b"fghij", b"klmno", b"pqrstu"]);
        let short: Vec<Bytes> = run.take(3).map(|b| b.unwrap()).collect().await;
        assert!(short.is_empty(), "the body has ended");
    }
}
