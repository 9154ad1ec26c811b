//! The client against scripted fake nodes: redirects, retries with the same session,
//! and bounded timeouts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use raft_client::{Client, ClientConfig, ClientError, KvResponse, NodeError, Request, Response};
use raft_proto::{RequestFrame, ResponseFrame, Session, FRAME_BYTES_MAX};
use tokio::net::TcpListener;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// A fake node answering every request with `answer(request, attempt_number)`, and
/// recording the sessions it saw.
async fn fake_node(
    answer: impl Fn(&Request, usize) -> Option<Response> + Send + Sync + 'static,
    seen: Arc<Mutex<Vec<Option<Session>>>>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        let mut count = 0;
        while let Ok((stream, _)) = listener.accept().await {
            let codec = LengthDelimitedCodec::builder()
                .max_frame_length(FRAME_BYTES_MAX)
                .new_codec();
            let mut framed = Framed::new(stream, codec);
            while let Some(Ok(buf)) = framed.next().await {
                let req: RequestFrame = postcard::from_bytes(&buf).unwrap();
                if let Request::Propose { session, .. } = &req.body {
                    seen.lock().unwrap().push(*session);
                }
                count += 1;
                // `None`: drop the connection without answering, like a crashed node.
                let Some(body) = answer(&req.body, count) else {
                    break;
                };
                let reply = ResponseFrame { id: req.id, body };
                let out = postcard::to_allocvec(&reply).unwrap();
                if framed.send(Bytes::from(out)).await.is_err() {
                    break;
                }
            }
        }
    });
    addr
}

fn ok_response() -> Response {
    Response::Applied(KvResponse::Ok.encode())
}

#[tokio::test]
async fn follows_redirects_and_retries_with_the_same_session() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    // The leader drops the first attempt (as if it crashed mid-request), then answers.
    let leader = fake_node(
        |_, n| if n == 1 { None } else { Some(ok_response()) },
        seen.clone(),
    )
    .await;
    let leader_addr = leader.clone();
    let follower = fake_node(
        move |_, _| {
            Some(Response::Error(NodeError::NotLeader {
                leader: Some(1),
                leader_addr: Some(leader_addr.clone()),
            }))
        },
        seen.clone(),
    )
    .await;
    let client = Client::new(ClientConfig::new([follower]));
    client.set("k", "v").await.unwrap();
    client.set("k", "w").await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let seqs: Vec<u64> = seen.iter().map(|s| s.unwrap().seq).collect();
    // Every attempt of the first request (follower, dropped at the leader, redirected
    // again, answered) carries seq 1; the second request goes straight to the leader it
    // learned, once.
    assert_eq!(seqs, vec![1, 1, 1, 1, 2], "{seen:?}");
    assert!(seen
        .iter()
        .all(|s| s.unwrap().client_id == client.client_id()));
}

#[tokio::test]
async fn gives_up_within_the_request_timeout() {
    let unavailable = fake_node(
        |_, _| Some(Response::Error(NodeError::Unavailable("no quorum".into()))),
        Arc::new(Mutex::new(Vec::new())),
    )
    .await;
    let mut config = ClientConfig::new([unavailable]);
    config.request_timeout_ms = 300;
    let client = Client::new(config);
    let started = Instant::now();
    let err = client.set("k", "v").await.unwrap_err();
    assert!(
        matches!(err, ClientError::Node(NodeError::Unavailable(_))),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // Nobody listening at all: a timeout, also bounded.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let mut config = ClientConfig::new([addr]);
    config.request_timeout_ms = 300;
    let started = Instant::now();
    let err = Client::new(config).get("k").await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}
