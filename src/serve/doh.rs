//! DNS over HTTPS for clients (RFC 8484): a TCP listener whose connections do a TLS handshake
//! (ALPN `h2`, `http/1.1`) and then speak HTTP/2 or HTTP/1.1 (hyper, as the metrics endpoint).
//! Each request is decoded by `doh_request.rs` into a DNS message or an HTTP status; a message
//! is answered like a query on any other transport, after the same admission (allow list per
//! connection, rate limit per query).
//!
//! Connections take the same slots as TCP and DNS over TLS ones (`tcp::accept`): a request
//! being answered is a query outstanding, a request answered a completed message, so a
//! connection with nothing to do is closed after `tcp_idle_timeout` and is the first to make
//! room when the slots are full. Bounded everywhere: request head size and time (HTTP/1.1),
//! header list size and concurrent streams (`tcp_max_queries`, HTTP/2), body size and time.
//!
//! Answers carry `Cache-Control: max-age` of their smallest TTL (RFC 8484 §5.1); answers that
//! must not be reused (SERVFAIL, REFUSED, FORMERR, nothing to take a TTL from) and HTTP errors
//! carry `no-store`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::serve::admission::Admission;
use crate::serve::answer_records::AnswerRecords;
use crate::serve::doh_request::{self, DNS_MESSAGE, Refusal, RequestHead};
use crate::serve::dot;
use crate::serve::tcp::{self, Serve, Slot};
use crate::wire::dns::{self, Rcode, Rejection};

/// Longest request head: the request line with a `dns=` query of any real size, and headers.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Time a client gets to send a request head (HTTP/1.1) and, per request, its body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a request body read: a DNS message is at most 65535; the rest of a longer
/// body is read and thrown away so that its client gets the 413 (see [`read_body`]).
const DISCARD_LIMIT: usize = 4 * doh_request::MAX_MESSAGE;
/// Time requests under way still get when the connection is closed for idling or shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

const TEXT: &str = "text/plain; charset=utf-8";

type Body = Full<Bytes>;

/// Serves one DNS-over-HTTPS listener until `serve.shutdown`; `path` is `https_path`.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: Arc<tcp::Slots>,
    serve: Serve,
) {
    dot::accept(
        listener,
        acceptor,
        connections,
        serve,
        |stream, client, admission, serve, slot| async move {
            let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(AnswerRecords::new(stream, http2));
            connection(io, client, admission, serve, slot).await;
        },
    )
    .await;
}

/// What every request of one connection is answered with.
struct Exchange {
    serve: Serve,
    client: SocketAddr,
    admission: Admission,
    slot: Slot,
    /// Cancelled to drop the connection at once: a query over the rate limit with
    /// `rate_limit_action = "drop"` gets no answer, as over TCP.
    drop_connection: CancellationToken,
}

