//! A feed: a connection of one client's own to each primary, set up with one command after
//! which the server pushes frames on its own, every frame merged into one stream for the client.
//! MONITOR (the server's lines for each command it runs) and CLIENT TRACKING (invalidation push
//! messages, with BCAST) are feeds.
//!
//! Each connection counts against `subscriber_connections_per_server`, like a subscriber's. When
//! the client does not read, the tasks stop reading and the server buffers the rest, as it would
//! for a slow client of its own; when a connection breaks, or a server refuses the setup
//! command, the feed ends with the error and the client is disconnected: a feed missing a
//! server's frames must never pass for a working one.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::task::JoinHandle;

use super::connection::Dedicated;
use super::{Flavor, Options};
use crate::error::Error;

/// Frames waiting for the client before the tasks stop reading.
const FEED: usize = 1024;

/// A client's feed: the merged frames, and the tasks behind them (stopped when dropped).
pub struct Feed {
    pub feed: mpsc::Receiver<Result<Bytes, Error>>,
    tasks: Vec<JoinHandle<()>>,
    sender: mpsc::Sender<Result<Bytes, Error>>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Default for Feed {
    fn default() -> Self {
        let (sender, feed) = mpsc::channel(FEED);
        Feed {
            feed,
            tasks: Vec::new(),
            sender,
        }
    }
}

impl Feed {
    /// Add one server: a connection of `flavor` sent `setup`, which must answer `+OK`; `ready`
    /// says whether it did.
    pub(super) fn add(
        &mut self,
        addr: Arc<str>,
        opts: Arc<Options>,
        flavor: Flavor,
        setup: Vec<Bytes>,
        permit: OwnedSemaphorePermit,
        ready: oneshot::Sender<Result<(), Error>>,
    ) {
        let feed = self.sender.clone();
        self.tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let started = async {
                let mut conn = Dedicated::open(&addr, &opts, flavor).await?;
                let reply = conn.call(&setup).await?;
                if &reply[..] != b"+OK\r\n" {
                    let text = String::from_utf8_lossy(&reply).trim_end().to_string();
                    let command = String::from_utf8_lossy(&setup[0]).to_ascii_uppercase();
                    return Err(Error::BackendLost {
                        addr: addr.clone(),
                        reason: format!("{command} refused: {text}").into(),
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
                    // The client gets the error as the command's reply, then is disconnected.
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
