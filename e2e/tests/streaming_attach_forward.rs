//! Attach and port-forward over the streaming server end to end, and the WebSocket transports
//! (tokio-tungstenite as the client), against real containers and pods.

use std::time::{Duration, Instant};

use berth_e2e::container_fixture::*;
use berth_e2e::spdy::{self, run_session, Client, Event, Session};
use berth_e2e::streaming_fixture::*;
use k8s_cri::v1::*;
use sha2::{Digest, Sha256};

#[tokio::test]
async fn attach_with_stdin_once_closes_the_containers_stdin() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let (pod, id) = running(&f, &mut c, "attach-once", &["sh"], |cfg| {
        cfg.stdin = true;
        cfg.stdin_once = true;
    })
    .await;
    let s = Session {
        stdin: Some(b"echo -n hello\necho -n oops >&2\n".to_vec()),
        ..out_err()
    };
    let url = attach_url(&mut c, &id, &s).await;
    let o = run_session(&url, &s).await;
    assert_eq!(o.stdout, b"hello");
    assert_eq!(o.stderr, b"oops");
    assert_eq!(o.status["status"], "Success", "{}", o.status);
    // The shell read EOF and exited: the attacher's stdin ending closed the container's.
    let st = wait_exited(&mut c, &id).await;
    assert_eq!(st.exit_code, 0);
    // While attached the log got everything too.
    let log = std::fs::read_to_string(f.logs.path().join("attach-once/attach-once/0.log"))
        .unwrap_or_default();
    assert!(
        log.contains("stdout F hello") || log.contains("hello"),
        "{log:?}"
    );
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "attach-once");
}

#[tokio::test]
async fn two_attachers_see_the_output_and_detaching_leaves_the_container_running() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let script = "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.05; done";
    let (pod, id) = running(&f, &mut c, "attach-two", &["sh", "-c", script], |_| {}).await;
    let s = Session {
        stdout: true,
        ..Default::default()
    };
    let (url_a, url_b) = (
        attach_url(&mut c, &id, &s).await,
        attach_url(&mut c, &id, &s).await,
    );
    assert_ne!(url_a, url_b);
    let mut a = spdy::open_session(&url_a, &s).await;
    let mut b = spdy::open_session(&url_b, &s).await;
    for streams in [&mut a, &mut b] {
        let stdout = streams.stdout.as_mut().unwrap();
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("\nline") {
            match stdout.next().await {
                Some(Event::Data(d)) => got.extend(d),
                other => panic!("attach output ended: {other:?}"),
            }
        }
    }
    drop((a, b));
    // Detached: still running, and the log still grows past what either attacher saw.
    let log = f.logs.path().join("attach-two/attach-two/0.log");
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    wait_for_text(&log.display().to_string(), "grew after detaching", |t| {
        t.lines().count() > before + 5
    })
    .await;
    assert_eq!(
        status(&mut c, &id).await.state,
        ContainerState::ContainerRunning as i32
    );
    wait_metric(&f, "berth_streaming_active_sessions{", 0.0).await;
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "attach-two");
}

#[tokio::test]
async fn port_forward_reaches_a_listener_inside_the_pod() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let net = berth_e2e::network::TestNetwork::create(
        &f.agent.paths.cni_conf_dir,
        berth_e2e::network::Extra::None,
    );
    berth_e2e::cri::wait_network_ready(&mut c).await;
    let mut pod_cfg = pod_config(&f, "forward");
    pod_namespaces(&mut pod_cfg).network = NamespaceMode::Pod as i32;
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let script = "mkdir -p /www && echo -n hello-from-pod > /www/index.html && \
        head -c 104857600 /dev/urandom > /www/big && touch /www/ready && \
        exec httpd -f -p 8080 -h /www";
    let mut cfg = container_config(&f, "forward", &["sh", "-c", script]);
    container_namespaces(&mut cfg).network = NamespaceMode::Pod as i32;
    let id = create(&mut c, &pod, cfg, pod_cfg).await;
    start(&mut c, &id).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while c
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into(), "-c".into(), "test -f /www/ready && cat /proc/net/tcp /proc/net/tcp6 | grep -q ':1F90 0.*:0000 0A'".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .exit_code
        != 0
    {
        assert!(
            Instant::now() < deadline,
            "httpd never listened: {:?}",
            std::fs::read_to_string(f.logs.path().join("forward/forward/0.log"))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = port_forward_client(&mut c, &pod).await;
    // Two forwarded connections at once on one session.
    let (e1, mut small) = forward_pair(&mut client, 8080, 1).await;
    let (mut e2, mut big) = forward_pair(&mut client, 8080, 2).await;
    big.send(b"GET /big HTTP/1.0\r\n\r\n").await.unwrap();
    small
        .send(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let (small_body, big_body) = tokio::join!(small.read_to_end(), big.read_to_end());
    let small_body = small_body.unwrap();
    assert!(
        String::from_utf8_lossy(&small_body).ends_with("\r\n\r\nhello-from-pod"),
        "{:?}",
        String::from_utf8_lossy(&small_body)
    );
    let big_body = big_body.unwrap();
    let split = big_body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let sum = c
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sha256sum".into(), "/www/big".into()],
            timeout: 30,
        })
        .await
        .unwrap()
        .into_inner()
        .stdout;
    assert_eq!(big_body.len() - split, 104_857_600);
    assert_eq!(
        String::from_utf8_lossy(&sum)
            .split_whitespace()
            .next()
            .unwrap(),
        format!("{:x}", Sha256::digest(&big_body[split..]))
    );
    assert_eq!(
        e2.read_to_end().await,
        Ok(Vec::new()),
        "no error for a good forward"
    );
    // A port nothing listens on: the error stream says so, the session lives on.
    let (mut e3, mut d3) = forward_pair(&mut client, 8081, 3).await;
    let message = e3.read_to_end().await.unwrap();
    assert!(
        String::from_utf8_lossy(&message).contains("8081"),
        "{:?}",
        String::from_utf8_lossy(&message)
    );
    assert_eq!(d3.read_to_end().await, Ok(Vec::new()));
    // Bad ports and kinds are refused per stream.
    assert!(client
        .open(&[("streamtype", "data"), ("port", "0"), ("requestid", "9")])
        .await
        .is_err());
    assert!(client
        .open(&[("streamtype", "bogus"), ("port", "80")])
        .await
        .is_err());
    // The streams hold the connection's write half: all go, and the connection closes.
    drop((client, e1, small, e2, big, e3, d3));
    wait_metric(&f, "berth_streaming_active_sessions{", 0.0).await;
    remove_pod(&mut c, &pod).await;
    assert!(net.leases().is_empty());
    assert_clean(&f, "forward");
}

