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
use futures_util::FutureExt;
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
    syncs: Vec<mpsc::UnboundedSender<oneshot::Sender<()>>>,
}

/// A way to make sure a feed's frames that have reached keygate are in `Feed::feed`: each
/// connection's task takes every whole frame its socket already holds, passes them on, and
/// answers. CLIENT TRACKING needs it: the server sends an invalidation on the feed's connection
/// and a reply on another, and what it sent first (a key evicted to make room for a command)
/// must reach the client first.
#[derive(Clone, Default)]
pub struct FeedSync {
    syncs: Vec<mpsc::UnboundedSender<oneshot::Sender<()>>>,
}

impl FeedSync {
    /// Once every connection has passed on what it holds (or is gone).
    pub async fn sync(&self) {
        let mut answers = Vec::with_capacity(self.syncs.len());
        for sync in &self.syncs {
            let (answer, answered) = oneshot::channel();
            if sync.send(answer).is_ok() {
                answers.push(answered);
            }
        }
        for answered in answers {
            let _ = answered.await;
        }
    }
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
            syncs: Vec::new(),
        }
    }
}

impl Feed {
    /// A handle to sync the feed with (see `FeedSync`).
    pub fn syncer(&self) -> FeedSync {
        FeedSync {
            syncs: self.syncs.clone(),
        }
    }

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
        let (sync, mut syncs) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
        self.syncs.push(sync);
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
                // (`next_frame` keeps a partly read frame in the connection's buffer: dropping
                // it for a sync request loses nothing.)
                let line = tokio::select! {
                    biased;
                    Some(answer) = syncs.recv() => {
                        // Every whole frame already here, without waiting for more.
                        while let Some(line) = conn.next_frame().now_or_never() {
                            let failed = line.is_err();
                            if feed.send(line).await.is_err() || failed {
                                return;
                            }
                        }
                        let _ = answer.send(());
                        continue;
                    }
                    line = conn.next_frame() => line,
                };
                let failed = line.is_err();
                if feed.send(line).await.is_err() || failed {
                    return;
                }
            }
        }));
    }
}
