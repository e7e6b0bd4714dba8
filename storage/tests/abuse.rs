//! Numbers a client says, at the edges of `u64`: whatever offset, length or body length a
//! tus or IETF request (or a chunk PUT) states, the service answers with an error of the
//! request's own kind or a consistent upload; it never overflows (tests run with overflow
//! checks, where an overflow panics) and never fails as if storage broke.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use proptest::prelude::*;
use storage::{Append, Dialect, Error, LocalBackend, NewStream, Uploads, UploadsConfig};

fn body(n: usize) -> impl futures_util::Stream<Item = storage::Result<Bytes>> + Send + Unpin {
    stream::iter(vec![Ok(Bytes::from(vec![7u8; n]))])
}

/// Small numbers, numbers near `u64::MAX`, and anything.
fn edge() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..64, (u64::MAX - 64)..=u64::MAX, any::<u64>()]
}

/// Errors a request may get for what it says; anything else is a server fault.
fn the_requests_fault(e: &Error) -> bool {
    !matches!(e, Error::Io(_) | Error::Corrupt(_))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn service(dir: &std::path::Path) -> Arc<Uploads> {
    let backend = Arc::new(LocalBackend::open(dir).unwrap());
    let config = UploadsConfig {
        max_upload_size: 1 << 20,
        ..UploadsConfig::default()
    };
    Uploads::open(backend, config).await.unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn appends_with_any_numbers_are_answered_consistently(
        ietf in any::<bool>(),
        length in prop::option::of(prop_oneof![3 => 0u64..200, 1 => edge()]),
        steps in prop::collection::vec(
            (
                any::<bool>(),
                edge(),
                prop::option::of(edge()),
                prop::option::of(edge()),
                any::<bool>(),
                0usize..40,
            ),
            1..8,
        ),
    ) {
        let dialect = if ietf { Dialect::Ietf } else { Dialect::Tus };
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let uploads = service(dir.path()).await;
            let new = NewStream {
                length,
                defer_length: length.is_none(),
                ..Default::default()
            };
            let created = uploads
                .create_stream(dialect, new, Append::default(), body(0), |_| {})
                .await;
            let id = match created {
                Ok(a) => a.status.id,
                Err(e) => {
                    prop_assert!(the_requests_fault(&e), "create: {e}");
                    return Ok(());
                }
            };
            for (plain, offset, body_len, said, last, n) in steps {
                // Plain appends (right offset, true length) move the upload on, so that
                // the numbers of the others meet stored bytes.
                let at = uploads.position(id).await.map(|p| p.offset).unwrap_or(0);
                let req = if plain {
                    Append {
                        offset: at,
                        body_len: Some(n as u64),
                        has_body: n > 0,
                        ..Default::default()
                    }
                } else {
                    Append {
                        offset: if offset % 2 == 0 { at } else { offset },
                        body_len,
                        has_body: n > 0 || body_len.is_some_and(|l| l > 0),
                        length: said,
                        last,
                        ..Default::default()
                    }
                };
                if let Err(e) = uploads.append_stream(id, dialect, req, body(n)).await {
                    prop_assert!(the_requests_fault(&e), "append: {e}");
                }
                if let Ok(p) = uploads.position(id).await {
                    prop_assert!(p.offset <= p.record.size, "{} > {}", p.offset, p.record.size);
                    prop_assert!(p.record.size <= 1 << 20);
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn chunks_with_any_numbers_are_answered_consistently(
        index in edge(),
        declared in prop::option::of(edge()),
        n in 0usize..40,
    ) {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let uploads = service(dir.path()).await;
            let req = common::api::CreateUpload {
                size: Some(100),
                chunk_size: Some(65536),
                ..Default::default()
            };
            let id = uploads.create(req, None).await.unwrap().status.id;
            match uploads.put_chunk(id, index, declared, None, body(n)).await {
                Ok(stored) => prop_assert_eq!(stored.receipt.index, 0),
                Err(e) => prop_assert!(the_requests_fault(&e), "put: {e}"),
            }
            Ok(())
        })?;
    }
}