async fn connection<I>(io: I, client: SocketAddr, admission: Admission, serve: Serve, slot: Slot)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let config = serve.context.config();
    let idle = config.tcp_idle_timeout;
    let shutdown = serve.shutdown.clone();
    let exchange = Arc::new(Exchange {
        serve,
        client,
        admission,
        slot,
        drop_connection: CancellationToken::new(),
    });
    let service = {
        let exchange = exchange.clone();
        service_fn(move |request| {
            let exchange = exchange.clone();
            async move { Ok::<_, Infallible>(exchange.respond(request).await) }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT.min(idle))
        .max_buf_size(MAX_REQUEST_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(u32::try_from(config.tcp_max_queries).unwrap_or(u32::MAX))
        .max_header_list_size(MAX_REQUEST_HEAD as u32);
    let mut served = pin!(builder.serve_connection(io, service));
    let slot = &exchange.slot;
    loop {
        // Busy: look again after a whole idle period; else when it will have idled enough.
        let wait = slot.idle_for(idle).unwrap_or(idle);
        tokio::select! {
            outcome = served.as_mut() => {
                if let Err(error) = outcome {
                    debug!(%client, "DNS over HTTPS connection: {error}");
                }
                return;
            }
            _ = tokio::time::sleep(wait) => {
                if slot.idle_for(idle) == Some(Duration::ZERO) {
                    debug!(%client, "closing idle DNS over HTTPS connection");
                    break;
                }
            }
            _ = slot.closed() => {
                debug!(%client, "closing DNS over HTTPS connection to make room for a new one");
                return;
            }
            _ = exchange.drop_connection.cancelled() => return,
            _ = shutdown.cancelled() => break,
        }
    }
    served.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(CLOSE_GRACE, served).await;
}

impl Exchange {
    /// The response to one request.
    async fn respond(&self, request: Request<Incoming>) -> Response<Body> {
        let decided = {
            let config = self.serve.context.config();
            doh_request::check_head(&request_head(&request), &config.https_path)
        };
        let body = read_body(request.into_body()).await;
        let message = match (decided, body) {
            (Ok(head), Ok(body)) => doh_request::message(head, &body),
            (Ok(_), Err(status)) => return self.refuse_with(status),
            (Err(refusal), _) => Err(refusal),
        };
        match message {
            Ok(message) => self.answer(&message).await,
            Err(refusal) => {
                debug!(client = %self.client, "DNS over HTTPS request refused: {refusal}");
                self.refuse(refusal)
            }
        }
    }

    /// The DNS answer to `message`, as the other transports give it.
    async fn answer(&self, message: &[u8]) -> Response<Body> {
        let Serve {
            context, tracker, ..
        } = &self.serve;
        let counts = context.metrics.transport(self.serve.transport);
        let (config, forwarder) = context.current();
        let admission =
            self.admission
                .of_query(&config, &forwarder, &context.metrics, self.client.ip());
        if admission == Admission::Drop {
            debug!(client = %self.client, "DNS over HTTPS client over the rate limit; closing");
            self.drop_connection.cancel();
            return self.refuse_with(StatusCode::TOO_MANY_REQUESTS);
        }
        let _pending = self.slot.query();
        let answer = match dns::parse_query(message) {
            Err(Rejection::Drop) => return self.refuse(Refusal::BadRequest("not a DNS query")),
            Err(Rejection::Answer(answer, _)) => answer,
            Ok(query) if admission == Admission::Refuse => query.error_answer(Rcode::Refused),
            Ok(query) => {
                // On the tracker, so that shutdown waits for it like for any query.
                let (client, transport) = (self.client, self.serve.transport);
                let asked =
                    tracker.spawn(async move { forwarder.answer(&query, client, transport).await });
                match asked.await {
                    Ok(answer) => answer,
                    Err(_) => return self.refuse_with(StatusCode::INTERNAL_SERVER_ERROR),
                }
            }
        };
        counts.answered(dns::header_rcode(&answer));
        self.slot.completed_message();
        let cache_control = freshness(&answer)
            .and_then(|seconds| HeaderValue::try_from(format!("max-age={seconds}")).ok())
            .unwrap_or(HeaderValue::from_static("no-store"));
        let mut response = Response::new(Full::new(Bytes::from(answer)));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(DNS_MESSAGE));
        headers.insert(CACHE_CONTROL, cache_control);
        response
    }

    fn refuse(&self, refusal: Refusal) -> Response<Body> {
        let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = self.refuse_with(status);
        if refusal == Refusal::MethodNotAllowed {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, POST"));
        }
        response
    }

    /// An HTTP error: counted as a request given no DNS answer.
    fn refuse_with(&self, status: StatusCode) -> Response<Body> {
        self.serve
            .context
            .metrics
            .transport(self.serve.transport)
            .dropped();
        self.slot.completed_message();
        let reason = status.canonical_reason().unwrap_or("error");
        let mut response = Response::new(Full::new(Bytes::from(format!("{reason}\n"))));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(TEXT));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// A request's body, up to a DNS message's size, within [`REQUEST_TIMEOUT`]: 413 beyond it,
/// 408 when it does not arrive in time. A longer body is still read, up to [`DISCARD_LIMIT`],
/// so that a client still sending it reads the response: closing the stream under it makes
/// some clients (curl over HTTP/2) report an error instead of the status. Every request's
/// body is read this way, even when its head decided the response, for the same reason.
async fn read_body(mut body: Incoming) -> Result<Vec<u8>, StatusCode> {
    let mut kept = Vec::new();
    let mut length = 0usize;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| StatusCode::BAD_REQUEST)?;
            if let Ok(data) = frame.into_data() {
                length = length.saturating_add(data.len());
                if length <= doh_request::MAX_MESSAGE {
                    kept.extend_from_slice(&data);
                } else if length > DISCARD_LIMIT {
                    break;
                }
            }
        }
        Ok(())
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(Ok(())) if length > doh_request::MAX_MESSAGE => Err(StatusCode::PAYLOAD_TOO_LARGE),
        Ok(Ok(())) => Ok(kept),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
    }
}

