//! A Haven repository on object storage (FORMAT.md): a descriptor and an append-only,
//! hash-chained log of segments.

pub mod pruned;
mod state;
pub mod sync;

use bytes::Bytes;
use haven_format::{Digest, MasterKey, SegmentBuilder, SegmentIndex, SegmentTrailer, TRAILER_LEN};
use haven_storage::{CreateOnly, ObjectInfo, StorageError, Store};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};
pub use state::{
    ChunkRef, Damage, MissingRange, PartitionKey, PartitionState, RepoState, Salvage, TopicState,
};

pub const DESCRIPTOR_KEY: &str = "haven-repo.json";
pub const LOG_PREFIX: &str = "log/";

/// The segment key of log position `seq`.
pub fn segment_key(seq: u64) -> String {
    format!("{LOG_PREFIX}{seq:020}.seg")
}

/// Parses a segment key back to its position. Only the exact name Haven writes
/// (20 digits) is a segment: `log/2.seg` or `log/0002.seg` is a stray object, never a
/// second copy of segment 2.
pub fn segment_seq(key: &str) -> Option<u64> {
    let digits = key.strip_prefix(LOG_PREFIX)?.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `haven-repo.json`: written once when the repository is created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub format: String,
    pub version: u16,
    pub id: String,
    pub created_at: String,
    /// Id of the master key new segments are encrypted with; None = not encrypted.
    pub key_id: Option<String>,
}

/// An open repository.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Store,
    key: Option<MasterKey>,
    pub descriptor: Descriptor,
    /// Recently read chunk bodies (decompressed), so that a restore's plan and run fetch
    /// each chunk once.
    cache: std::sync::Arc<std::sync::Mutex<ChunkCache>>,
}

/// (segment key, chunk ordinal)
type ChunkId = (String, u32);

/// A small LRU of decompressed chunk bodies, bounded in bytes.
#[derive(Debug, Default)]
struct ChunkCache {
    entries: std::collections::VecDeque<(ChunkId, std::sync::Arc<Vec<u8>>)>,
    bytes: usize,
}

const CHUNK_CACHE_BYTES: usize = 32 * 1024 * 1024;

impl ChunkCache {
    fn get(&mut self, k: &ChunkId) -> Option<std::sync::Arc<Vec<u8>>> {
        let i = self.entries.iter().position(|(key, _)| key == k)?;
        let e = self.entries.remove(i)?;
        let v = e.1.clone();
        self.entries.push_back(e);
        Some(v)
    }

