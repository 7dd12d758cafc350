//! One native-protocol connection: a writer task, a reader task, and the
//! table of requests waiting for answers (or streams receiving pushes).

use crate::Error;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use troupe_protocol::frame::{self, LENGTH_BYTES};
use troupe_protocol::{ClientFrame, Request, Response, ServerFrame};

/// Largest frame the client accepts from a node.
const MAX_FRAME: usize = 64 << 20;

/// Longest wait for a node to accept a connection (one cut off by a
/// partition never refuses it).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

enum Waiting {
    Once(oneshot::Sender<Response>),
    Stream(mpsc::UnboundedSender<Response>),
}

/// A live connection.
pub(crate) struct Connection {
    out: mpsc::UnboundedSender<Vec<u8>>,
    waiting: Arc<Mutex<HashMap<u64, Waiting>>>,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
}

impl Connection {
    pub async fn open(addr: impl ToSocketAddrs) -> Result<Self, Error> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Connection("connect timed out".into()))?
            .map_err(|e| Error::Connection(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| Error::Connection(e.to_string()))?;
        let (read, write) = stream.into_split();
        let (out, outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
        let waiting = Arc::new(Mutex::new(HashMap::new()));
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(write_frames(write, outgoing, closed.clone()));
        tokio::spawn(read_frames(read, waiting.clone(), closed.clone()));
        Ok(Self {
            out,
            waiting,
            next_id: AtomicU64::new(1),
            closed,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn send(&self, id: u64, request: Request, waiting: Waiting) -> Result<(), Error> {
        self.waiting
            .lock()
            .expect("waiting lock")
            .insert(id, waiting);
        let bytes = frame::encode_frame(&ClientFrame { id, request });
        if self.out.send(bytes).is_err() || self.is_closed() {
            self.waiting.lock().expect("waiting lock").remove(&id);
            return Err(Error::Connection("connection is closed".into()));
        }
        Ok(())
    }

    /// Sends a request and waits for its answer.
    pub async fn call(&self, request: Request) -> Result<Response, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.send(id, request, Waiting::Once(tx))?;
        rx.await
            .map_err(|_| Error::Connection("connection closed before the answer".into()))
    }

    /// Sends a request whose answers keep coming; returns its id and them.
    pub fn stream(
        &self,
        request: Request,
    ) -> Result<(u64, mpsc::UnboundedReceiver<Response>), Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.send(id, request, Waiting::Stream(tx))?;
        Ok((id, rx))
    }

    /// Sends a request that gets no answer unless it fails.
    pub fn notify(&self, request: Request) -> Result<(), Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = frame::encode_frame(&ClientFrame { id, request });
        self.out
            .send(bytes)
            .map_err(|_| Error::Connection("connection is closed".into()))
    }
}

async fn write_frames(
    write: tokio::net::tcp::OwnedWriteHalf,
    mut outgoing: mpsc::UnboundedReceiver<Vec<u8>>,
    closed: Arc<AtomicBool>,
) {
    let mut write = BufWriter::with_capacity(64 << 10, write);
    let result: std::io::Result<()> = async {
        while let Some(bytes) = outgoing.recv().await {
            write.write_all(&bytes).await?;
            while let Ok(bytes) = outgoing.try_recv() {
                write.write_all(&bytes).await?;
            }
            write.flush().await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "troupe connection write failed");
    }
    closed.store(true, Ordering::Release);
}

async fn read_frames(
    read: tokio::net::tcp::OwnedReadHalf,
    waiting: Arc<Mutex<HashMap<u64, Waiting>>>,
    closed: Arc<AtomicBool>,
) {
    // Answers arrive in bursts: one read takes many frames.
    let mut read = BufReader::with_capacity(64 << 10, read);
    let mut buf = Vec::new();
    loop {
        let mut prefix = [0u8; LENGTH_BYTES];
        if read.read_exact(&mut prefix).await.is_err() {
            break;
        }
        let Ok(len) = frame::frame_len(prefix, MAX_FRAME) else {
            break;
        };
        buf.resize(len, 0);
        if read.read_exact(&mut buf).await.is_err() {
            break;
        }
        let Ok(ServerFrame { id, response }) = frame::decode_frame(&buf) else {
            tracing::warn!("undecodable frame from the node; closing");
            break;
        };
        if id == 0 {
            tracing::warn!(?response, "the node closed the connection");
            break;
        }
        let mut table = waiting.lock().expect("waiting lock");
        match table.remove(&id) {
            Some(Waiting::Once(tx)) => {
                let _ = tx.send(response);
            }
            Some(Waiting::Stream(tx)) => {
                let ended = matches!(response, Response::Error(_));
                if tx.send(response).is_ok() && !ended {
                    table.insert(id, Waiting::Stream(tx));
                }
            }
            None => {}
        }
    }
    closed.store(true, Ordering::Release);
    // Dropping the senders fails every waiting request and stream.
    waiting.lock().expect("waiting lock").clear();
}
