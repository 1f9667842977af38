//! StatsD sockets: a UDP receive thread (large socket buffer, `recvmmsg` batches on Linux) and
//! a TCP acceptor, both handing batches of datagrams to the parser workers through bounded
//! queues. The receive loop never parses: when every queue is full it drops the batch and
//! counts its lines, so the kernel buffer keeps draining.
//!
//! The receive thread allocates nothing per batch: `recvmmsg` writes into one fixed buffer of
//! 64 KiB slots (so no datagram is ever cut), and each batch's datagrams are copied back to
//! back into a [`ReceiveChunks`] chunk of 256 KiB that the batches carved from it share. Once
//! the parsers have dropped every batch of a chunk, the receive thread writes into it again.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use vigil_model::telemetry::Counter;

use super::parser;

/// Socket receive buffer Vigil asks for; the kernel may grant less (see `net.core.rmem_max`).
pub const UDP_RECEIVE_BUFFER_BYTES: usize = 32 << 20;
/// Datagrams read by one `recvmmsg` call, and the most in one batch.
const DATAGRAMS_PER_BATCH: usize = 64;
/// The largest UDP payload.
const MAX_DATAGRAM_BYTES: usize = 65_536;
/// A TCP line longer than this is dropped.
const MAX_TCP_LINE_BYTES: usize = 64 * 1024;
/// After a receive that found fewer than half a batch queued, the receive thread pauses this
/// long so the next call takes more datagrams at once: at a few hundred thousand datagrams a
/// second, a thread that wakes for every few datagrams spends more on waking (and on waking a
/// parser for each small batch) than on receiving. The socket buffer holds what arrives
/// meanwhile (at 250,000 datagrams/s about 50 datagrams, ~120 KiB with the kernel's overhead,
/// within even Linux's default 208 KiB); a full batch never pauses, so a backlog is read at
/// full speed.
const COALESCE_PAUSE: Duration = Duration::from_micros(200);
/// How often a blocked receive wakes up to check for shutdown.
const RECEIVE_TIMEOUT: Duration = Duration::from_millis(100);
/// Bytes of one receive chunk, shared by the batches copied into it (a batch of 64 datagrams
/// of 1,400 bytes takes 88 KiB). A batch larger than a chunk gets a buffer of its own.
const RECEIVE_CHUNK_BYTES: usize = 256 << 10;
/// A chunk no batch holds any more is freed once it has not been written for this long
/// (longer than a flush interval, so the chunks a flush's backlog needs are kept).
const IDLE_CHUNK_LIFETIME: Duration = Duration::from_secs(30);

/// Datagrams (or chunks of complete TCP lines) packed in one buffer.
#[derive(Debug, Default)]
pub struct DatagramBatch {
    /// The datagrams, back to back (for UDP, a slice of a receive chunk shared with other
    /// batches; the chunk is reused once every batch of it is dropped).
    pub bytes: Bytes,
    /// End offset of each datagram in `bytes`.
    pub ends: Vec<usize>,
    /// Orders batches (for gauge sets across workers).
    pub sequence: u64,
}

impl DatagramBatch {
    /// Returns a batch holding copies of `datagrams`, in order.
    pub fn from_datagrams<'a>(datagrams: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for datagram in datagrams {
            bytes.extend_from_slice(datagram);
            ends.push(bytes.len());
        }
        DatagramBatch {
            bytes: Bytes::from(bytes),
            ends,
            sequence: 0,
        }
    }

    /// Returns the datagrams in order.
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |end| {
            let datagram = self.bytes.get(start..*end).unwrap_or_default();
            start = *end;
            datagram
        })
    }

    fn line_count(&self) -> u64 {
        line_count(self.datagrams())
    }
}

/// Counts the lines of `datagrams` (what a dropped batch costs).
fn line_count<'a>(datagrams: impl Iterator<Item = &'a [u8]>) -> u64 {
    datagrams
        .map(|datagram| parser::lines(datagram).count() as u64)
        .sum()
}

