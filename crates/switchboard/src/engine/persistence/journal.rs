//! The journal: one thread that writes the engine's changes to the [`Store`] in the order
//! the engine made them, many per transaction.
//!
//! With [`Durability::Sync`] it commits whatever is queued as soon as the previous
//! commit returns (group commit: publishes that arrive during one fsync share the next),
//! and answers each publisher once its publication is on disk. With
//! [`Durability::Flush`] it gathers changes for up to `flush_interval` (or until half of
//! `max_pending` publications wait) and commits them together.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::{Change, Durability, PersistError, Store};
use crate::config::PersistenceConfig;

/// Most changes in one transaction, so a backlog is written in bounded steps.
const MAX_BATCH: usize = 100_000;

/// Answers a publisher waiting for its publication to be on disk.
pub type Ack = oneshot::Sender<Result<(), PersistError>>;

/// A publication's place among those accepted but not yet on disk (see
/// [`Journal::admit`]). The journal drops it, giving the place back, once it is written.
#[derive(Debug)]
pub struct Admission {
    /// Held, never read: dropping it is what gives the place back.
    _place: OwnedSemaphorePermit,
}

// Nearly every entry is a change: `Close` comes once, at shutdown, so boxing the change
// to make the two variants alike would cost every publication an allocation for nothing.
#[allow(clippy::large_enum_variant)]
enum Entry {
    Change {
        change: Change,
        ack: Option<Ack>,
        admission: Option<Admission>,
    },
    Close(oneshot::Sender<Result<(), PersistError>>),
}

/// The engine's handle on the journal thread.
#[derive(Debug)]
pub struct Journal {
    tx: Sender<Entry>,
    durability: Durability,
    /// One permit per publication that may wait for the disk: the backpressure that
    /// keeps memory bounded when the disk is slower than publishers.
    room: Arc<Semaphore>,
    /// Why writing stopped, once it did (a failed write, or the close).
    stopped: Arc<OnceLock<String>>,
}

impl Journal {
    /// Starts the journal thread over `store` (already loaded).
    ///
    /// # Errors
    /// [`PersistError::Io`] when the thread can not be started.
    pub fn start(store: Box<dyn Store>, config: &PersistenceConfig) -> Result<Self, PersistError> {
        let (tx, rx) = mpsc::channel();
        let room = Arc::new(Semaphore::new(config.max_pending));
        let stopped = Arc::new(OnceLock::new());
        let writer = Writer {
            store,
            rx,
            durability: config.durability,
            interval: config.flush_interval,
            batch_admissions: (config.max_pending / 2).max(1),
            stopped: stopped.clone(),
        };
        std::thread::Builder::new()
            .name("sb-journal".into())
            .spawn(move || writer.run())
            .map_err(|e| PersistError::Io {
                path: "journal thread".into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            tx,
            durability: config.durability,
            room,
            stopped,
        })
    }

    /// When a publication counts as written.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Why writing stopped, if it did.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.get().map(String::as_str)
    }

    /// Waits for room for one more publication that is not on disk yet.
    ///
    /// # Errors
    /// [`PersistError::Stopped`] when writing stopped: the publication must be refused.
    ///
    /// # Cancel safety
    /// Cancel-safe: no place is taken unless it returns.
    pub async fn admit(&self) -> Result<Admission, PersistError> {
        if let Some(why) = self.stopped.get() {
            return Err(PersistError::Stopped(why.clone()));
        }
        let permit = self
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PersistError::Stopped("closed".into()))?;
        Ok(Admission { _place: permit })
    }

    /// Queues a change. Never blocks: call it under the lock that ordered the change,
    /// so changes reach the disk in the order they were made.
    pub fn record(&self, change: Change) {
        self.send(Entry::Change {
            change,
            ack: None,
            admission: None,
        });
    }

    /// Queues an admitted publication's change; `ack` (if any) is answered once it is on
    /// disk. Never blocks.
    pub fn record_admitted(&self, change: Change, admission: Admission, ack: Option<Ack>) {
        self.send(Entry::Change {
            change,
            ack,
            admission: Some(admission),
        });
    }

    fn send(&self, entry: Entry) {
        // The thread is gone only after close or a panic; a dropped ack tells a waiting
        // publisher, and `stopped` tells the rest.
        if self.tx.send(entry).is_err() {
            let _ = self.stopped.set("the journal thread is gone".into());
        }
    }

    /// Writes everything queued, marks a graceful stop, and ends the thread. Changes
    /// recorded afterwards are not written.
    ///
    /// # Errors
    /// [`PersistError`] when the last writes failed.
    pub async fn close(&self) -> Result<(), PersistError> {
        let (tx, rx) = oneshot::channel();
        self.send(Entry::Close(tx));
        let result = rx
            .await
            .unwrap_or_else(|_| Err(PersistError::Stopped("the journal thread is gone".into())));
        let _ = self.stopped.set("closed".into());
        result
    }
}

