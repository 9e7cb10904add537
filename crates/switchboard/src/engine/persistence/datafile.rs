//! The data file: the [`Store`] on `redb`, one file `switchboard.redb` in the data
//! directory.
//!
//! Why `redb` (and not `fjall`, the other proven embedded store in pure Rust): the
//! engine's disk is a write-behind copy read only at start, written in batches by one
//! thread, so it needs atomic multi-key transactions, a durable commit that is one
//! fsync, and crash safety, not an LSM tree's write throughput. `redb` gives exactly
//! that in one file with no dependencies (copy-on-write B-trees; each commit flips
//! between two checksummed commit slots, so a torn write leaves the previous commit), where
//! `fjall` brings a journal, background flush and compaction threads and a dozen crates.
//! redb needs Rust 1.89, which the workspace already needs (`uuid`).
//!
//! Tables: `streams` (channel -> [`StreamMeta`] as JSON), `publications` (channel,
//! `0xFF`, offset big-endian -> expiry big-endian and the publication as JSON), `node`
//! (format version, whether the last run stopped gracefully), and one table per
//! [`Keyspace`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use switchboard_protocol::Publication;

use super::{Change, Keyspace, PersistError, Snapshot, Store, StoredStream, StreamMeta};

const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
const PUBLICATIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("publications");
const NODE: TableDefinition<&str, &[u8]> = TableDefinition::new("node");

/// The layout of the tables; a file with another one is refused, not misread.
const FORMAT: &[u8] = b"1";
/// redb's page cache: enough for the B-trees' upper levels while writing.
const CACHE_BYTES: usize = 16 * 1024 * 1024;
/// The file's name in the data directory.
pub const FILE_NAME: &str = "switchboard.redb";

fn space(space: Keyspace) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(space.table())
}

/// The store in one redb file.
pub struct DataFile {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for DataFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataFile")
            .field("path", &self.path)
            .finish()
    }
}

impl DataFile {
    /// Opens (or creates) the data file in `dir`, creating the directory if needed.
    ///
    /// # Errors
    /// [`PersistError::Io`] when the directory or file can not be created, opened or
    /// locked (another process uses it); [`PersistError::Corrupt`] when the file is not
    /// a data file this version can read.
    pub fn open(dir: &Path) -> Result<Self, PersistError> {
        std::fs::create_dir_all(dir).map_err(|e| PersistError::Io {
            path: dir.display().to_string(),
            reason: format!("can not create the data directory: {e}"),
        })?;
        let path = dir.join(FILE_NAME);
        // The file is read once, at start, and the engine keeps everything in memory:
        // redb's cache (1 GiB by default) would hold a second copy of the data.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| opening(&path, e.into()))?;
        let file = Self { db, path };
        file.check_format()?;
        Ok(file)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The offsets of `channel`'s publications in the file, for checks of what is on
    /// disk (expired and trimmed ones must be gone).
    ///
    /// # Errors
    /// [`PersistError::Io`] when the file can not be read.
    pub fn offsets(&self, channel: &str) -> Result<Vec<u64>, PersistError> {
        let tx = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = tx.open_table(PUBLICATIONS).map_err(|e| self.error(e))?;
        let (from, to) = (key(channel, 0), key(channel, u64::MAX));
        let mut out = Vec::new();
        for row in table
            .range(&from[..]..=&to[..])
            .map_err(|e| self.error(e))?
        {
            let (k, _) = row.map_err(|e| self.error(e))?;
            out.extend(split_key(k.value()).map(|(_, offset)| offset));
        }
        Ok(out)
    }

    fn error(&self, e: impl Into<redb::Error>) -> PersistError {
        io(&self.path, &e.into())
    }

    fn check_format(&self) -> Result<(), PersistError> {
        let tx = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut node = tx.open_table(NODE).map_err(|e| self.error(e))?;
            let format = node
                .get("format")
                .map_err(|e| self.error(e))?
                .map(|v| v.value().to_vec());
            match format {
                None => {
                    node.insert("format", FORMAT).map_err(|e| self.error(e))?;
                }
                Some(f) if f == FORMAT => {}
                Some(f) => {
                    return Err(PersistError::Corrupt {
                        path: self.path.display().to_string(),
                        reason: format!(
                            "data format {:?} is not this version's {:?}",
                            String::from_utf8_lossy(&f),
                            String::from_utf8_lossy(FORMAT)
                        ),
                    })
                }
            }
            // Every table exists from here on, so readers need not ask.
            tx.open_table(STREAMS).map_err(|e| self.error(e))?;
            tx.open_table(PUBLICATIONS).map_err(|e| self.error(e))?;
            for s in Keyspace::ALL {
                tx.open_table(space(s)).map_err(|e| self.error(e))?;
            }
        }
        tx.commit().map_err(|e| self.error(e))
    }