/// The memory the UDP receive thread copies datagrams into: chunks of [`RECEIVE_CHUNK_BYTES`],
/// each shared by the batches carved from it. A chunk none of whose batches is still queued
/// or being parsed is written again, so the steady state allocates nothing; the chunks alive
/// are capped, which bounds memory even when a worker holds one small batch of each chunk.
struct ReceiveChunks {
    /// The chunk being filled (its unwritten tail; empty before the first batch).
    current: BytesMut,
    /// Filled chunks with the time each was filled, oldest first; each is still shared with
    /// queued batches or idle.
    full: VecDeque<(BytesMut, Instant)>,
    /// The most chunks alive at once (`current` plus `full`).
    max_chunks: usize,
}

impl ReceiveChunks {
    /// Returns an empty set that keeps at most `max_chunks` chunks alive.
    fn new(max_chunks: usize) -> Self {
        ReceiveChunks {
            current: BytesMut::new(),
            full: VecDeque::new(),
            max_chunks: max_chunks.max(2),
        }
    }

    /// Returns the chunks that can hold `queued_bytes` of queued batches plus the unused
    /// tails of chunks and the one being filled.
    fn chunks_for_budget(queued_bytes: usize) -> usize {
        queued_bytes.div_ceil(RECEIVE_CHUNK_BYTES) * 3 / 2 + 2
    }

    /// Copies `datagrams` (`total_bytes` together) back to back into one batch; `None` when
    /// every chunk alive is still held by queued batches and no more may be made.
    fn pack<'a>(
        &mut self,
        datagrams: impl ExactSizeIterator<Item = &'a [u8]>,
        total_bytes: usize,
    ) -> Option<DatagramBatch> {
        let mut own_buffer;
        let target = if total_bytes > RECEIVE_CHUNK_BYTES {
            // Larger than a chunk (several datagrams near 64 KiB): a buffer of its own, freed
            // once parsed; its bytes count against the queue budget like any batch.
            own_buffer = BytesMut::with_capacity(total_bytes);
            &mut own_buffer
        } else {
            if self.current.capacity() < total_bytes && !self.next_chunk(Instant::now()) {
                return None;
            }
            &mut self.current
        };
        debug_assert!(target.is_empty() && target.capacity() >= total_bytes);
        let mut ends = Vec::with_capacity(datagrams.len());
        for datagram in datagrams {
            target.extend_from_slice(datagram);
            ends.push(target.len());
        }
        Some(DatagramBatch {
            bytes: target.split().freeze(),
            ends,
            sequence: 0,
        })
    }

    /// Makes a chunk with room for a whole batch current: the newest filled chunk none of
    /// whose batches is alive (the likeliest to be in the caches), else a new one. Returns
    /// false when none is free and `max_chunks` are alive.
    fn next_chunk(&mut self, now: Instant) -> bool {
        let used = std::mem::take(&mut self.current);
        if used.capacity() > 0 {
            self.full.push_back((used, now));
        }
        self.release_idle(now);
        // `try_reclaim` succeeds only when no batch shares the chunk any more; it then makes
        // the whole chunk writable again without allocating.
        let free = self
            .full
            .iter_mut()
            .rposition(|(chunk, _)| chunk.try_reclaim(RECEIVE_CHUNK_BYTES));
        if let Some((chunk, _)) = free.and_then(|index| self.full.remove(index)) {
            self.current = chunk;
            return true;
        }
        if self.full.len() >= self.max_chunks {
            return false;
        }
        self.current = BytesMut::with_capacity(RECEIVE_CHUNK_BYTES);
        true
    }

    /// Frees the oldest filled chunks while no batch holds them and they have not been
    /// written for [`IDLE_CHUNK_LIFETIME`] (memory a past burst needed).
    fn release_idle(&mut self, now: Instant) {
        while let Some((chunk, filled)) = self.full.front_mut() {
            if now.saturating_duration_since(*filled) < IDLE_CHUNK_LIFETIME
                || !chunk.try_reclaim(RECEIVE_CHUNK_BYTES)
            {
                break;
            }
            self.full.pop_front();
        }
    }
}

