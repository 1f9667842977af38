//! The Fluentd forward protocol (v1) on `logs.forward_listen` (TCP, and UDP on the same port
//! for Fluentd's heartbeat): what fluent-logger, Docker's fluentd log driver, Fluentd's and
//! Fluent Bit's `forward` outputs send.
//!
//! Pipeline of a connection: read into a buffer bounded by the frame limit → find the end of
//! each frame ([`scan`]) → decode and normalise it ([`decode`]) → write the records through
//! the [`LogSink`] on a blocking thread → answer `{"ack": chunk}` when the frame asked for it.
//! The connection reads nothing more until the write returned, and writes in flight are
//! capped for all connections together, so a slow store stops the readers (TCP
//! backpressure) instead of filling memory.
//!
//! Not supported: the `shared_key` handshake (HELO/PING/PONG) and TLS; a client configured
//! with a `<security>` section waits for a HELO that never comes.

pub mod decode;
pub mod scan;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use vigil_model::{LogSink, LogSinkError, Telemetry};

pub use decode::{decode_frame, DecodeLimits, DecodedFrame, FrameError};
use scan::{ScanError, ValueScanner};

use crate::sources::json_logs::now_ns;

const PROTOCOL: &str = "forward";
/// What Fluentd's in_forward answers to a UDP heartbeat.
const HEARTBEAT_REPLY: &[u8] = b"\0";
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 << 10;

/// Limits of the forward listener.
#[derive(Clone, Debug)]
pub struct ForwardOptions {
    /// A frame longer than this closes the connection (Fluentd's default chunk limit is 8 MiB;
    /// Fluent Bit's chunks are about 2 MiB). It also bounds each connection's buffer.
    pub max_frame_bytes: usize,
    /// Connections open at once; more are closed at once and counted.
    pub max_connections: usize,
    /// Frame writes waiting on the store at once, for all connections.
    pub max_pending_writes: usize,
    /// Entry size, decompression and normalisation limits.
    pub decode: DecodeLimits,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        ForwardOptions {
            max_frame_bytes: 16 << 20,
            max_connections: 256,
            max_pending_writes: 16,
            decode: DecodeLimits::default(),
        }
    }
}

/// Binds the TCP listener and the UDP heartbeat socket on `address`.
///
/// # Errors
/// When either cannot be bound.
pub async fn bind(address: SocketAddr) -> std::io::Result<(TcpListener, UdpSocket)> {
    let listener = TcpListener::bind(address).await?;
    // The same port as the TCP listener, as Fluentd's in_forward does (also for port 0).
    let heartbeat = UdpSocket::bind(listener.local_addr()?).await?;
    Ok((listener, heartbeat))
}

/// Serves forward connections and heartbeats until `shutdown`.
pub async fn run(
    listener: TcpListener,
    heartbeat: UdpSocket,
    sink: Arc<dyn LogSink>,
    telemetry: Telemetry,
    options: ForwardOptions,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared {
        sink,
        telemetry,
        write_permits: Semaphore::new(options.max_pending_writes.max(1)),
        options,
    });
    let connections = Arc::new(Semaphore::new(shared.options.max_connections.max(1)));
    let heartbeats = tokio::spawn(answer_heartbeats(heartbeat, shutdown.clone()));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, source = PROTOCOL, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            shared
                .telemetry
                .ingest_rejected(PROTOCOL, "too_many_connections")
                .inc();
            tracing::warn!(%peer, source = PROTOCOL, "connection limit reached; closing the new connection");
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, &shared, shutdown).await;
        });
    }
    heartbeats.abort();
}

struct Shared {
    sink: Arc<dyn LogSink>,
    telemetry: Telemetry,
    write_permits: Semaphore,
    options: ForwardOptions,
}

/// Answers every UDP datagram (Fluentd's `heartbeat_type udp`) with the heartbeat reply.
async fn answer_heartbeats(socket: UdpSocket, shutdown: CancellationToken) {
    let mut datagram = [0u8; 128];
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut datagram) => received,
        };
        if let Ok((_, peer)) = received {
            let _ = socket.send_to(HEARTBEAT_REPLY, peer).await;
        }
    }
}

