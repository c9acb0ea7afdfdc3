//! MONITOR through keygate: a connection of the client's own to each primary, each in MONITOR
//! mode, their lines merged into one feed for the client.
//!
//! Redis's lines name the connection that sent each command, which for commands sent through
//! keygate is keygate's backend connection, not the client (keygate's own CLIENT LIST tells
//! which client is which). Each connection counts against
//! `subscriber_connections_per_server`, like a subscriber's. When the client does not read, the
//! tasks stop reading and Redis buffers the rest, as it would for a slow MONITOR client of its
//! own; when a connection breaks, the feed ends with its error and the client is disconnected.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::task::JoinHandle;

use super::connection::Dedicated;
use super::{Flavor, Options};
use crate::error::Error;

/// Lines waiting for the client before the tasks stop reading.
const FEED: usize = 1024;

/// A client's MONITOR: the merged feed, and the tasks behind it (stopped when dropped).
pub struct Monitor {
    pub feed: mpsc::Receiver<Result<Bytes, Error>>,
    tasks: Vec<JoinHandle<()>>,
    sender: mpsc::Sender<Result<Bytes, Error>>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Default for Monitor {
    fn default() -> Self {
        let (sender, feed) = mpsc::channel(FEED);
        Monitor {
            feed,
            tasks: Vec::new(),
            sender,
        }
    }
}

impl Monitor {
    /// Start monitoring one server; `ready` says whether it accepted MONITOR.
    pub(super) fn add(
        &mut self,
        addr: Arc<str>,
        opts: Arc<Options>,
        permit: OwnedSemaphorePermit,
        ready: oneshot::Sender<Result<(), Error>>,
    ) {
        let feed = self.sender.clone();
        self.tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let started = async {
                let mut conn = Dedicated::open(&addr, &opts, Flavor::default()).await?;
                let reply = conn.call(&[Bytes::from_static(b"MONITOR")]).await?;
                if &reply[..] != b"+OK\r\n" {
                    let text = String::from_utf8_lossy(&reply).trim_end().to_string();
                    return Err(Error::BackendLost {
                        addr: addr.clone(),
                        reason: format!("MONITOR refused: {text}").into(),
                    });
                }
                Ok(conn)
            };
            let mut conn = match started.await {
                Ok(conn) => {
                    let _ = ready.send(Ok(()));
                    conn
                }
                Err(e) => {
                    // The client gets the error as MONITOR's reply, then is disconnected: a
                    // MONITOR missing a server's commands must not look like a working one.
                    let _ = ready.send(Err(e.clone()));
                    let _ = feed.send(Err(e)).await;
                    return;
                }
            };
            loop {
                let line = conn.next_frame().await;
                let failed = line.is_err();
                if feed.send(line).await.is_err() || failed {
                    return;
                }
            }
        }));
    }
}
