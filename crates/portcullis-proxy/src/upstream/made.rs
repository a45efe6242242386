//! An answer the gateway makes itself rather than relays (a federated route's merged
//! list or handshake, a stream it does not offer): a head and at most one body chunk,
//! behind the same [`Answer`] interface as an upstream's.

use async_trait::async_trait;
use bytes::Bytes;
use pingora_http::ResponseHeader;

use super::{Answer, Failure, Inbound, Served};

/// A whole answer in memory.
pub struct Made {
    head: ResponseHeader,
    body: Option<Bytes>,
}

#[async_trait]
impl Answer for Made {
    fn head(&self) -> &ResponseHeader {
        &self.head
    }

    async fn chunk(&mut self) -> Result<Option<Bytes>, Failure> {
        Ok(self.body.take())
    }

    async fn release(self: Box<Self>) {}
}

/// The answer `status` with `headers` and `body` (none when empty), served by no
/// endpoint under the replica token `replica`.
pub fn answer(
    status: u16,
    headers: &[(&'static str, &[u8])],
    body: Bytes,
    replica: &std::sync::Arc<str>,
) -> Result<Inbound, Failure> {
    let bad = |_| Failure::BadRequest("the gateway could not build its answer".into());
    let mut head = ResponseHeader::build(status, Some(headers.len() + 1)).map_err(bad)?;
    for (k, v) in headers {
        head.append_header(
            *k,
            http::HeaderValue::from_bytes(v).map_err(|_| {
                Failure::BadRequest("the gateway could not build its answer".into())
            })?,
        )
        .map_err(bad)?;
    }
    if !body.is_empty() {
        head.insert_header(http::header::CONTENT_LENGTH, body.len())
            .map_err(bad)?;
    } else if status != 204 && status != 304 {
        head.insert_header(http::header::CONTENT_LENGTH, 0)
            .map_err(bad)?;
    }
    Ok(Inbound {
        answer: Box::new(Made {
            head,
            body: (!body.is_empty()).then_some(body),
        }),
        served: Served {
            endpoint: None,
            replica: replica.clone(),
            moved: None,
        },
    })
}
