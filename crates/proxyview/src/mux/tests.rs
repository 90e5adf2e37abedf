use super::*;
use crate::protocol::{MAX_WS_MESSAGE, STREAM_WINDOW};

pub(crate) const HB: Heartbeat = Heartbeat {
    interval: Duration::from_secs(30),
    timeout: Duration::from_secs(30),
};

/// An opener and an acceptor session joined by an in-memory WebSocket.
pub(crate) fn pair() -> (Session, mpsc::UnboundedReceiver<Accepted>) {
    let (server_ws, client_ws) = ws_pair();
    let (opener, _) = Session::start(server_ws, Role::Opener, HB);
    let (_acceptor, accepted) = Session::start(client_ws, Role::Acceptor, HB);
    (opener, accepted.unwrap())
}

/// Both ends of an in-memory WebSocket (server side first).
pub(crate) fn ws_pair() -> (
    WebSocketStream<tokio::io::DuplexStream>,
    WebSocketStream<tokio::io::DuplexStream>,
) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let max = Some(MAX_WS_MESSAGE);
    let server_ws = tokio_websockets::ServerBuilder::new()
        .limits(tokio_websockets::Limits::default().max_payload_len(max))
        .serve(a);
    let client_ws = tokio_websockets::ClientBuilder::new()
        .limits(tokio_websockets::Limits::default().max_payload_len(max))
        .take_over(b);
    (server_ws, client_ws)
}

/// Reads a stream to its end (each chunk within 5 s) and returns the byte count.
async fn read_all(mut recv: RecvHalf, stalled: &str) -> usize {
    let mut got = 0;
    while let Some(c) = tokio::time::timeout(Duration::from_secs(5), recv.chunk())
        .await
        .expect(stalled)
    {
        got += c.unwrap().len();
    }
    got
}

#[tokio::test]
async fn session_credit_comes_back_from_streams_dropped_unread() {
    let (opener, mut accepted) = pair();
    let block = Bytes::from(vec![1u8; 4 * 1024 * 1024]);
    // Three streams of 4 MiB (12 MiB > the 8 MiB session window) whose receivers are
    // dropped without reading: their credit must come back, or the fourth would hang.
    for i in 0..4 {
        let (mut send, _recv) = opener.open(Bytes::from_static(b"h"), false, false).unwrap();
        let a = tokio::time::timeout(Duration::from_secs(5), accepted.recv())
            .await
            .unwrap()
            .unwrap();
        let sender = tokio::spawn({
            let block = block.clone();
            async move { send.send_data(block, true).await }
        });
        if i < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(a);
            let r = tokio::time::timeout(Duration::from_secs(5), sender)
                .await
                .expect("a dropped receiver must not leave the sender hanging");
            assert!(r.unwrap().is_err(), "the reset reaches the sender");
        } else {
            assert_eq!(read_all(a.recv, "session window leaked").await, block.len());
            sender.await.unwrap().unwrap();
        }
    }
    assert_eq!(opener.open_streams(), 0, "finished streams leave the table");
}

#[tokio::test]
async fn a_body_upload_stops_waiting_when_the_peer_resets() {
    let (opener, mut accepted) = pair();
    let (mut send, _recv) = opener.open(Bytes::from_static(b"u"), false, false).unwrap();
    // A caller that sent its head and then nothing more, with the connection open.
    let stalled = http_body_util::StreamBody::new(futures_util::stream::pending::<
        Result<http_body::Frame<Bytes>, std::convert::Infallible>,
    >());
    let upload = tokio::spawn(async move { send_body(stalled, &mut send).await });
    let a = accepted.recv().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!upload.is_finished());
    // The agent gives up on the stream (its backend timed out, say).
    drop(a);
    let r = tokio::time::timeout(Duration::from_secs(2), upload)
        .await
        .expect("the upload must end when the peer resets the stream");
    assert!(r.unwrap().is_err());
}

#[tokio::test]
async fn cancelled_resolves_on_a_peer_reset_and_on_session_close_only() {
    let (opener, mut accepted) = pair();
    let (send1, _r1) = opener.open(Bytes::from_static(b"a"), false, false).unwrap();
    let (send2, _r2) = opener.open(Bytes::from_static(b"b"), false, false).unwrap();
    let c1 = tokio::spawn(send1.cancelled_owned());
    let c2 = tokio::spawn(send2.cancelled_owned());
    let a1 = accepted.recv().await.unwrap();
    let _a2 = accepted.recv().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!c1.is_finished() && !c2.is_finished());
    // The peer abandons the first stream only.
    drop(a1);
    tokio::time::timeout(Duration::from_secs(2), c1)
        .await
        .expect("a reset must cancel the stream")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !c2.is_finished(),
        "another stream's reset cancelled this one"
    );
    opener.close("test");
    tokio::time::timeout(Duration::from_secs(2), c2)
        .await
        .expect("the session's end must cancel its streams")
        .unwrap();
    // A cancelled stream's future resolves at once when asked again.
    tokio::time::timeout(Duration::from_millis(100), send2.cancelled_owned())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stream_that_stops_reading_does_not_stall_another() {
    let (opener, mut accepted) = pair();
    let (mut slow_send, _slow_recv) = opener.open(Bytes::from_static(b"s"), false, false).unwrap();
    let _slow = accepted.recv().await.unwrap();
    // Fill the slow stream's whole window; nobody reads it.
    let parked = tokio::spawn(async move {
        slow_send
            .send_data(Bytes::from(vec![0u8; 3 * STREAM_WINDOW as usize]), true)
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (mut send, _recv) = opener.open(Bytes::from_static(b"f"), false, false).unwrap();
    let fast = accepted.recv().await.unwrap();
    let fast_sender = tokio::spawn(async move {
        send.send_data(Bytes::from(vec![2u8; 2 * STREAM_WINDOW as usize]), true)
            .await
    });
    let got = read_all(fast.recv, "fast stream stalled behind the slow one").await;
    assert_eq!(got, 2 * STREAM_WINDOW as usize);
    fast_sender.await.unwrap().unwrap();
    assert!(!parked.is_finished(), "the slow stream waits for credit");
}

#[tokio::test]
async fn idle_session_stays_up_on_pings_and_a_silent_peer_is_dead() {
    // interval == timeout: the ping must leave well before interval + timeout of silence.
    let hb = Heartbeat {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(100),
    };
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (opener, _) = Session::start(
        tokio_websockets::ServerBuilder::new().serve(a),
        Role::Opener,
        hb,
    );
    let (acceptor, _acc) = Session::start(
        tokio_websockets::ClientBuilder::new().take_over(b),
        Role::Acceptor,
        hb,
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !opener.is_closed() && !acceptor.is_closed(),
        "pings keep an idle session up"
    );
    // A peer that stops answering (its session task gone, the socket kept open).
    let (c, _keep_open) = tokio::io::duplex(64 * 1024);
    let (lonely, _) = Session::start(
        tokio_websockets::ServerBuilder::new().serve(c),
        Role::Opener,
        hb,
    );
    let reason = tokio::time::timeout(Duration::from_secs(2), lonely.closed())
        .await
        .expect("a silent peer is declared dead");
    assert!(reason.contains("heartbeat"), "{reason}");
}