#[tokio::test]
async fn port_forward_in_a_host_network_pod_dials_the_host() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    // pod_config's pods use the host's network.
    let pod = run_pod(&mut c, pod_config(&f, "forward-host")).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&[&buf[..], b"-pong"].concat()).await.unwrap();
    });
    let mut client = port_forward_client(&mut c, &pod).await;
    let (_e, mut data) = forward_pair(&mut client, port, 0).await;
    data.send(b"ping").await.unwrap();
    assert_eq!(data.read_to_end().await.unwrap(), b"ping-pong");
    server.await.unwrap();
    drop(client);
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "forward-host");
}

#[tokio::test]
async fn an_agent_restart_during_an_attach_leaves_the_container_running() {
    let _top = CgroupTop::new();
    let mut f = fixture().await;
    let mut c = f.agent.runtime().await;
    let script = "while true; do echo tick; sleep 0.05; done";
    let (pod, id) = running(&f, &mut c, "attach-restart", &["sh", "-c", script], |_| {}).await;
    let s = Session {
        stdout: true,
        ..Default::default()
    };
    let mut a = spdy::open_session(&attach_url(&mut c, &id, &s).await, &s).await;
    match a.stdout.as_mut().unwrap().next().await {
        Some(Event::Data(d)) => assert!(String::from_utf8_lossy(&d).contains("tick")),
        other => panic!("{other:?}"),
    }
    f.agent
        .restart_with(nix::sys::signal::Signal::SIGKILL)
        .await;
    a.client.wait_closed().await;
    let mut c = f.agent.runtime().await;
    assert_eq!(
        status(&mut c, &id).await.state,
        ContainerState::ContainerRunning as i32
    );
    // And it can be attached to again through the new agent.
    let mut b = spdy::open_session(&attach_url(&mut c, &id, &s).await, &s).await;
    match b.stdout.as_mut().unwrap().next().await {
        Some(Event::Data(d)) => assert!(String::from_utf8_lossy(&d).contains("tick")),
        other => panic!("{other:?}"),
    }
    drop(b);
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "attach-restart");
}