/// Hands batches to the parser workers round-robin, skipping full queues; drops (and counts
/// the lines of) a batch only when every queue is full or the bytes waiting in them reach the
/// budget.
#[derive(Clone)]
pub struct BatchRouter {
    workers: Arc<[SyncSender<DatagramBatch>]>,
    next_worker: Arc<AtomicUsize>,
    next_sequence: Arc<AtomicU64>,
    queued_bytes: QueuedBytes,
    dropped_lines: Counter,
}

/// Bytes of datagrams waiting in the parser queues: raised by the router, lowered by a
/// worker once it has parsed a batch.
#[derive(Clone, Debug)]
pub struct QueuedBytes {
    current: Arc<AtomicUsize>,
    budget: usize,
}

impl QueuedBytes {
    /// Returns an empty account that admits up to `budget` bytes.
    pub fn new(budget: usize) -> Self {
        QueuedBytes {
            current: Arc::new(AtomicUsize::new(0)),
            budget,
        }
    }

    /// Returns the bytes waiting now.
    pub fn get(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// Records that a batch of `bytes` left the queues.
    pub fn release(&self, bytes: usize) {
        self.current.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl BatchRouter {
    /// Returns a router over the workers' queues.
    pub fn new(
        workers: Vec<SyncSender<DatagramBatch>>,
        queued_bytes: QueuedBytes,
        dropped_lines: Counter,
    ) -> Self {
        BatchRouter {
            workers: workers.into(),
            next_worker: Arc::new(AtomicUsize::new(0)),
            next_sequence: Arc::new(AtomicU64::new(1)),
            queued_bytes,
            dropped_lines,
        }
    }

    /// Offers a batch; returns it when every queue is full (or every worker has stopped).
    pub fn try_route(&self, mut batch: DatagramBatch) -> Result<(), DatagramBatch> {
        let size = batch.bytes.len();
        if self.queued_bytes.get().saturating_add(size) > self.queued_bytes.budget {
            return Err(batch);
        }
        batch.sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed);
        let first = self.next_worker.fetch_add(1, Ordering::Relaxed);
        for offset in 0..self.workers.len() {
            let Some(worker) = self.workers.get((first + offset) % self.workers.len()) else {
                continue;
            };
            // Counted before the send so the worker's release never runs ahead of it.
            self.queued_bytes.current.fetch_add(size, Ordering::Relaxed);
            match worker.try_send(batch) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(returned) | TrySendError::Disconnected(returned)) => {
                    self.queued_bytes.release(size);
                    batch = returned
                }
            }
        }
        Err(batch)
    }

    /// Offers a batch and, when every queue is full, drops it and counts its lines.
    pub fn route_or_drop(&self, batch: DatagramBatch) {
        if let Err(dropped) = self.try_route(batch) {
            self.dropped_lines.add(dropped.line_count());
        }
    }

    /// Returns the budget of bytes waiting in the queues.
    fn queued_bytes_budget(&self) -> usize {
        self.queued_bytes.budget
    }
}

/// Binds a UDP socket with a large receive buffer and a short receive timeout.
///
/// # Errors
/// The bind or socket-option error.
pub fn bind_udp(address: &str) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(address)?;
    let granted_bytes = set_receive_buffer(&socket, UDP_RECEIVE_BUFFER_BYTES);
    tracing::info!(
        granted_bytes,
        requested_bytes = UDP_RECEIVE_BUFFER_BYTES,
        source = "statsd",
        "udp receive buffer"
    );
    socket.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
    Ok(socket)
}

/// Asks for `bytes` of receive buffer: first beyond `rmem_max` (allowed to privileged
/// processes), then within it. Returns the size the kernel granted.
#[cfg(unix)]
pub fn set_receive_buffer(socket: &UdpSocket, bytes: usize) -> usize {
    use std::os::fd::AsRawFd;
    let requested = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |option: libc::c_int| {
        // SAFETY: the fd is a live socket owned by `socket`; the option value is a c_int that
        // outlives the call, and its size is passed.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&requested as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    #[cfg(target_os = "linux")]
    let forced = set(libc::SO_RCVBUFFORCE) == 0;
    #[cfg(not(target_os = "linux"))]
    let forced = false;
    if !forced {
        let _ = set(libc::SO_RCVBUF);
    }
    let mut granted: libc::c_int = 0;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `granted` and `length` are valid for writes and sized as getsockopt expects.
    let status = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut granted as *mut libc::c_int).cast(),
            &mut length,
        )
    };
    if status == 0 {
        usize::try_from(granted).unwrap_or(0)
    } else {
        0
    }
}

