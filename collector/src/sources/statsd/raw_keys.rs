//! The table that finds what a line's series resolved to by the raw bytes of its name section,
//! DogStatsD tags and type, without copying them into one key first.
//!
//! Open addressing with linear probing over a compact array of words (a 32-bit hash tag and an
//! entry index, at most 16 bytes per key) that stays in cache, so a known key costs one read of
//! its entry to confirm it. Both reads can be
//! prefetched for a whole datagram's lines before any of them is applied, so their cache misses
//! overlap instead of following one another.

use std::hash::{BuildHasher, Hasher};

/// Raw keys up to this length live inside the entry, so confirming a known key reads one
/// place in memory instead of two.
const INLINE_KEY_BYTES: usize = 62;

/// Separates the parts of a stored key. It never occurs in valid UTF-8, so two keys of
/// valid names and tags are equal only when their parts are.
const SEPARATOR: u8 = 0xff;

/// The parts a raw key is made of.
#[derive(Clone, Copy, Debug)]
pub struct KeyParts<'a> {
    /// The name section (name with any InfluxDB, Librato or SignalFx tags).
    pub name: &'a [u8],
    /// The DogStatsD tags.
    pub tags: &'a [u8],
    /// The type, as one byte.
    pub kind: u8,
}

impl KeyParts<'_> {
    fn stored_length(&self) -> usize {
        self.name.len() + self.tags.len() + 3
    }
}

/// A stored key: name, [`SEPARATOR`], tags, [`SEPARATOR`], type byte.
#[derive(Clone)]
enum RawKey {
    Inline {
        length: u8,
        bytes: [u8; INLINE_KEY_BYTES],
    },
    Heap(Box<[u8]>),
}

