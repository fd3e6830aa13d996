//! DNS-over-HTTPS upstreams that misbehave, against a scripted HTTP/2 server
//! (`support::doh_server`): a 503 or 429, a 200 that is not `application/dns-message`, a
//! GOAWAY, a reset stream, a request never answered. Each is an upstream failure like a
//! refused connection: in a `failover` group the next upstream answers within `timeout` and
//! the faulty one is backed off (asked again only by a probe now and then), and alone it gives
//! SERVFAIL within `timeout`. The same on a connection that has answered before, except that
//! the query caught by a server that goes silent on it (GOAWAY then nothing, or nothing) may
//! wait for it to the end of its budget, as on a half-open DoT connection; the queries after
//! it do not. A server that rotates its connection (GOAWAY, then answers to what it took) has
//! the query in flight answered there, not cancelled. A server that behaves gets POSTs of id-0
//! queries and carries many at once on one connection.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use hyper::Method;

use crate::support::client::{UdpClient, assert_a, assert_servfail, make_query};
use crate::support::doh_server::{Behaviour, DOH_SERVER_PATH, DohServer};
use crate::support::proxy::Proxy;
use crate::support::within;

/// The query budget the daemon is given.
const TIMEOUT: Duration = Duration::from_millis(1500);
/// Slack on top of `TIMEOUT` for an answer to reach the client on two busy cores.
const MARGIN: Duration = Duration::from_millis(1500);
/// The daemon's shortest backoff: a failed upstream is not asked again sooner.
const FIRST_BACKOFF: Duration = Duration::from_millis(125);
/// Clock slack between this process and the daemon's timers.
const CLOCK_SLACK: Duration = Duration::from_millis(5);
/// Queries asked after the first, once the faulty upstream has failed.
const MORE_QUERIES: usize = 5;

const FAULTY_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const HEALTHY_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// A configuration asking `upstreams` in order (`failover`), not validating.
fn config(upstreams: &[&DohServer]) -> String {
    let mut toml = format!(
        "timeout = \"{}ms\"\ndnssec = \"off\"\nstrategy = \"failover\"\n",
        TIMEOUT.as_millis()
    );
    for upstream in upstreams {
        toml.push('\n');
        toml.push_str(&upstream.upstream_toml());
    }
    toml
}

fn ask(name: &str) -> Message {
    make_query(name, RecordType::A, None, false)
}

/// Asks `name`; the answer and how long it took.
async fn timed(client: &UdpClient, name: &str) -> (Message, Duration) {
    let started = Instant::now();
    let (answer, _) = client.exchange(&ask(name)).await;
    (answer, started.elapsed())
}

/// What the daemon's "is down" warning names as the cause when a server does `behaviour`
/// in `fails_over`.
fn down_because(behaviour: Behaviour) -> String {
    match behaviour {
        Behaviour::Status(code) => format!("is down: HTTP: status {code}"),
        Behaviour::WrongType => "is down: HTTP: a 2xx response of type \"text/html\"".to_string(),
        Behaviour::Reset => {
            "is down: HTTP: the upstream reset the request's stream (INTERNAL_ERROR)".to_string()
        }
        // The query after the GOAWAY finds the connection gone before the first one times out.
        Behaviour::GoAway => "is down: connection closed".to_string(),
        Behaviour::Stall => "is down: no answer in time".to_string(),
        Behaviour::Answer | Behaviour::GoAwayThenAnswer(_) => {
            unreachable!("a server that answers is not down")
        }
    }
}

/// A failover group of a server doing `behaviour`, then a healthy one: the healthy one
/// answers the first query within `timeout`, and the faulty one, once failed, is not asked
/// again within a backoff, so not for each query after it.
async fn fails_over(behaviour: Behaviour) {
    let faulty = DohServer::start(behaviour, FAULTY_ANSWER).await;
    let healthy = DohServer::start(Behaviour::Answer, HEALTHY_ANSWER).await;
    let proxy = Proxy::builder_toml(&config(&[&faulty, &healthy]))
        .start()
        .await;
    let client = UdpClient::new(proxy.udp4()).await;

    let (answer, first) = timed(&client, "first.test.").await;
    assert_a(&answer, HEALTHY_ANSWER);
    assert!(
        first < TIMEOUT,
        "{behaviour:?}: the next upstream answered after {first:?}, not within {TIMEOUT:?}"
    );
    faulty.wait_requests(1, Duration::from_secs(5)).await;

    let asked = faulty.requests();
    let started = Instant::now();
    for i in 0..MORE_QUERIES {
        let (answer, took) = timed(&client, &format!("more-{i}.test.")).await;
        assert_a(&answer, HEALTHY_ANSWER);
        assert!(
            took < TIMEOUT + MARGIN,
            "{behaviour:?}: query {i} answered after {took:?}"
        );
    }
    let more = faulty.requests() - asked;
    eprintln!(
        "{behaviour:?}: first answer after {first:?}; {MORE_QUERIES} more in {:?}, the faulty \
         upstream asked {more} more times",
        started.elapsed()
    );
    assert!(
        more < MORE_QUERIES,
        "{behaviour:?}: the faulty upstream got {more} of {MORE_QUERIES} queries"
    );
    let seen = faulty.seen();
    for pair in seen.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap + CLOCK_SLACK >= FIRST_BACKOFF,
            "{behaviour:?}: the faulty upstream was asked again after {gap:?}, within the \
             first backoff"
        );
    }
    assert_eq!(healthy.requests(), 1 + MORE_QUERIES);
    proxy
        .wait_for_log(&down_because(behaviour), Duration::from_secs(5))
        .await;
    proxy.assert_running();
}