/// Reads frames until the peer closes, garbage arrives or Vigil shuts down. A connection
/// that closes with nothing sent is a TCP heartbeat and counts nothing.
async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    shutdown: CancellationToken,
) {
    let mut buffer = BytesMut::new();
    let mut scanner = ValueScanner::new(shared.options.max_frame_bytes);
    loop {
        loop {
            match scanner.scan(&buffer) {
                Ok(Some(frame_length)) => {
                    let frame = buffer.split_to(frame_length).freeze();
                    scanner.reset();
                    if let Err(reason) = handle_frame(&mut stream, frame, shared).await {
                        tracing::warn!(%peer, source = PROTOCOL, reason, "closing the connection");
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    let reason = match error {
                        ScanError::TooLarge { .. } => "frame_too_large",
                        ScanError::InvalidMarker { .. } => "malformed_frame",
                    };
                    shared.telemetry.ingest_rejected(PROTOCOL, reason).inc();
                    tracing::warn!(%peer, %error, source = PROTOCOL, "unreadable frame; closing the connection");
                    return;
                }
            }
        }
        buffer.reserve(READ_CHUNK);
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            read = stream.read_buf(&mut buffer) => read,
        };
        match read {
            Ok(0) => {
                if !buffer.is_empty() {
                    shared
                        .telemetry
                        .ingest_rejected(PROTOCOL, "truncated_frame")
                        .inc();
                    tracing::warn!(%peer, bytes = buffer.len(), source = PROTOCOL, "connection closed inside a frame");
                }
                return;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%peer, %error, source = PROTOCOL, "read failed");
                return;
            }
        }
    }
}

/// Decodes, stores and acknowledges one frame. `Err` (with a reason) closes the connection:
/// the records were not stored, and a client waiting for an ack sends them again.
async fn handle_frame(
    stream: &mut TcpStream,
    frame: bytes::Bytes,
    shared: &Shared,
) -> Result<(), &'static str> {
    // Wait here, reading nothing more, while the store is busy with other connections' writes.
    let _permit = shared
        .write_permits
        .acquire()
        .await
        .map_err(|_| "shutting down")?;
    let limits = shared.options.decode.clone();
    let sink = shared.sink.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut decoded = decode_frame(&frame, now_ns(), &limits)?;
        let entry_count = decoded.entry_count();
        let records = std::mem::take(&mut decoded.records);
        let stored_count = records.len() as u64;
        let written = if records.is_empty() {
            Ok(())
        } else {
            sink.write(records)
        };
        Ok::<_, FrameError>((decoded, entry_count, stored_count, written))
    })
    .await
    .map_err(|_| "decode task failed")?;
    let (decoded, entry_count, stored_count, written) = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            shared
                .telemetry
                .ingest_rejected(PROTOCOL, error.reason())
                .inc();
            tracing::warn!(%error, source = PROTOCOL, "dropping a malformed frame");
            return Ok(());
        }
    };
    let telemetry = &shared.telemetry;
    telemetry.ingest_received(PROTOCOL).add(entry_count);
    for (reason, count) in &decoded.rejected_by_reason {
        telemetry.ingest_rejected(PROTOCOL, reason).add(*count);
    }
    if !decoded.rejected_by_reason.is_empty() {
        tracing::warn!(
            tag = %decoded.tag,
            rejected = entry_count - stored_count,
            source = PROTOCOL,
            "refused entries of a frame"
        );
    }
    match written {
        Ok(()) => {}
        Err(LogSinkError::Overloaded) => {
            telemetry
                .ingest_dropped(PROTOCOL, "overloaded")
                .add(stored_count);
            return Err("log store overloaded");
        }
        Err(LogSinkError::Storage(message)) => {
            telemetry
                .ingest_dropped(PROTOCOL, "storage_error")
                .add(stored_count);
            tracing::error!(error = %message, source = PROTOCOL, "log store write failed");
            return Err("log store write failed");
        }
    }
    if let Some(chunk) = decoded.chunk {
        stream
            .write_all(&ack_response(&chunk))
            .await
            .map_err(|_| "ack write failed")?;
    }
    Ok(())
}

/// Returns `{"ack": chunk}` as MessagePack.
pub fn ack_response(chunk: &str) -> Vec<u8> {
    let answer = rmpv::Value::Map(vec![(rmpv::Value::from("ack"), rmpv::Value::from(chunk))]);
    let mut bytes = Vec::with_capacity(chunk.len() + 8);
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut bytes, &answer);
    bytes
}

#[cfg(test)]
mod tests;