/// Asks for `bytes` of receive buffer (not supported on this platform; returns 0).
#[cfg(not(unix))]
pub fn set_receive_buffer(_socket: &UdpSocket, _bytes: usize) -> usize {
    0
}

/// Runs the UDP receive loop on the calling (dedicated) thread until `stop` is set.
pub fn receive_udp(socket: UdpSocket, router: BatchRouter, stop: Arc<AtomicBool>) {
    let mut receiver = MultiReceiver::new(DATAGRAMS_PER_BATCH);
    let mut chunks = ReceiveChunks::new(ReceiveChunks::chunks_for_budget(
        router.queued_bytes_budget(),
    ));
    while !stop.load(Ordering::Relaxed) {
        match receiver.receive(&socket) {
            Ok(0) => chunks.release_idle(Instant::now()),
            Ok(received) => {
                let total_bytes = receiver.datagrams().map(<[u8]>::len).sum();
                match chunks.pack(receiver.datagrams(), total_bytes) {
                    Some(batch) => router.route_or_drop(batch),
                    // Every chunk is held by queued batches: the parsers are behind.
                    None => router.dropped_lines.add(line_count(receiver.datagrams())),
                }
                if MultiReceiver::BATCHES && received < DATAGRAMS_PER_BATCH / 2 {
                    std::thread::sleep(COALESCE_PAUSE);
                }
            }
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                chunks.release_idle(Instant::now())
            }
            Err(error) => {
                tracing::warn!(%error, source = "statsd", "udp receive failed");
                std::thread::sleep(RECEIVE_TIMEOUT);
            }
        }
    }
}

/// Receives up to a batch of datagrams per system call into one fixed buffer of
/// [`MAX_DATAGRAM_BYTES`] slots, so no datagram is ever cut.
#[cfg(target_os = "linux")]
struct MultiReceiver {
    /// `slots` slots of [`MAX_DATAGRAM_BYTES`]; `iovecs` point into it.
    buffers: Vec<u8>,
    /// One iovec per slot, pointed at by `headers`; built once.
    iovecs: Vec<libc::iovec>,
    /// One header per slot; the kernel writes each `msg_len`.
    headers: Vec<libc::mmsghdr>,
    /// Datagrams the last `receive` took.
    received: usize,
}

#[cfg(target_os = "linux")]
impl MultiReceiver {
    /// One call takes every datagram queued, up to the batch size.
    const BATCHES: bool = true;

    fn new(slots: usize) -> Self {
        let mut buffers = vec![0u8; slots * MAX_DATAGRAM_BYTES];
        let base = buffers.as_mut_ptr();
        let mut iovecs: Vec<libc::iovec> = (0..slots)
            .map(|slot| libc::iovec {
                // SAFETY: slot * MAX_DATAGRAM_BYTES is within `buffers` (slots * MAX bytes).
                iov_base: unsafe { base.add(slot * MAX_DATAGRAM_BYTES) }.cast(),
                iov_len: MAX_DATAGRAM_BYTES,
            })
            .collect();
        let headers: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iovec| {
                // SAFETY: an all-zero msghdr is a valid "no name, no control data" header.
                let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
                header.msg_iov = iovec;
                header.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: header,
                    msg_len: 0,
                }
            })
            .collect();
        // The pointers above address the heap blocks of `buffers` and `iovecs`, which never
        // grow or move after this (moving the Vecs themselves does not move their blocks).
        MultiReceiver {
            buffers,
            iovecs,
            headers,
            received: 0,
        }
    }

    /// Blocks until at least one datagram arrives (or the receive timeout passes), then takes
    /// every datagram already queued, up to the batch size. Returns how many it took.
    fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        self.received = 0;
        debug_assert_eq!(self.headers.len(), self.iovecs.len());
        // SAFETY: `headers` holds `headers.len()` valid mmsghdr whose iovecs point into
        // `buffers`, all alive and not otherwise borrowed for the duration of the call.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                self.headers.len() as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received = usize::try_from(received)
            .unwrap_or(0)
            .min(self.headers.len());
        Ok(self.received)
    }

    /// Returns the datagrams the last `receive` took, in order.
    fn datagrams(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.headers
            .iter()
            .take(self.received)
            .enumerate()
            .map(|(slot, header)| {
                let length = (header.msg_len as usize).min(MAX_DATAGRAM_BYTES);
                let start = slot * MAX_DATAGRAM_BYTES;
                self.buffers.get(start..start + length).unwrap_or_default()
            })
    }
}