    fn read(&self, now_ms: u64) -> Result<(Snapshot, Vec<Vec<u8>>), PersistError> {
        let tx = self.db.begin_read().map_err(|e| self.error(e))?;
        let node = tx.open_table(NODE).map_err(|e| self.error(e))?;
        let clean = node
            .get("clean")
            .map_err(|e| self.error(e))?
            .is_some_and(|v| v.value() == b"1");
        let streams_table = tx.open_table(STREAMS).map_err(|e| self.error(e))?;
        let publications = tx.open_table(PUBLICATIONS).map_err(|e| self.error(e))?;
        let mut snapshot = Snapshot {
            clean,
            ..Snapshot::default()
        };
        // Rows to delete: expired, trimmed, undecodable or of no stream.
        let mut garbage = Vec::new();
        let mut metas = HashMap::new();
        for row in streams_table.iter().map_err(|e| self.error(e))? {
            let (channel, meta) = row.map_err(|e| self.error(e))?;
            match serde_json::from_slice::<StreamMeta>(meta.value()) {
                Ok(meta) => {
                    metas.insert(channel.value().to_owned(), meta);
                }
                Err(e) => {
                    tracing::warn!(channel = channel.value(), error = %e, "persistence: undecodable stream skipped");
                }
            }
        }
        let mut current: Option<StoredStream> = None;
        for row in publications.iter().map_err(|e| self.error(e))? {
            let (k, value) = row.map_err(|e| self.error(e))?;
            let k = k.value();
            let Some((channel, offset)) = split_key(k) else {
                garbage.push(k.to_vec());
                continue;
            };
            if current.as_ref().is_none_or(|s| &*s.channel != channel) {
                snapshot.streams.extend(current.take());
                current = metas.remove(channel).map(|meta| StoredStream {
                    channel: channel.into(),
                    meta,
                    publications: Vec::new(),
                });
            }
            let kept = match current.as_mut() {
                Some(stream) if (stream.meta.first..=stream.meta.top).contains(&offset) => {
                    match decode_publication(value.value(), offset) {
                        Some((expires_ms, publication)) if expires_ms > now_ms => {
                            stream.publications.push((publication, expires_ms));
                            true
                        }
                        _ => false,
                    }
                }
                _ => false,
            };
            if !kept {
                garbage.push(k.to_vec());
            }
        }
        snapshot.streams.extend(current);
        // Streams whose publications all expired keep their epoch and offsets.
        snapshot
            .streams
            .extend(metas.into_iter().map(|(channel, meta)| StoredStream {
                channel: channel.into(),
                meta,
                publications: Vec::new(),
            }));
        for s in Keyspace::ALL {
            let table = tx.open_table(space(s)).map_err(|e| self.error(e))?;
            let mut rows = Vec::new();
            for row in table.iter().map_err(|e| self.error(e))? {
                let (k, v) = row.map_err(|e| self.error(e))?;
                rows.push((k.value().to_vec(), v.value().to_vec()));
            }
            snapshot.records.insert(s, rows);
        }
        Ok((snapshot, garbage))
    }