mod websocket {
    //! The WebSocket transports with tokio-tungstenite as the client.

    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// Connects to `url` (http:// → ws://) offering `protocol`; the chosen one comes back.
    async fn connect(url: &str, protocol: &str) -> Result<(Ws, String), u16> {
        let mut request = url
            .replacen("http://", "ws://", 1)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, response)) => {
                let chosen = response.headers()["sec-websocket-protocol"]
                    .to_str()
                    .unwrap()
                    .to_string();
                Ok((ws, chosen))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
            Err(e) => panic!("connect {url}: {e}"),
        }
    }

    /// Reads channel messages until the close; (stdout, stderr, status JSON).
    async fn read_channels(ws: &mut Ws) -> (Vec<u8>, Vec<u8>, serde_json::Value, Option<u16>) {
        let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
        let mut close = None;
        while let Some(message) = ws.next().await {
            match message.unwrap() {
                Message::Binary(d) if !d.is_empty() => match d[0] {
                    1 => out.extend_from_slice(&d[1..]),
                    2 => err.extend_from_slice(&d[1..]),
                    3 => status.extend_from_slice(&d[1..]),
                    c => panic!("server wrote on channel {c}"),
                },
                Message::Close(frame) => {
                    close = frame.map(|f| u16::from(f.code));
                    break;
                }
                _ => {}
            }
        }
        let status = if status.is_empty() {
            serde_json::json!({"status": "Success"})
        } else {
            serde_json::from_slice(&status).unwrap()
        };
        (out, err, status, close)
    }

    #[tokio::test]
    async fn v5_exec_and_attach_carry_channels_and_close_stdin() {
        let _top = CgroupTop::new();
        let f = fixture().await;
        let mut c = f.agent.runtime().await;
        let (pod, id) = running(&f, &mut c, "ws-exec", &["sh"], |cfg| {
            cfg.stdin = true;
            cfg.stdin_once = true;
        })
        .await;
        let s = Session {
            stdin: Some(Vec::new()),
            ..out_err()
        };
        let url = exec_url(
            &mut c,
            &id,
            &["sh", "-c", "cat; echo -n bye >&2; exit 3"],
            &s,
        )
        .await;
        let (mut ws, chosen) = connect(&url, "v5.channel.k8s.io").await.unwrap();
        assert_eq!(chosen, "v5.channel.k8s.io");
        ws.send(Message::Binary([&[0u8][..], b"hello"].concat().into()))
            .await
            .unwrap();
        // v5's close of channel 0: cat reads EOF.
        ws.send(Message::Binary(vec![255u8, 0].into()))
            .await
            .unwrap();
        let (out, err, status, close) = read_channels(&mut ws).await;
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b"hello"[..], &b"bye"[..])
        );
        assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        assert_eq!(close, Some(1000));

        // Attach to the container's own sh: the close of stdin (stdin_once) ends it.
        let url = attach_url(&mut c, &id, &s).await;
        let (mut ws, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
        ws.send(Message::Binary(
            [&[0u8][..], b"echo -n attached\n"].concat().into(),
        ))
        .await
        .unwrap();
        ws.send(Message::Binary(vec![255u8, 0].into()))
            .await
            .unwrap();
        let (out, _, status, _) = read_channels(&mut ws).await;
        assert_eq!(out, b"attached");
        assert_eq!(status["status"], "Success");
        assert_eq!(wait_exited(&mut c, &id).await.exit_code, 0);
        assert!(
            f.agent
                .metric("berth_streaming_sessions_total{verb=\"exec\",protocol=\"websocket\"}")
                >= 1.0
        );
        remove_pod(&mut c, &pod).await;
        assert_clean(&f, "ws-exec");
    }

    #[tokio::test]
    async fn unknown_subprotocols_are_refused() {
        let _top = CgroupTop::new();
        let f = fixture().await;
        let mut c = f.agent.runtime().await;
        let (pod, id) = running(&f, &mut c, "ws-refuse", &["sleep", "1000"], |_| {}).await;
        let url = exec_url(&mut c, &id, &["true"], &out_err()).await;
        assert_eq!(
            connect(&url, "base64.channel.k8s.io").await.err(),
            Some(403)
        );
        remove_pod(&mut c, &pod).await;
        assert_clean(&f, "ws-refuse");
    }

    /// The SPDY client over the WebSocket's binary messages (a pipe and two pumps).
    fn tunnel(ws: Ws) -> Client {
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let (mut from_client, mut to_client) = tokio::io::split(theirs);
        let (mut sink, mut source) = ws.split();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = from_client.read(&mut buf).await {
                if n == 0
                    || sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        tokio::spawn(async move {
            while let Some(Ok(message)) = source.next().await {
                if let Message::Binary(d) = message {
                    if to_client.write_all(&d).await.is_err() {
                        break;
                    }
                }
            }
            let _ = to_client.shutdown().await;
        });
        Client::new(ours)
    }

    #[tokio::test]
    async fn port_forward_over_websocket_tunnels_spdy() {
        let _top = CgroupTop::new();
        let f = fixture().await;
        let mut c = f.agent.runtime().await;
        let pod = run_pod(&mut c, pod_config(&f, "ws-forward")).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            s.write_all(&Sha256::digest(&all)).await.unwrap();
        });
        let url = c
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![port as i32],
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let (ws, chosen) = connect(&url, "SPDY/3.1+portforward.k8s.io").await.unwrap();
        assert_eq!(chosen, "SPDY/3.1+portforward.k8s.io");
        let mut client = tunnel(ws);
        let (e, mut data) = forward_pair(&mut client, port, 0).await;
        let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        data.send(&payload).await.unwrap();
        data.close().await.unwrap();
        assert_eq!(
            data.read_to_end().await.unwrap(),
            Sha256::digest(&payload).to_vec()
        );
        server.await.unwrap();
        drop((client, e, data));
        wait_metric(&f, "berth_streaming_active_sessions{", 0.0).await;
        remove_pod(&mut c, &pod).await;
        assert_clean(&f, "ws-forward");
    }
}