    fn put(&mut self, k: ChunkId, v: std::sync::Arc<Vec<u8>>) {
        self.bytes += v.len();
        self.entries.push_back((k, v));
        while self.bytes > CHUNK_CACHE_BYTES {
            match self.entries.pop_front() {
                Some((_, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }
}

impl Repository {
    /// Opens an existing repository.
    pub async fn open(store: Store, key: Option<MasterKey>) -> Result<Repository> {
        let raw = match store.get(DESCRIPTOR_KEY).await {
            Ok(b) => b,
            Err(StorageError::NotFound { .. }) => {
                return Err(Error::NotARepository {
                    url: store.url().to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let descriptor: Descriptor = serde_json::from_slice(&raw).map_err(|e| {
            Error::Damaged(format!(
                "{DESCRIPTOR_KEY} in {} is not a valid descriptor ({e})",
                store.url()
            ))
        })?;
        if descriptor.format != "haven-repository"
            || descriptor.version > haven_format::FORMAT_VERSION
        {
            return Err(Error::Input(format!(
                "{DESCRIPTOR_KEY}: format {:?} version {} is not one this Haven reads (upgrade Haven)",
                descriptor.format, descriptor.version
            )));
        }
        match (&descriptor.key_id, &key) {
            (Some(id), None) => {
                return Err(Error::Key(format!(
                    "the repository {} is encrypted (key {id}): give its key with --key-file FILE or HAVEN_KEY",
                    store.url()
                )))
            }
            (Some(id), Some(k)) if k.id().0 != *id => {
                return Err(Error::Key(format!(
                    "wrong key for {}: the repository uses key {id}, the key given is {}",
                    store.url(),
                    k.id()
                )))
            }
            (None, Some(k)) => {
                return Err(Error::Key(format!(
                    "the repository {} is not encrypted (key id: none), but key {} was given \
                     (--key-file or HAVEN_KEY): a repository keeps the key it was created with; \
                     drop the key to use this one, or back up into a new repository to encrypt",
                    store.url(),
                    k.id()
                )))
            }
            _ => {}
        }
        Ok(Repository {
            cache: Default::default(),
            store,
            key,
            descriptor,
        })
    }

    /// Opens the repository, creating it first if it does not exist (encrypted when a key
    /// is given).
    pub async fn open_or_create(store: Store, key: Option<MasterKey>) -> Result<Repository> {
        if store.exists(DESCRIPTOR_KEY).await? {
            return Self::open(store, key).await;
        }
        let descriptor = Descriptor {
            format: "haven-repository".into(),
            version: haven_format::FORMAT_VERSION,
            id: format!("{:032x}", rand::random::<u128>()),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            key_id: key.as_ref().map(|k| k.id().0),
        };
        let body =
            serde_json::to_vec_pretty(&descriptor).map_err(|e| Error::Task(e.to_string()))?;
        match store.put_new(DESCRIPTOR_KEY, Bytes::from(body)).await {
            Ok(()) | Err(StorageError::AlreadyExists { .. }) => Self::open(store, key).await,
            Err(e) => Err(e.into()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn key(&self) -> Option<&MasterKey> {
        self.key.as_ref()
    }

    /// Measures what the store guarantees about create-only writes.
    pub async fn probe(&self) -> Result<CreateOnly> {
        Ok(self.store.probe_create_only().await?)
    }

    /// The segments of the log, in order.
    pub async fn segments(&self) -> Result<Vec<ObjectInfo>> {
        let mut v: Vec<ObjectInfo> = self
            .store
            .list(LOG_PREFIX)
            .await?
            .into_iter()
            .filter(|o| segment_seq(&o.key).is_some())
            .collect();
        v.sort_by_key(|o| segment_seq(&o.key));
        Ok(v)
    }

    /// Reads a segment's trailer and index with two ranged reads.
    pub async fn read_index(&self, obj: &ObjectInfo) -> Result<(SegmentIndex, Digest)> {
        if obj.size < (haven_format::HEADER_LEN + TRAILER_LEN) as u64 {
            return Err(Error::format(
                &obj.key,
                haven_format::FormatError::Truncated {
                    what: "segment",
                    needed: haven_format::HEADER_LEN + TRAILER_LEN - obj.size as usize,
                },
            ));
        }
        let t = self
            .store
            .get_range(&obj.key, obj.size - TRAILER_LEN as u64..obj.size)
            .await?;
        let trailer = SegmentTrailer::decode(&t).map_err(|e| Error::format(&obj.key, e))?;
        let range = trailer
            .index_range(obj.size)
            .map_err(|e| Error::format(&obj.key, e))?;
        let ix = self.store.get_range(&obj.key, range).await?;
        let index = SegmentIndex::decode(&ix, &trailer).map_err(|e| Error::format(&obj.key, e))?;
        if segment_seq(&obj.key) != Some(index.seq) {
            return Err(Error::format(
                &obj.key,
                haven_format::FormatError::invalid_public(
                    "segment",
                    format!("holds sequence {} under another name", index.seq),
                ),
            ));
        }
        Ok((index, trailer.digest))
    }

    /// Builds the catalog of the whole log.
    pub async fn load_state(&self) -> Result<RepoState> {
        let mut st = RepoState::default();
        let pruned = pruned::load(self).await?;
        for place in pruned::places(self.segments().await?, &pruned) {
            match place {
                pruned::Place::Stored(obj) => {
                    let (ix, digest) = self.read_index(&obj).await?;
                    st.apply(&obj.key, &ix, digest);
                }
                pruned::Place::Pruned(p) => st.apply_pruned(p)?,
            }
        }
        Ok(st)
    }

    /// Builds the catalog for a reader: a damaged log is refused (exit 1, naming the first
    /// problem), unless `skip_damaged`, which leaves out unreadable segments and ranges held
    /// twice and keeps the rest; [`RepoState::damage`] and [`RepoState::missing_ranges`] then
    /// say exactly what was left out.
    pub async fn load_state_for_reading(&self, skip_damaged: bool) -> Result<RepoState> {
        if !skip_damaged {
            let st = self.load_state().await?;
            st.ensure_intact()?;
            return Ok(st);
        }
        let mut st = RepoState {
            salvage: Some(Default::default()),
            ..Default::default()
        };
        let pruned = pruned::load(self).await?;
        for place in pruned::places(self.segments().await?, &pruned) {
            let obj = match place {
                pruned::Place::Stored(obj) => obj,
                pruned::Place::Pruned(p) => {
                    st.apply_pruned(p)?;
                    continue;
                }
            };
            match self.read_index(&obj).await {
                Ok((ix, digest)) => st.apply(&obj.key, &ix, digest),
                Err(Error::Format { key, source }) => {
                    if let Some(s) = st.salvage.as_mut() {
                        s.skipped_objects.push((key, source.to_string()));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(st)
    }

    /// Brings a catalog up to date with segments appended after its head.
    pub async fn refresh_state(&self, st: &mut RepoState) -> Result<()> {
        let after = st.head.map_or(0, |(s, _)| s);
        let stored: Vec<ObjectInfo> = self
            .segments()
            .await?
            .into_iter()
            .filter(|o| segment_seq(&o.key).is_some_and(|s| s > after))
            .collect();
        // Manifests only matter past the head (a prune never touches the last segment);
        // the common case lists `prune/` once and reads nothing.
        let mut pruned = pruned::load(self).await?;
        pruned.retain(|s, _| *s > after);
        for place in pruned::places(stored, &pruned) {
            match place {
                pruned::Place::Stored(obj) => {
                    let (ix, digest) = self.read_index(&obj).await?;
                    st.apply(&obj.key, &ix, digest);
                }
                pruned::Place::Pruned(p) => st.apply_pruned(p)?,
            }
        }
        Ok(())
    }

    /// Starts the next segment of the log after `head`.
    pub fn new_segment(&self, head: Option<(u64, Digest)>, writer: &str) -> SegmentBuilder {
        let seq = head.map_or(1, |(s, _)| s + 1);
        SegmentBuilder::new(
            seq,
            chrono::Utc::now().timestamp_millis(),
            writer,
            head.map(|(_, d)| d),
            self.key.as_ref(),
        )
    }

    /// Writes a finished segment with a create-only put. Fails with [`Error::Concurrent`] if
    /// another writer took that position first.
    pub async fn append(&self, bytes: Vec<u8>, index: &SegmentIndex) -> Result<String> {
        let key = segment_key(index.seq);
        match self.store.put_new(&key, Bytes::from(bytes)).await {
            Ok(()) => Ok(key),
            Err(StorageError::AlreadyExists { .. }) => Err(Error::Concurrent {
                seq: index.seq,
                detail: "reloading the log and retrying".into(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Finishes `segment`, appends it to the log and applies it to `state`. Returns its key
    /// and size; [`Error::Concurrent`] if another writer took its position.
    pub async fn commit_segment(
        &self,
        state: &mut RepoState,
        segment: SegmentBuilder,
    ) -> Result<(String, u64)> {
        let (bytes, index, digest) = segment.finish();
        let len = bytes.len() as u64;
        let key = self.append(bytes, &index).await?;
        state.apply(&key, &index, digest);
        Ok((key, len))
    }

    /// Reads and decodes one chunk (one ranged read).
    pub async fn read_chunk(&self, chunk: &ChunkRef) -> Result<Vec<haven_format::Record>> {
        let body = self.chunk_body(chunk).await?;
        let mut out = Vec::with_capacity(chunk.meta.record_count.min(1 << 20) as usize);
        haven_format::visit_chunk(&body, |r| {
            out.push(r.to_owned());
            Ok(())
        })
        .map_err(|e| Error::format(&chunk.key, e))?;
        Ok(out)
    }

    /// The decompressed body of a chunk (checked: CRC, authentication, what the index says),
    /// from the cache or with one ranged read. Decode it with `haven_format::visit_chunk`.
    pub async fn chunk_body(&self, chunk: &ChunkRef) -> Result<std::sync::Arc<Vec<u8>>> {
        let ck = (chunk.key.clone(), chunk.meta.ordinal);
        if let Some(b) = self.cache.lock().ok().and_then(|mut c| c.get(&ck)) {
            return Ok(b);
        }
        let m = &chunk.meta;
        let bytes = self
            .store
            .get_range(&chunk.key, m.byte_offset..m.byte_offset + m.byte_len)
            .await?;
        let dk = match &chunk.wrapped_key {
            None => None,
            Some(w) => {
                let k = self.key.as_ref().ok_or_else(|| {
                    Error::Key(format!(
                        "{} is encrypted: give the repository key",
                        chunk.key
                    ))
                })?;
                Some(k.unwrap_key(w).map_err(|e| Error::format(&chunk.key, e))?)
            }
        };
        let body = haven_format::open_stored_chunk(
            chunk.seq,
            chunk.wrapped_key.is_some(),
            m,
            &bytes,
            dk.as_ref(),
        )
        .map_err(|e| Error::format(&chunk.key, e))?;
        let body = std::sync::Arc::new(body);
        if let Ok(mut c) = self.cache.lock() {
            c.put(ck, body.clone());
        }
        Ok(body)
    }

    /// Reads a whole segment into memory and checks it (digest, index, chunk CRCs).
    pub async fn read_segment(&self, key: &str) -> Result<(Vec<u8>, SegmentIndex, Digest)> {
        let bytes = self.store.get(key).await?.to_vec();
        let (ix, d) = haven_format::verify_object(&bytes).map_err(|e| Error::format(key, e))?;
        Ok((bytes, ix, d))
    }
}

/// Opens (or, with `create`, creates) the repository a config section describes, with its
/// key file unless `key_file` overrides it. A local directory that does not exist is "not a
/// repository", never created by a reader.
pub async fn open_configured(
    section: &crate::config::RepositorySection,
    key_file: Option<&std::path::Path>,
    create: bool,
) -> Result<Repository> {
    if !create {
        if let Some(dir) = haven_storage::local_path(&section.url) {
            if !dir.exists() {
                return Err(Error::NotARepository {
                    url: section.url.clone(),
                });
            }
        }
    }
    let store = store_of(section)?;
    let key = crate::load_key(key_file.or(section.key_file.as_deref()))?;
    if create {
        Repository::open_or_create(store, key).await
    } else {
        Repository::open(store, key).await
    }
}

/// The store a config section names, with its options (nothing is read or created).
pub fn store_of(section: &crate::config::RepositorySection) -> Result<Store> {
    let mut secrets = Vec::new();
    for (k, r) in &section.secret_options {
        secrets.push((
            k,
            crate::secrets::resolve(&format!("secret_options.{k}"), r)?,
        ));
    }
    let options: Vec<(&str, &str)> = section
        .options
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect();
    Store::open_with(&section.url, &options)
        .map_err(|e| Error::Input(format!("repository {}: {e}", section.url)))
}