/// Whether a server doing `behaviour` leaves a query with no word at all (a GOAWAY takes the
/// stream as one it will still answer).
fn goes_silent(behaviour: Behaviour) -> bool {
    matches!(behaviour, Behaviour::GoAway | Behaviour::Stall)
}

/// A failover group whose first upstream answers, then does `behaviour` on the connection it
/// answered on: the query caught by it is answered by the second upstream within `timeout`,
/// or, where the first goes silent, gets SERVFAIL within `timeout` at worst; the queries after
/// it are answered by the second at once, the first asked only by a probe now and then.
async fn fails_over_on_an_open_connection(behaviour: Behaviour) {
    let faulty = DohServer::start(Behaviour::Answer, FAULTY_ANSWER).await;
    let healthy = DohServer::start(Behaviour::Answer, HEALTHY_ANSWER).await;
    let proxy = Proxy::builder_toml(&config(&[&faulty, &healthy]))
        .start()
        .await;
    let client = UdpClient::new(proxy.udp4()).await;
    let (answer, _) = timed(&client, "warm.test.").await;
    assert_a(&answer, FAULTY_ANSWER);

    faulty.set_behaviour(behaviour);
    let (answer, caught) = timed(&client, "caught.test.").await;
    if goes_silent(behaviour) && answer.metadata.response_code == ResponseCode::ServFail {
        assert_servfail(&answer);
        assert!(
            caught < TIMEOUT + MARGIN,
            "{behaviour:?}: SERVFAIL after {caught:?}, budget {TIMEOUT:?}"
        );
    } else {
        assert_a(&answer, HEALTHY_ANSWER);
        assert!(
            caught < TIMEOUT,
            "{behaviour:?}: the next upstream answered after {caught:?}"
        );
    }
    proxy
        .wait_for_log(" is down: ", Duration::from_secs(5))
        .await;

    let asked = faulty.requests();
    for i in 0..MORE_QUERIES {
        let (answer, took) = timed(&client, &format!("after-{i}.test.")).await;
        assert_a(&answer, HEALTHY_ANSWER);
        assert!(
            took < TIMEOUT / 2,
            "{behaviour:?}: query {i} waited {took:?} on the faulty upstream"
        );
    }
    let more = faulty.requests() - asked;
    eprintln!(
        "{behaviour:?} on an open connection: the caught query got {:?} after {caught:?}; \
         the faulty upstream asked {more} times for {MORE_QUERIES} more",
        answer.metadata.response_code
    );
    assert!(
        more < MORE_QUERIES,
        "{behaviour:?}: the faulty upstream got {more} of {MORE_QUERIES} queries"
    );
    proxy.assert_running();
}