impl RawKey {
    fn new(parts: &KeyParts<'_>) -> Self {
        let mut joined = Vec::with_capacity(parts.stored_length());
        joined.extend_from_slice(parts.name);
        joined.push(SEPARATOR);
        joined.extend_from_slice(parts.tags);
        joined.push(SEPARATOR);
        joined.push(parts.kind);
        let mut bytes = [0u8; INLINE_KEY_BYTES];
        match (bytes.get_mut(..joined.len()), u8::try_from(joined.len())) {
            (Some(prefix), Ok(length)) => {
                prefix.copy_from_slice(&joined);
                RawKey::Inline { length, bytes }
            }
            _ => RawKey::Heap(joined.into_boxed_slice()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            RawKey::Inline { length, bytes } => {
                bytes.get(..usize::from(*length)).unwrap_or_default()
            }
            RawKey::Heap(bytes) => bytes,
        }
    }

    /// Compares with the parts without joining them. Keys whose name or tags hold the
    /// separator byte (invalid UTF-8, refused whichever way they split) may compare equal to
    /// another split of the same bytes.
    fn matches(&self, parts: &KeyParts<'_>) -> bool {
        let stored = self.as_bytes();
        let name_end = parts.name.len();
        let tags_end = name_end + 1 + parts.tags.len();
        stored.len() == parts.stored_length()
            && stored.get(..name_end) == Some(parts.name)
            && stored.get(name_end + 1..tags_end) == Some(parts.tags)
            && stored.get(name_end) == Some(&SEPARATOR)
            && stored.get(tags_end) == Some(&SEPARATOR)
            && stored.get(tags_end + 1) == Some(&parts.kind)
    }
}

struct Entry<V> {
    hash: u64,
    value: V,
    key: RawKey,
}

/// Raw keys and what they resolved to.
pub struct RawKeyTable<V> {
    /// `0` for an empty slot, else the hash's upper 32 bits and the entry index + 1.
    words: Vec<u64>,
    entries: Vec<Entry<V>>,
    hasher: foldhash::quality::RandomState,
}

const EMPTY: u64 = 0;
const INITIAL_WORDS: usize = 1 << 10;

impl<V: Copy> RawKeyTable<V> {
    /// Returns an empty table with a random hash seed.
    pub fn new() -> Self {
        RawKeyTable {
            words: vec![EMPTY; INITIAL_WORDS],
            entries: Vec::new(),
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    /// Returns the number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forgets every key.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.words.clear();
        self.words.resize(INITIAL_WORDS, EMPTY);
    }

    /// Returns the hash of a key's parts.
    pub fn hash(&self, parts: &KeyParts<'_>) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(parts.name);
        hasher.write_u8(SEPARATOR);
        hasher.write(parts.tags);
        hasher.write_u8(parts.kind);
        hasher.finish()
    }

    fn mask(&self) -> usize {
        self.words.len() - 1
    }

    /// Starts loading the slot where the probe for `hash` begins.
    pub fn prefetch_slot(&self, hash: u64) {
        if let Some(word) = self.words.get(hash as usize & self.mask()) {
            prefetch(word);
        }
    }

    /// Starts loading the entry the probe for `hash` will most likely confirm: the first one
    /// whose tag matches, if any (its slot should already be in cache).
    pub fn prefetch_entry(&self, hash: u64) {
        let tag = hash >> 32;
        let mask = self.mask();
        let mut slot = hash as usize & mask;
        loop {
            let Some(&word) = self.words.get(slot) else {
                return;
            };
            if word == EMPTY {
                return;
            }
            if word >> 32 == tag {
                if let Some(entry) = self.entries.get((word & u64::from(u32::MAX)) as usize - 1) {
                    prefetch_bytes(entry);
                }
                return;
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Returns what `parts` (whose hash is `hash`) resolved to.
    pub fn get(&self, hash: u64, parts: &KeyParts<'_>) -> Option<V> {
        let tag = hash >> 32;
        let mask = self.mask();
        let mut slot = hash as usize & mask;
        loop {
            let word = *self.words.get(slot)?;
            if word == EMPTY {
                return None;
            }
            if word >> 32 == tag {
                let entry = self
                    .entries
                    .get((word & u64::from(u32::MAX)) as usize - 1)?;
                if entry.key.matches(parts) {
                    return Some(entry.value);
                }
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Adds a key that is not in the table yet.
    pub fn insert(&mut self, hash: u64, parts: &KeyParts<'_>, value: V) {
        if (self.entries.len() + 1) * 2 > self.words.len() {
            self.grow();
        }
        self.entries.push(Entry {
            hash,
            value,
            key: RawKey::new(parts),
        });
        let index = self.entries.len() as u64;
        self.place(hash, index);
    }

    fn place(&mut self, hash: u64, index: u64) {
        let mask = self.mask();
        let mut slot = hash as usize & mask;
        while let Some(word) = self.words.get_mut(slot) {
            if *word == EMPTY {
                *word = (hash >> 32 << 32) | index;
                return;
            }
            slot = (slot + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let size = self.words.len() * 2;
        self.words.clear();
        self.words.resize(size, EMPTY);
        let hashes: Vec<u64> = self.entries.iter().map(|entry| entry.hash).collect();
        for (index, hash) in hashes.into_iter().enumerate() {
            self.place(hash, index as u64 + 1);
        }
    }
}

impl<V: Copy> Default for RawKeyTable<V> {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts loading the cache line of `item` into every cache level.
#[inline]
pub fn prefetch<T>(item: &T) {
    prefetch_address((item as *const T).cast());
}

/// Starts loading every cache line of `item` (its first and its last byte's).
#[inline]
pub fn prefetch_bytes<T>(item: &T) {
    let first: *const u8 = (item as *const T).cast();
    prefetch_address(first);
    prefetch_address(first.wrapping_add(std::mem::size_of::<T>().saturating_sub(1)));
}

#[inline]
fn prefetch_address(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that reads nothing and never faults, whatever the address;
    // `_mm_prefetch` needs SSE, which every x86_64 processor has.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parts<'a>(name: &'a [u8], tags: &'a [u8], kind: u8) -> KeyParts<'a> {
        KeyParts { name, tags, kind }
    }

    #[test]
    fn keys_inline_or_on_the_heap_are_found_by_their_parts() {
        let mut table = RawKeyTable::new();
        let short = parts(b"a.b", b"env:prod", b'c');
        let long_name = vec![b'x'; INLINE_KEY_BYTES + 10];
        let long = parts(&long_name, b"", b'g');
        table.insert(table.hash(&short), &short, 1u32);
        table.insert(table.hash(&long), &long, 2u32);
        assert_eq!(table.get(table.hash(&short), &short), Some(1));
        assert_eq!(table.get(table.hash(&long), &long), Some(2));
        for absent in [
            parts(b"a.b", b"env:prod", b'g'),
            parts(b"a.b", b"env:pro", b'c'),
            parts(b"a.", b"env:prod", b'c'),
            parts(b"a.benv:prod", b"", b'c'),
        ] {
            assert_eq!(table.get(table.hash(&absent), &absent), None);
            assert!(!RawKey::new(&short).matches(&absent));
        }
        table.clear();
        assert_eq!(table.len(), 0);
        assert_eq!(table.get(table.hash(&short), &short), None);
    }

    proptest! {
        #[test]
        fn the_table_answers_as_a_map_of_joined_keys(
            keys in proptest::collection::vec(("[a-c.]{0,6}", "[a-c:,]{0,5}", 0u8..3), 1..400),
        ) {
            let mut table = RawKeyTable::new();
            let mut reference = std::collections::HashMap::new();
            for (index, (name, tags, kind)) in keys.iter().enumerate() {
                let key = parts(name.as_bytes(), tags.as_bytes(), *kind);
                let hash = table.hash(&key);
                table.prefetch_slot(hash);
                table.prefetch_entry(hash);
                let joined = (name.clone(), tags.clone(), *kind);
                prop_assert_eq!(table.get(hash, &key), reference.get(&joined).copied());
                if let std::collections::hash_map::Entry::Vacant(vacant) = reference.entry(joined) {
                    table.insert(hash, &key, index);
                    vacant.insert(index);
                }
            }
            prop_assert_eq!(table.len(), reference.len());
            for ((name, tags, kind), index) in &reference {
                let key = parts(name.as_bytes(), tags.as_bytes(), *kind);
                prop_assert_eq!(table.get(table.hash(&key), &key), Some(*index));
            }
        }
    }
}
