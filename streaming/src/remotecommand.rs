//! Exec and attach sessions: the streams a request needs, the process's stdio relayed over
//! them, and the outcome on the error stream (kubelet's remotecommand protocol, v1 to v5).

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::server::Context;
use crate::spdy::{header, IncomingStream, Session, StreamWriter};
use crate::{AttachRequest, ExecRequest, ProcessIo, TerminalSize};

/// After the outcome is written, how long the client gets to close the connection (closing it
/// ourselves while it still sends PINGs could reset unread output away).
const FINISH_WAIT: Duration = Duration::from_secs(60);

/// Output chunks queued between the process and the session, per stream.
const OUTPUT_QUEUE: usize = 16;

/// The remotecommand protocol versions, by what changes for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Version {
    /// `channel.k8s.io` (or no protocol header): errors as text, no resize.
    V1,
    /// `v2.channel.k8s.io`: as v1.
    V2,
    /// `v3.channel.k8s.io`: a resize stream for ttys.
    V3,
    /// `v4.channel.k8s.io` (and `v5.channel.k8s.io`, which a SPDY client treats as v4): the
    /// outcome as a JSON `metav1.Status`.
    V4,
}

impl Version {
    pub(crate) const SPDY: &'static [(&'static str, Version)] = &[
        ("v5.channel.k8s.io", Version::V4),
        ("v4.channel.k8s.io", Version::V4),
        ("v3.channel.k8s.io", Version::V3),
        ("v2.channel.k8s.io", Version::V2),
        ("channel.k8s.io", Version::V1),
    ];
}

/// How a session's process ended, as the error stream reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Exited(i32),
    /// Attach ended without an exit of ours to report.
    Detached,
    Failed(String),
}

/// The error stream's one message: a `metav1.Status` in v4 and later, text (only on failure)
/// before. `None`: nothing to write.
pub(crate) fn outcome_message(outcome: &Outcome, version: Version) -> Option<Vec<u8>> {
    let failure = |message: String, reason: &str, extra: serde_json::Value| {
        let mut status = json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
        });
        if let (Some(s), Some(extra)) = (status.as_object_mut(), extra.as_object()) {
            s.extend(extra.clone());
        }
        status
    };
    let status = match outcome {
        Outcome::Exited(0) | Outcome::Detached => {
            if version < Version::V4 {
                return None;
            }
            json!({"metadata": {}, "status": "Success"})
        }
        Outcome::Exited(code) => {
            let message = format!("command terminated with non-zero exit code: exit status {code}");
            if version < Version::V4 {
                return Some(message.into_bytes());
            }
            failure(
                message,
                "NonZeroExitCode",
                json!({"details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}}),
            )
        }
        Outcome::Failed(e) => {
            if version < Version::V4 {
                return Some(e.clone().into_bytes());
            }
            failure(e.clone(), "InternalError", json!({"code": 500}))
        }
    };
    Some(status.to_string().into_bytes())
}

/// Which streams a request needs and, once opened, the writers the outcome needs.
pub(crate) struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub resize: bool,
}

/// The streams of one session once the client has opened them all.
struct Streams {
    error: Option<IncomingStream>,
    stdin: Option<IncomingStream>,
    stdout: Option<IncomingStream>,
    stderr: Option<IncomingStream>,
    resize: Option<IncomingStream>,
}

impl Streams {
    fn complete(&self, wanted: &Wanted) -> bool {
        self.error.is_some()
            && self.stdin.is_some() == wanted.stdin
            && self.stdout.is_some() == wanted.stdout
            && self.stderr.is_some() == wanted.stderr
            && self.resize.is_some() == wanted.resize
    }
}