    fn write(&self, changes: &[Change]) -> Result<(), redb::Error> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut streams = tx.open_table(STREAMS)?;
            let mut publications = tx.open_table(PUBLICATIONS)?;
            let mut spaces = Vec::with_capacity(Keyspace::ALL.len());
            for s in Keyspace::ALL {
                spaces.push((s, tx.open_table(space(s))?));
            }
            // A stream's state changes with every publication: write the last one of
            // the batch only, and trim below it once.
            let mut metas: HashMap<&str, &StreamMeta> = HashMap::new();
            let mut value = Vec::new();
            for change in changes {
                match change {
                    Change::Stream { channel, meta } => {
                        metas.insert(&**channel, meta);
                    }
                    Change::Publication {
                        channel,
                        publication,
                        expires_ms,
                        meta,
                    } => {
                        value.clear();
                        encode_publication(&mut value, *expires_ms, publication)?;
                        publications.insert(&key(channel, publication.offset)[..], &value[..])?;
                        metas.insert(&**channel, meta);
                    }
                    Change::Drop { channel } => {
                        metas.remove(&**channel);
                        streams.remove(&**channel)?;
                        let (from, to) = (key(channel, 0), key(channel, u64::MAX));
                        publications.retain_in(&from[..]..=&to[..], |_, _| false)?;
                    }
                    Change::Put { space, key, value } => {
                        if let Some((_, table)) = spaces.iter_mut().find(|(s, _)| s == space) {
                            table.insert(&key[..], &value[..])?;
                        }
                    }
                    Change::Delete { space, key } => {
                        if let Some((_, table)) = spaces.iter_mut().find(|(s, _)| s == space) {
                            table.remove(&key[..])?;
                        }
                    }
                }
            }
            for (channel, meta) in metas {
                value.clear();
                serde_json::to_writer(&mut value, meta).map_err(encoding)?;
                streams.insert(channel, &value[..])?;
                let (from, to) = (key(channel, 0), key(channel, meta.first));
                publications.retain_in(&from[..]..&to[..], |_, _| false)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn mark(&self, clean: bool, garbage: &[Vec<u8>]) -> Result<(), redb::Error> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut node = tx.open_table(NODE)?;
            node.insert("clean", if clean { &b"1"[..] } else { &b"0"[..] })?;
            let mut publications = tx.open_table(PUBLICATIONS)?;
            for key in garbage {
                publications.remove(&key[..])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

impl Store for DataFile {
    fn load(&mut self, now_ms: u64) -> Result<Snapshot, PersistError> {
        let (snapshot, garbage) = self.read(now_ms)?;
        // Unclean until close says otherwise: a crash from here on must be seen as one.
        self.mark(false, &garbage).map_err(|e| self.error(e))?;
        Ok(snapshot)
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), PersistError> {
        self.write(changes).map_err(|e| self.error(e))
    }

    fn close(&mut self) -> Result<(), PersistError> {
        self.mark(true, &[]).map_err(|e| self.error(e))
    }
}

/// A publication's key: the channel, `0xFF` (never in UTF-8, so one channel's keys are
/// one contiguous range), and the offset big-endian (so they sort by offset).
fn key(channel: &str, offset: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(channel.len() + 9);
    k.extend_from_slice(channel.as_bytes());
    k.push(0xFF);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

fn split_key(key: &[u8]) -> Option<(&str, u64)> {
    let split = key.len().checked_sub(9)?;
    let (channel, rest) = key.split_at(split);
    if rest[0] != 0xFF {
        return None;
    }
    let offset = u64::from_be_bytes(rest[1..].try_into().ok()?);
    Some((std::str::from_utf8(channel).ok()?, offset))
}

fn encode_publication(
    out: &mut Vec<u8>,
    expires_ms: u64,
    publication: &Publication,
) -> Result<(), redb::Error> {
    out.extend_from_slice(&expires_ms.to_be_bytes());
    serde_json::to_writer(out, &publication.stored()).map_err(encoding)
}

fn decode_publication(value: &[u8], offset: u64) -> Option<(u64, Publication)> {
    let expires_ms = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let mut publication: Publication = match serde_json::from_slice(value.get(8..)?) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(offset, error = %e, "persistence: undecodable publication skipped");
            return None;
        }
    };
    publication.offset = offset;
    Some((expires_ms, publication))
}

fn encoding(e: serde_json::Error) -> redb::Error {
    redb::Error::Io(std::io::Error::other(e))
}

fn io(path: &Path, e: &redb::Error) -> PersistError {
    PersistError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// What opening the file failed on, in words an operator can act on.
fn opening(path: &Path, e: redb::Error) -> PersistError {
    let path_text = path.display().to_string();
    match e {
        redb::Error::DatabaseAlreadyOpen => PersistError::Io {
            path: path_text,
            reason: "in use by another process (one node per data directory)".into(),
        },
        redb::Error::Corrupted(why) => PersistError::Corrupt {
            path: path_text,
            reason: format!("the data file is corrupted ({why})"),
        },
        redb::Error::UpgradeRequired(v) => PersistError::Corrupt {
            path: path_text,
            reason: format!("written by another redb file format ({v})"),
        },
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            PersistError::Corrupt {
                path: path_text,
                reason: format!("not a switchboard data file ({io})"),
            }
        }
        other => io(path, &other),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::value::RawValue;

    use super::*;

    fn publication(offset: u64, text: &str) -> Publication {
        Publication {
            data: Arc::from(RawValue::from_string(format!("\"{text}\"")).unwrap()),
            info: None,
            offset,
            tags: None,
            exclude_client: None,
        }
    }

    fn meta(top: u64, first: u64) -> StreamMeta {
        StreamMeta {
            epoch: "e1".into(),
            top,
            first,
            size: 10,
            ttl_ms: 60_000,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sb-datafile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn whom_a_publication_skips_is_kept_with_it() {
        let skipping = Publication {
            exclude_client: Some("c1".into()),
            ..publication(3, "x")
        };
        let mut value = Vec::new();
        encode_publication(&mut value, 9, &skipping).unwrap();
        let (expires, back) = decode_publication(&value, 3).unwrap();
        assert_eq!((expires, back.exclude_client.as_deref()), (9, Some("c1")));
    }

    #[test]
    fn keys_split_back_and_sort_by_channel_then_offset() {
        assert_eq!(split_key(&key("chat:1", 7)), Some(("chat:1", 7)));
        // No other channel's key falls inside one channel's range.
        let range = key("a", 0)..=key("a", u64::MAX);
        for other in ["a b", "aé", "a:1", "b", ""] {
            assert!(!range.contains(&key(other, 7)), "{other}");
        }
        assert!(key("a", 2) < key("a", 10));
        assert_eq!(split_key(b"short"), None);
    }

    #[test]
    fn streams_trims_drops_and_keyspaces_survive_a_reopen() {
        let dir = temp_dir("reopen");
        let mut file = DataFile::open(&dir).unwrap();
        let first = file.load(1000).unwrap();
        assert!(first.streams.is_empty());
        let ch: Arc<str> = "chat:1".into();
        let gone: Arc<str> = "chat:gone".into();
        let mut changes = Vec::new();
        for offset in 1..=5 {
            changes.push(Change::Publication {
                channel: ch.clone(),
                publication: publication(offset, &format!("m{offset}")),
                // The second one expires before the reopen below.
                expires_ms: if offset == 2 { 1500 } else { 10_000 },
                meta: meta(offset, 1),
            });
        }
        changes.push(Change::Publication {
            channel: gone.clone(),
            publication: publication(1, "x"),
            expires_ms: 10_000,
            meta: meta(1, 1),
        });
        changes.push(Change::Put {
            space: Keyspace::Seen,
            key: b"ann".to_vec().into(),
            value: b"v".to_vec().into(),
        });
        file.commit(&changes).unwrap();
        file.commit(&[
            // Trimmed by size: 1 goes.
            Change::Stream {
                channel: ch,
                meta: meta(5, 2),
            },
            Change::Drop { channel: gone },
        ])
        .unwrap();
        file.close().unwrap();
        drop(file);

        let mut file = DataFile::open(&dir).unwrap();
        let mut snapshot = file.load(2000).unwrap();
        assert!(snapshot.clean);
        assert_eq!(snapshot.streams.len(), 1);
        let stream = &snapshot.streams[0];
        assert_eq!(&*stream.channel, "chat:1");
        assert_eq!(stream.meta, meta(5, 2));
        let offsets: Vec<u64> = stream.publications.iter().map(|(p, _)| p.offset).collect();
        assert_eq!(offsets, vec![3, 4, 5], "1 trimmed, 2 expired");
        assert_eq!(stream.publications[0].0.data.get(), "\"m3\"");
        assert_eq!(
            snapshot.records(Keyspace::Seen),
            vec![(b"ann".to_vec(), b"v".to_vec())]
        );
        drop(file);
        // Not closed: the next start sees a crash.
        let mut file = DataFile::open(&dir).unwrap();
        assert!(!file.load(2000).unwrap().clean);
        drop(file);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn garbage_and_another_format_are_refused_with_the_path() {
        let dir = temp_dir("garbage");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE_NAME), vec![0x5a; 64 * 1024]).unwrap();
        let err = DataFile::open(&dir).unwrap_err();
        assert!(matches!(err, PersistError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(FILE_NAME), "{err}");
        std::fs::remove_file(dir.join(FILE_NAME)).unwrap();

        let file = DataFile::open(&dir).unwrap();
        let tx = file.db.begin_write().unwrap();
        tx.open_table(NODE)
            .unwrap()
            .insert("format", &b"99"[..])
            .unwrap();
        tx.commit().unwrap();
        drop(file);
        let err = DataFile::open(&dir).unwrap_err();
        assert!(err.to_string().contains("data format"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_directory_that_can_not_be_created_is_named() {
        let dir = temp_dir("notdir");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let err = DataFile::open(&file.join("data")).unwrap_err();
        assert!(err.to_string().contains("plain-file"), "{err}");
        assert!(err.to_string().contains("data directory"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