struct Writer {
    store: Box<dyn Store>,
    rx: Receiver<Entry>,
    durability: Durability,
    interval: Duration,
    /// Admitted publications after which a flush commits without waiting for the interval.
    batch_admissions: usize,
    stopped: Arc<OnceLock<String>>,
}

/// One transaction's worth of entries.
#[derive(Default)]
struct Batch {
    changes: Vec<Change>,
    acks: Vec<Ack>,
    /// Places of the batch's publications, given back when it is written.
    admissions: Vec<Admission>,
    close: Option<oneshot::Sender<Result<(), PersistError>>>,
}

impl Batch {
    fn add(&mut self, entry: Entry) {
        match entry {
            Entry::Change {
                change,
                ack,
                admission,
            } => {
                self.changes.push(change);
                self.acks.extend(ack);
                self.admissions.extend(admission);
            }
            Entry::Close(done) => self.close = Some(done),
        }
    }
}

impl Writer {
    fn run(mut self) {
        let mut batch = Batch::default();
        loop {
            match self.rx.recv() {
                Ok(entry) => batch.add(entry),
                // Every handle is gone: everything recorded is in the queue, so write it
                // and stop as gracefully as a close.
                Err(_) => {
                    let (done, _) = oneshot::channel();
                    batch.close = Some(done);
                }
            }
            self.gather(&mut batch);
            self.commit(&mut batch);
            if let Some(done) = batch.close.take() {
                let result = match self.stopped.get() {
                    Some(why) => Err(PersistError::Stopped(why.clone())),
                    None => self.store.close(),
                };
                if let Err(e) = &result {
                    tracing::error!(error = %e, "persistence: the graceful stop was not recorded");
                }
                let _ = self.stopped.set("closed".into());
                // Release the file before saying so: the next opener must find it free.
                drop(self);
                let _ = done.send(result);
                return;
            }
        }
    }

    /// Adds what arrives until the batch should be written.
    fn gather(&self, batch: &mut Batch) {
        let deadline = match self.durability {
            // Whatever queued during the last commit goes into this one, no waiting.
            Durability::Sync => None,
            Durability::Flush => Some(Instant::now() + self.interval),
        };
        while batch.close.is_none()
            && batch.changes.len() < MAX_BATCH
            && batch.admissions.len() < self.batch_admissions
        {
            let next = match deadline {
                None => self.rx.try_recv().ok(),
                // A timeout ends the batch; so does a disconnect (the next recv sees it).
                Some(deadline) => self
                    .rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .ok(),
            };
            match next {
                Some(entry) => batch.add(entry),
                None => break,
            }
        }
    }