/// Accepts the streams `wanted` names (replying to each at once: the client opens the next
/// only after the reply) and refuses any other. `None` if they are not all there in time.
async fn gather(
    incoming: &mut mpsc::Receiver<IncomingStream>,
    wanted: &Wanted,
    timeout: Duration,
) -> Option<Streams> {
    let mut streams = Streams {
        error: None,
        stdin: None,
        stdout: None,
        stderr: None,
        resize: None,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    while !streams.complete(wanted) {
        let stream = tokio::time::timeout_at(deadline, incoming.recv())
            .await
            .ok()??;
        let slot = match header(&stream.headers, "streamtype") {
            Some("error") => Some(&mut streams.error),
            Some("stdin") if wanted.stdin => Some(&mut streams.stdin),
            Some("stdout") if wanted.stdout => Some(&mut streams.stdout),
            Some("stderr") if wanted.stderr => Some(&mut streams.stderr),
            Some("resize") if wanted.resize => Some(&mut streams.resize),
            _ => None,
        };
        match slot {
            Some(slot) if slot.is_none() => {
                if stream.writer.reply().await.is_err() {
                    return None;
                }
                *slot = Some(stream);
            }
            // A type this request has no use for, or a second stream of a type.
            _ => stream.writer.refuse().await,
        }
    }
    Some(streams)
}

/// What the session runs once its streams are open.
pub(crate) enum Run {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

impl Run {
    pub(crate) fn verb(&self) -> &'static str {
        match self {
            Run::Exec(_) => "exec",
            Run::Attach(_) => "attach",
        }
    }

    /// The streams the request needs under `version` (a resize stream for a tty from v3 on).
    pub(crate) fn wanted(&self, version: Version) -> Wanted {
        let (stdin, stdout, stderr, tty) = match self {
            Run::Exec(r) => (r.stdin, r.stdout, r.stderr, r.tty),
            Run::Attach(r) => (r.stdin, r.stdout, r.stderr, r.tty),
        };
        Wanted {
            stdin,
            stdout,
            stderr,
            resize: tty && version >= Version::V3,
        }
    }

    /// Runs the exec or attach on the backend to its outcome.
    pub(crate) async fn run(self, ctx: &Context, io: ProcessIo) -> Outcome {
        match self {
            Run::Exec(r) => match ctx.backend.exec(r, io).await {
                Ok(code) => Outcome::Exited(code),
                Err(e) => Outcome::Failed(e),
            },
            Run::Attach(r) => match ctx.backend.attach(r, io).await {
                Ok(()) => Outcome::Detached,
                Err(e) => Outcome::Failed(e),
            },
        }
    }
}

/// Serves one exec or attach session over SPDY to its end.
pub(crate) async fn serve_spdy(
    ctx: &Context,
    mut session: Session,
    mut incoming: mpsc::Receiver<IncomingStream>,
    run: Run,
    version: Version,
) {
    let (verb, wanted) = (run.verb(), run.wanted(version));
    let Some(streams) = gather(&mut incoming, &wanted, ctx.config.stream_creation_timeout()).await
    else {
        tracing::warn!("{verb} session: the client did not open its streams in time");
        ctx.reject("streams_timeout");
        // What the reader queued (a GOAWAY for a broken client) goes out first.
        session.close(Duration::from_secs(1)).await;
        return;
    };
    // Late or extra streams are refused while the session runs.
    let refuse_more = tokio::spawn(async move {
        while let Some(extra) = incoming.recv().await {
            extra.writer.refuse().await;
        }
    });
    let mut pumps = Vec::new();
    let mut writers: Vec<StreamWriter> = Vec::new();
    let mut resets: Vec<StreamWriter> = Vec::new();
    let bytes_in = ctx.metrics.bytes(verb, "in");
    let bytes_out = ctx.metrics.bytes(verb, "out");
    let stdin = streams.stdin.map(|s| {
        resets.push(s.writer.clone());
        let (tx, rx) = mpsc::channel::<Bytes>(OUTPUT_QUEUE);
        let mut reader = s.reader;
        let counted = bytes_in.clone();
        pumps.push(tokio::spawn(async move {
            while let Some(data) = reader.read().await {
                counted.inc_by(data.len() as u64);
                if tx.send(data).await.is_err() {
                    break;
                }
            }
        }));
        rx
    });
    let mut output = |stream: Option<IncomingStream>| {
        stream.map(|s| {
            writers.push(s.writer.clone());
            let (tx, mut rx) = mpsc::channel::<Bytes>(OUTPUT_QUEUE);
            let counted = bytes_out.clone();
            let writer = s.writer;
            let pump: JoinHandle<()> = tokio::spawn(async move {
                while let Some(data) = rx.recv().await {
                    counted.inc_by(data.len() as u64);
                    if writer.write(data).await.is_err() {
                        break;
                    }
                }
            });
            (tx, pump)
        })
    };
    let (stdout, stdout_pump) = output(streams.stdout).unzip();
    let (stderr, stderr_pump) = output(streams.stderr).unzip();
    let resize = streams.resize.map(|s| {
        resets.push(s.writer.clone());
        let (tx, rx) = mpsc::channel(4);
        pumps.push(tokio::spawn(read_resizes(s.reader.into_receiver(), tx)));
        rx
    });
    let io = ProcessIo {
        stdin,
        stdout,
        stderr,
        resize,
    };
    let error = streams.error.expect("gathered");
    let job = run.run(ctx, io);
    let outcome = tokio::select! {
        outcome = job => Some(outcome),
        // The client went away: dropping the job kills an exec'd process, detaches an attach.
        end = session.ended() => {
            tracing::debug!(?end, "{verb} session: the client left");
            None
        }
    };
    if let Some(outcome) = outcome {
        // All output is queued on the session before the outcome.
        for pump in [stdout_pump, stderr_pump].into_iter().flatten() {
            let _ = pump.await;
        }
        for w in &resets {
            w.reset(crate::spdy::frame::rst::CANCEL).await;
        }
        if let Some(message) = outcome_message(&outcome, version) {
            let _ = error.writer.write(Bytes::from(message)).await;
        }
        let _ = error.writer.finish().await;
        for w in &writers {
            let _ = w.finish().await;
        }
        let _ = tokio::time::timeout(FINISH_WAIT, session.ended()).await;
        session.close(Duration::from_secs(1)).await;
    } else {
        // A GOAWAY the reader queued for a broken client still goes out, and is read.
        session.close(Duration::from_secs(1)).await;
    }
    for pump in pumps {
        pump.abort();
    }
    refuse_more.abort();
}

/// Terminal sizes from the resize stream: JSON objects, one per line; zero sizes are skipped.
async fn read_resizes(mut rx: mpsc::Receiver<Bytes>, tx: mpsc::Sender<(u16, u16)>) {
    let mut pending = Vec::new();
    while let Some(data) = rx.recv().await {
        pending.extend_from_slice(&data);
        for size in take_sizes(&mut pending) {
            if tx.send(size).await.is_err() {
                return;
            }
        }
        if pending.len() > 4096 {
            // No newline in 4 KiB: not a size the client would send.
            return;
        }
    }
}

fn take_sizes(pending: &mut Vec<u8>) -> Vec<(u16, u16)> {
    let mut sizes = Vec::new();
    while let Some(end) = pending.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        if let Ok(size) = serde_json::from_slice::<TerminalSize>(&line) {
            sizes.extend(size.usable());
        }
    }
    // Go's json.Encoder ends every value with a newline; a whole value without one is
    // accepted too.
    if let Ok(size) = serde_json::from_slice::<TerminalSize>(pending) {
        pending.clear();
        sizes.extend(size.usable());
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_outcomes_are_metav1_statuses_the_go_client_parses() {
        let ok: serde_json::Value =
            serde_json::from_slice(&outcome_message(&Outcome::Exited(0), Version::V4).unwrap())
                .unwrap();
        assert_eq!(ok, json!({"metadata": {}, "status": "Success"}));
        let failed: serde_json::Value =
            serde_json::from_slice(&outcome_message(&Outcome::Exited(7), Version::V4).unwrap())
                .unwrap();
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "7");
        let broken: serde_json::Value = serde_json::from_slice(
            &outcome_message(&Outcome::Failed("no such file".into()), Version::V4).unwrap(),
        )
        .unwrap();
        assert_eq!(broken["reason"], "InternalError");
        assert_eq!(broken["code"], 500);
        assert_eq!(broken["message"], "no such file");
    }

    #[test]
    fn before_v4_only_failures_are_written_as_text() {
        assert_eq!(outcome_message(&Outcome::Exited(0), Version::V3), None);
        assert_eq!(
            outcome_message(&Outcome::Failed("boom".into()), Version::V2),
            Some(b"boom".to_vec())
        );
    }

    #[test]
    fn resize_messages_are_json_lines_and_zero_sizes_are_skipped() {
        let mut pending = br#"{"Width":80,"Height":24}
{"Width":0,"Height":0}
{"Width":120,"#
            .to_vec();
        assert_eq!(take_sizes(&mut pending), vec![(80, 24)]);
        pending.extend_from_slice(b"\"Height\":40}\n");
        assert_eq!(take_sizes(&mut pending), vec![(120, 40)]);
        assert!(pending.is_empty());
    }
}