/// Receives one datagram per system call (platforms without `recvmmsg`).
#[cfg(not(target_os = "linux"))]
struct MultiReceiver {
    buffer: Vec<u8>,
    length: Option<usize>,
}

#[cfg(not(target_os = "linux"))]
impl MultiReceiver {
    /// One call takes one datagram: pausing would only slow the receive down.
    const BATCHES: bool = false;

    fn new(_slots: usize) -> Self {
        MultiReceiver {
            buffer: vec![0; MAX_DATAGRAM_BYTES],
            length: None,
        }
    }

    fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.length = None;
        let (length, _) = socket.recv_from(&mut self.buffer)?;
        self.length = Some(length);
        Ok(1)
    }

    fn datagrams(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.length
            .and_then(|length| self.buffer.get(..length))
            .into_iter()
    }
}

/// Accepts TCP connections until `shutdown`, one task per connection.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    router: BatchRouter,
    line_too_long: Counter,
    shutdown: CancellationToken,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(read_tcp_lines(stream, peer, router.clone(), line_too_long.clone(), shutdown.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, source = "statsd", "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// Reads newline-separated lines from one connection and hands complete lines to the
/// workers. TCP gets backpressure instead of drops: when every queue is full, the read waits.
async fn read_tcp_lines(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: BatchRouter,
    line_too_long: Counter,
    shutdown: CancellationToken,
) {
    let mut pending: Vec<u8> = Vec::with_capacity(MAX_TCP_LINE_BYTES);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            _ = shutdown.cancelled() => break,
            read = stream.read(&mut chunk) => read,
        };
        let length = match read {
            Ok(0) => break,
            Ok(length) => length,
            Err(error) => {
                tracing::debug!(%error, %peer, source = "statsd", "tcp read failed");
                break;
            }
        };
        pending.extend_from_slice(chunk.get(..length).unwrap_or_default());
        let Some(last_newline) = pending.iter().rposition(|byte| *byte == b'\n') else {
            if pending.len() > MAX_TCP_LINE_BYTES {
                line_too_long.inc();
                pending.clear();
            }
            continue;
        };
        let batch =
            DatagramBatch::from_datagrams([pending.get(..=last_newline).unwrap_or_default()]);
        pending.drain(..=last_newline);
        send_with_backpressure(&router, batch, &shutdown).await;
    }
    if !pending.is_empty() {
        let batch = DatagramBatch::from_datagrams([pending.as_slice()]);
        send_with_backpressure(&router, batch, &shutdown).await;
    }
}