    fn commit(&mut self, batch: &mut Batch) {
        let result = match self.stopped.get() {
            Some(why) => Err(PersistError::Stopped(why.clone())),
            None if batch.changes.is_empty() => Ok(()),
            None => self.store.commit(&batch.changes),
        };
        if let Err(e) = &result {
            if self.stopped.get().is_none() {
                // The store may be half-way through a failed write (redb wants a reopen
                // after an I/O error): refuse everything until a restart, loudly.
                tracing::error!(error = %e, "persistence: write failed; publications into channels with history are refused until a restart");
                let _ = self.stopped.set(e.to_string());
            }
        }
        for ack in batch.acks.drain(..) {
            let _ = ack.send(result.clone());
        }
        batch.admissions.clear();
        batch.changes.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::engine::persistence::{Keyspace, Snapshot};

    /// A store in memory that can be told to fail: the only way to test a full disk
    /// without root.
    #[derive(Clone, Default)]
    struct Recorder {
        commits: Arc<Mutex<Vec<usize>>>,
        fail: Arc<Mutex<bool>>,
        closed: Arc<Mutex<bool>>,
    }

    impl Store for Recorder {
        fn load(&mut self, _: u64) -> Result<Snapshot, PersistError> {
            Ok(Snapshot::default())
        }
        fn commit(&mut self, changes: &[Change]) -> Result<(), PersistError> {
            if *self.fail.lock().unwrap() {
                return Err(PersistError::Io {
                    path: "x".into(),
                    reason: "No space left on device".into(),
                });
            }
            self.commits.lock().unwrap().push(changes.len());
            Ok(())
        }
        fn close(&mut self) -> Result<(), PersistError> {
            *self.closed.lock().unwrap() = true;
            Ok(())
        }
    }

    fn put(n: u8) -> Change {
        Change::Put {
            space: Keyspace::Seen,
            key: Box::new([n]),
            value: Box::new([n]),
        }
    }

    fn config(durability: Durability, max_pending: usize) -> PersistenceConfig {
        PersistenceConfig {
            dir: "unused".into(),
            durability,
            flush_interval: Duration::from_millis(50),
            max_pending,
        }
    }

    #[tokio::test]
    async fn sync_answers_after_the_commit_and_a_failure_stops_writing() {
        let store = Recorder::default();
        let journal =
            Journal::start(Box::new(store.clone()), &config(Durability::Sync, 8)).unwrap();
        let (ack, done) = oneshot::channel();
        let admission = journal.admit().await.unwrap();
        journal.record_admitted(put(1), admission, Some(ack));
        done.await.unwrap().unwrap();
        assert_eq!(store.commits.lock().unwrap().iter().sum::<usize>(), 1);

        *store.fail.lock().unwrap() = true;
        let (ack, done) = oneshot::channel();
        let admission = journal.admit().await.unwrap();
        journal.record_admitted(put(2), admission, Some(ack));
        let err = done.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        assert!(journal.stopped().is_some());
        // Refused from now on, even once the disk has room again.
        *store.fail.lock().unwrap() = false;
        assert!(journal.admit().await.is_err());
        assert!(journal.close().await.is_err());
        assert!(
            !*store.closed.lock().unwrap(),
            "a failed run is not marked clean"
        );
    }

    #[tokio::test]
    async fn flush_gathers_changes_and_close_writes_the_rest() {
        let store = Recorder::default();
        let journal =
            Journal::start(Box::new(store.clone()), &config(Durability::Flush, 1000)).unwrap();
        for n in 0..10 {
            let admission = journal.admit().await.unwrap();
            journal.record_admitted(put(n), admission, None);
        }
        journal.close().await.unwrap();
        let commits = store.commits.lock().unwrap().clone();
        assert_eq!(commits.iter().sum::<usize>(), 10);
        assert!(
            commits.len() < 10,
            "one transaction per change: {commits:?}"
        );
        assert!(*store.closed.lock().unwrap());
        assert!(journal.admit().await.is_err(), "closed");
    }

    #[tokio::test]
    async fn backpressure_waits_for_the_disk_instead_of_growing() {
        let store = Recorder::default();
        let journal =
            Journal::start(Box::new(store.clone()), &config(Durability::Flush, 2)).unwrap();
        // Two places: the third waits until the journal wrote the first ones, which it
        // does without waiting out the interval once half the places are taken.
        for n in 0..3 {
            let admission = tokio::time::timeout(Duration::from_secs(5), journal.admit())
                .await
                .expect("room comes back")
                .unwrap();
            journal.record_admitted(put(n), admission, None);
        }
        journal.close().await.unwrap();
        assert_eq!(store.commits.lock().unwrap().iter().sum::<usize>(), 3);
    }
}