/// The parts of `request` its decoding looks at.
fn request_head(request: &Request<Incoming>) -> RequestHead<'_> {
    let headers = request.headers();
    RequestHead {
        method: request.method().as_str(),
        path: request.uri().path(),
        query: request.uri().query(),
        content_type: headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes),
        content_length: headers.get(CONTENT_LENGTH).map(HeaderValue::as_bytes),
    }
}

/// For how many seconds an HTTP cache may reuse `answer` (RFC 8484 §5.1): the smallest TTL
/// of its records for a positive answer, and for a negative one (NXDOMAIN, or NOERROR with
/// no answer) the smaller of its SOA record's TTL and minimum (RFC 2308 §5). `None` when it
/// must not be reused: other response codes, or nothing to take a lifetime from.
pub(crate) fn freshness(answer: &[u8]) -> Option<u32> {
    let response = dns::Response::prepare(answer).ok()?;
    let records: Vec<dns::Record> = response.records().collect();
    let rcode = response.rcode();
    let negative = rcode == dns::RCODE_NXDOMAIN
        || (rcode == dns::RCODE_NOERROR && response.answer_count() == 0);
    if negative {
        let soa = records
            .iter()
            .find(|r| r.section == dns::Section::Authority && r.rtype == dns::TYPE_SOA)?;
        let rdata = response.rdata(soa);
        let minimum = dns::read_u32(rdata, rdata.len().checked_sub(4)?)?;
        return Some(soa.ttl.min(minimum));
    }
    if rcode != dns::RCODE_NOERROR {
        return None;
    }
    records.iter().map(|record| record.ttl).min()
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::*;

    fn response(code: ResponseCode, answers: &[(u32, RData)], soa: Option<(u32, u32)>) -> Vec<u8> {
        let name = Name::from_ascii("www.example.com.").unwrap();
        let mut message = Message::new(7, MessageType::Response, OpCode::Query);
        message.metadata.response_code = code;
        message.add_query(Query::query(name.clone(), RecordType::A));
        for (ttl, rdata) in answers {
            message.add_answer(Record::from_rdata(name.clone(), *ttl, rdata.clone()));
        }
        if let Some((ttl, minimum)) = soa {
            let zone = Name::from_ascii("example.com.").unwrap();
            let soa = SOA::new(zone.clone(), zone.clone(), 1, 3600, 600, 86400, minimum);
            message.add_authority(Record::from_rdata(zone, ttl, RData::SOA(soa)));
        }
        message.to_vec().unwrap()
    }

    #[test]
    fn positive_answers_live_as_long_as_their_shortest_ttl() {
        let a = |n| RData::A(A::new(192, 0, 2, n));
        let answer = response(ResponseCode::NoError, &[(300, a(1)), (60, a(2))], None);
        assert_eq!(freshness(&answer), Some(60));
        let answer = response(ResponseCode::NoError, &[(0, a(1))], None);
        assert_eq!(freshness(&answer), Some(0));
    }

    #[test]
    fn negative_answers_live_as_long_as_their_soa_says() {
        let answer = response(ResponseCode::NXDomain, &[], Some((900, 300)));
        assert_eq!(freshness(&answer), Some(300));
        let answer = response(ResponseCode::NoError, &[], Some((120, 300)));
        assert_eq!(freshness(&answer), Some(120));
        // Nothing to take a lifetime from.
        let answer = response(ResponseCode::NXDomain, &[], None);
        assert_eq!(freshness(&answer), None);
    }

    #[test]
    fn failures_are_not_to_be_reused() {
        for code in [
            ResponseCode::ServFail,
            ResponseCode::Refused,
            ResponseCode::FormErr,
        ] {
            assert_eq!(freshness(&response(code, &[], Some((60, 60)))), None);
        }
        assert_eq!(freshness(b"\x00\x07"), None);
    }
}