async fn send_with_backpressure(
    router: &BatchRouter,
    mut batch: DatagramBatch,
    shutdown: &CancellationToken,
) {
    loop {
        match router.try_route(batch) {
            Ok(()) => return,
            Err(returned) if shutdown.is_cancelled() => {
                router.dropped_lines.add(returned.line_count());
                return;
            }
            Err(returned) => {
                batch = returned;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Packs `datagrams` as the receive loop does.
    fn pack(chunks: &mut ReceiveChunks, datagrams: &[&[u8]]) -> Option<DatagramBatch> {
        let total_bytes = datagrams.iter().map(|datagram| datagram.len()).sum();
        chunks.pack(datagrams.iter().copied(), total_bytes)
    }

    #[test]
    fn batch_keeps_datagram_boundaries() {
        let batch = DatagramBatch::from_datagrams([&b"a:1|c"[..], b"", b"b:2|c\nc:3|c"]);
        let datagrams: Vec<&[u8]> = batch.datagrams().collect();
        assert_eq!(datagrams, [&b"a:1|c"[..], b"", b"b:2|c\nc:3|c"]);
        assert_eq!(batch.line_count(), 3);
    }

    #[test]
    fn router_drops_and_counts_when_every_queue_is_full() {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let dropped = Counter::default();
        let router = BatchRouter::new(vec![sender], QueuedBytes::new(1 << 20), dropped.clone());
        router.route_or_drop(DatagramBatch::from_datagrams([&b"a:1|c\nb:1|c"[..]]));
        router.route_or_drop(DatagramBatch::from_datagrams([&b"a:1|c\nb:1|c"[..]]));
        assert_eq!(dropped.get(), 2);
        assert_eq!(receiver.try_recv().unwrap().sequence, 1);
    }

    #[test]
    fn router_drops_past_the_byte_budget() {
        let (sender, _receiver) = std::sync::mpsc::sync_channel(100);
        let dropped = Counter::default();
        let queued = QueuedBytes::new(12);
        let router = BatchRouter::new(vec![sender], queued.clone(), dropped.clone());
        router.route_or_drop(DatagramBatch::from_datagrams([&b"a:1|c\nb:1|c"[..]]));
        assert_eq!(queued.get(), 11);
        router.route_or_drop(DatagramBatch::from_datagrams([&b"c:1|c"[..]]));
        assert_eq!(dropped.get(), 1);
        queued.release(11);
        router.route_or_drop(DatagramBatch::from_datagrams([&b"c:1|c"[..]]));
        assert_eq!(dropped.get(), 1);
        assert_eq!(queued.get(), 5);
    }

    #[test]
    fn udp_socket_gets_a_large_buffer() {
        let socket = bind_udp("127.0.0.1:0").unwrap();
        let granted = set_receive_buffer(&socket, UDP_RECEIVE_BUFFER_BYTES);
        assert!(granted > 0);
    }

    #[test]
    fn multi_receiver_reads_several_datagrams() {
        let socket = bind_udp("127.0.0.1:0").unwrap();
        let address = socket.local_addr().unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for index in 0..3 {
            sender
                .send_to(format!("m:{index}|c").as_bytes(), address)
                .unwrap();
        }
        let mut receiver = MultiReceiver::new(8);
        let mut datagrams: Vec<Vec<u8>> = Vec::new();
        while datagrams.len() < 3 {
            receiver.receive(&socket).unwrap();
            datagrams.extend(receiver.datagrams().map(<[u8]>::to_vec));
        }
        assert_eq!(datagrams, [&b"m:0|c"[..], b"m:1|c", b"m:2|c"]);
    }

    /// The largest UDP payload over IPv4 reaches the parsers whole, between small datagrams,
    /// through the receive thread's fixed slots and shared chunks.
    #[test]
    fn receive_thread_delivers_a_largest_datagram_whole() {
        let socket = bind_udp("127.0.0.1:0").unwrap();
        let address = socket.local_addr().unwrap();
        let (queue, parsed) = std::sync::mpsc::sync_channel(1024);
        let dropped = Counter::default();
        let router = BatchRouter::new(vec![queue], QueuedBytes::new(64 << 20), dropped.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || receive_udp(socket, router, stop))
        };
        let largest: Vec<u8> = b"large.datagram:1|c\n"
            .iter()
            .copied()
            .cycle()
            .take(65_507)
            .collect();
        let sent: Vec<Vec<u8>> = vec![
            b"before:1|c".to_vec(),
            largest.clone(),
            b"after:1|c".to_vec(),
            largest,
        ];
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for datagram in &sent {
            sender.send_to(datagram, address).unwrap();
        }
        let mut received: Vec<Vec<u8>> = Vec::new();
        while received.len() < sent.len() {
            let batch = parsed.recv_timeout(Duration::from_secs(5)).unwrap();
            received.extend(batch.datagrams().map(<[u8]>::to_vec));
        }
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
        assert_eq!(received, sent);
        assert_eq!(dropped.get(), 0);
    }

    /// A chunk is written again only once its batches are dropped, and a batch from a reused
    /// chunk holds exactly its own datagrams.
    #[test]
    fn reused_chunk_carries_no_stale_bytes() {
        let mut chunks = ReceiveChunks::new(8);
        let filler = vec![b'a'; RECEIVE_CHUNK_BYTES - 1_000];
        let first = pack(&mut chunks, &[b"old:1|c\nold:2|c", b"old:3|c", &filler]).unwrap();
        let first_chunk = first.bytes.as_ptr();
        drop(first);
        // Does not fit in the 1,000 bytes left (less the first two datagrams): the next chunk
        // is the first one again, free now.
        let second = pack(&mut chunks, &[b"new:1|c", &vec![b'b'; 2_000]]).unwrap();
        assert_eq!(second.bytes.as_ptr(), first_chunk);
        assert_eq!(second.ends, [7, 2_007]);
        assert_eq!(second.bytes.len(), 2_007);
        let datagrams: Vec<&[u8]> = second.datagrams().collect();
        assert_eq!(datagrams[0], b"new:1|c");
        assert!(datagrams[1].iter().all(|byte| *byte == b'b'));
        assert_eq!(second.line_count(), 2);
    }

    #[test]
    fn chunk_held_by_a_queued_batch_is_not_written() {
        let mut chunks = ReceiveChunks::new(8);
        let held = pack(&mut chunks, &[&vec![b'a'; RECEIVE_CHUNK_BYTES / 2 + 1]]).unwrap();
        let next = pack(&mut chunks, &[&vec![b'b'; RECEIVE_CHUNK_BYTES / 2 + 1]]).unwrap();
        assert_ne!(held.bytes.as_ptr(), next.bytes.as_ptr());
        assert!(held.bytes.iter().all(|byte| *byte == b'a'));
        assert!(next.bytes.iter().all(|byte| *byte == b'b'));
    }

    #[test]
    fn chunks_alive_are_capped_until_a_batch_is_dropped() {
        let mut chunks = ReceiveChunks::new(2);
        let half = vec![b'a'; RECEIVE_CHUNK_BYTES / 2 + 1];
        let first = pack(&mut chunks, &[&half]).unwrap();
        let first_chunk = first.bytes.as_ptr();
        let _second = pack(&mut chunks, &[&half]).unwrap();
        assert!(pack(&mut chunks, &[&half]).is_none());
        drop(first);
        let third = pack(&mut chunks, &[&half]).unwrap();
        assert_eq!(third.bytes.as_ptr(), first_chunk);
    }

    #[test]
    fn idle_chunks_are_freed_after_their_lifetime() {
        let mut chunks = ReceiveChunks::new(64);
        let half = vec![b'a'; RECEIVE_CHUNK_BYTES / 2 + 1];
        let mut held: Vec<DatagramBatch> = (0..20)
            .map(|_| pack(&mut chunks, &[&half]).unwrap())
            .collect();
        assert_eq!(chunks.full.len(), 19);
        // The five newest stay held; the others are idle.
        let still_queued = held.split_off(15);
        drop(held);
        chunks.release_idle(Instant::now());
        assert_eq!(chunks.full.len(), 19, "idle for less than the lifetime");
        chunks.release_idle(Instant::now() + IDLE_CHUNK_LIFETIME);
        assert_eq!(
            chunks.full.len(),
            4,
            "the held ones (and the one being filled) stay"
        );
        assert!(still_queued
            .iter()
            .all(|batch| batch.bytes.iter().all(|byte| *byte == b'a')));
    }

    #[test]
    fn batch_larger_than_a_chunk_gets_its_own_buffer() {
        let mut chunks = ReceiveChunks::new(2);
        let large = vec![b'a'; 60_000];
        let datagrams: Vec<&[u8]> = (0..20).map(|_| large.as_slice()).collect();
        let batch = pack(&mut chunks, &datagrams).unwrap();
        assert_eq!(batch.bytes.len(), 1_200_000);
        assert_eq!(batch.datagrams().count(), 20);
        assert!(batch
            .datagrams()
            .all(|datagram| datagram == large.as_slice()));
        assert!(chunks.full.is_empty());
    }
}