/// A server doing `behaviour`, alone: SERVFAIL within `timeout` (and a margin).
async fn servfails_alone(behaviour: Behaviour) {
    let faulty = DohServer::start(behaviour, FAULTY_ANSWER).await;
    let proxy = Proxy::builder_toml(&config(&[&faulty])).start().await;
    let client = UdpClient::new(proxy.udp4()).await;
    let (answer, took) = timed(&client, "alone.test.").await;
    assert_servfail(&answer);
    eprintln!("{behaviour:?}: SERVFAIL after {took:?}");
    assert!(
        took < TIMEOUT + MARGIN,
        "{behaviour:?}: SERVFAIL after {took:?}, budget {TIMEOUT:?}"
    );
    assert!(faulty.requests() >= 1, "the upstream was asked");
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_503_fails_over() {
    fails_over(Behaviour::Status(503)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_429_fails_over() {
    fails_over(Behaviour::Status(429)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_type_fails_over() {
    fails_over(Behaviour::WrongType).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_fails_over() {
    fails_over(Behaviour::GoAway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_stream_fails_over() {
    fails_over(Behaviour::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_server_fails_over() {
    fails_over(Behaviour::Stall).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_503_on_an_open_connection_fails_over() {
    fails_over_on_an_open_connection(Behaviour::Status(503)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_type_on_an_open_connection_fails_over() {
    fails_over_on_an_open_connection(Behaviour::WrongType).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_stream_on_an_open_connection_fails_over() {
    fails_over_on_an_open_connection(Behaviour::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_on_an_open_connection_fails_over() {
    fails_over_on_an_open_connection(Behaviour::GoAway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_on_an_open_connection_fails_over() {
    fails_over_on_an_open_connection(Behaviour::Stall).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_503_alone_gives_servfail() {
    servfails_alone(Behaviour::Status(503)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_429_alone_gives_servfail() {
    servfails_alone(Behaviour::Status(429)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_type_alone_gives_servfail() {
    servfails_alone(Behaviour::WrongType).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_alone_gives_servfail() {
    servfails_alone(Behaviour::GoAway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_stream_alone_gives_servfail() {
    servfails_alone(Behaviour::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_server_alone_gives_servfail() {
    servfails_alone(Behaviour::Stall).await;
}

/// A server that rotates its connection (a graceful GOAWAY, then answers to the requests it
/// took, as one restarting or past its requests per connection does): the query in flight is
/// answered on that connection, not cancelled and asked again; the next query goes to a new
/// connection; the upstream is never marked down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_goaway_lets_the_query_in_flight_finish() {
    let server = DohServer::start(Behaviour::Answer, HEALTHY_ANSWER).await;
    let proxy = Proxy::builder_toml(&config(&[&server])).start().await;
    let client = UdpClient::new(proxy.udp4()).await;
    assert_a(&timed(&client, "warm.test.").await.0, HEALTHY_ANSWER);

    server.set_behaviour(Behaviour::GoAwayThenAnswer(Duration::from_millis(300)));
    let address = proxy.udp4();
    let in_flight = tokio::spawn(async move {
        let client = UdpClient::new(address).await;
        client.exchange(&ask("in-flight.test.")).await.0
    });
    server.wait_requests(2, Duration::from_secs(5)).await;
    // Time for the GOAWAY to reach the daemon, so that the next query finds it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (next, _) = timed(&client, "next.test.").await;
    assert_a(&next, HEALTHY_ANSWER);
    let in_flight = within(Duration::from_secs(5), "the query in flight", in_flight)
        .await
        .expect("client");
    assert_a(&in_flight, HEALTHY_ANSWER);

    let asked = server
        .seen()
        .iter()
        .filter(|request| request.name.as_deref() == Some("in-flight.test."))
        .count();
    assert_eq!(asked, 1, "the query in flight was asked again");
    assert_eq!(
        server.connections(),
        2,
        "the next query opened a new connection"
    );
    assert!(
        !proxy
            .log_lines()
            .iter()
            .any(|line| line.contains(" is down: ")),
        "a server rotating its connection was marked down"
    );
    proxy.assert_running();
}

/// 50 clients at once, each a name of its own, before any connection is open: all answered,
/// over one connection, each query a POST of `application/dns-message` with id 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_queries_share_one_connection() {
    let server = DohServer::start(Behaviour::Answer, HEALTHY_ANSWER).await;
    let proxy = Proxy::builder_toml(&config(&[&server])).start().await;

    let address = proxy.udp4();
    let clients: Vec<_> = (0..50)
        .map(|i| {
            tokio::spawn(async move {
                let client = UdpClient::new(address).await;
                client.exchange(&ask(&format!("c{i}.test."))).await.0
            })
        })
        .collect();
    within(Duration::from_secs(30), "50 concurrent answers", async {
        for client in clients {
            assert_a(&client.await.expect("client"), HEALTHY_ANSWER);
        }
    })
    .await;
    assert_eq!(server.requests(), 50, "each query went upstream once");
    assert_eq!(
        server.connections(),
        1,
        "one HTTP/2 connection carried every query"
    );
    for request in server.seen() {
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.path, DOH_SERVER_PATH);
        assert_eq!(
            request.content_type.as_deref(),
            Some("application/dns-message")
        );
        assert_eq!(request.dns_id, Some(0), "RFC 8484 §4.1: the id is 0");
    }
    proxy.assert_running();
}
