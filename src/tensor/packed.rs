//! BYTES tensor contents without one allocation per element: every element is a slice of one
//! shared buffer (`bytes::Bytes`), located by a `u32` offset table. A body of many short texts
//! used to cost ~8× its size as `Vec<Vec<u8>>` (a 24-byte header and a heap block per element);
//! here it costs its bytes plus 4 per element. Where the wire already has the elements in Triton's
//! binary layout (a 4-byte little-endian length before each), the buffer *is* the received body
//! and nothing is copied. Plain data: no I/O, nothing of the server (the fuzz crate compiles it).

use std::fmt;

use bytes::{Bytes, BytesMut};

/// Why BYTES data could not be read or built. The first two are the binary layout's own messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BytesError {
    #[error("truncated BYTES element length")]
    TruncatedLength,
    #[error("BYTES element of {0} bytes runs past the data")]
    PastEnd(usize),
    /// Offsets are `u32`: one tensor's BYTES data is at most 4 GiB (see `BytesData`).
    #[error("BYTES data of {0} bytes is more than the 4 GiB one tensor may hold")]
    TooLarge(u64),
}

/// The most bytes one tensor's BYTES data may span, offsets included (`u32::MAX`).
const LIMIT: u64 = u32::MAX as u64;

/// BYTES elements as slices of one buffer. Reads like a `[&[u8]]`: `len`, `get(i)`, `iter()`,
/// `data[i]`. Cloning and `slice` share the buffer (only the offsets are copied).
///
/// Offsets are `u32`, not `usize`, to halve the per-element overhead of short texts: the body
/// limits (`max_body_bytes`, `grpc_max_message_bytes`, 64 MiB by default) keep one request's data
/// far below 4 GiB. Anything that would cross it (a body limit raised past 4 GiB, or a batch
/// concatenated from many large requests) is refused with `BytesError::TooLarge`, never wrapped.
#[derive(Clone)]
pub struct BytesData {
    buf: Bytes,
    /// `len() + 1` boundaries: element `i` is `buf[offsets[i] + skip .. offsets[i + 1]]`.
    offsets: Vec<u32>,
    /// Bytes before each element that are not part of it: 0 when packed, 4 when the buffer is in
    /// the binary layout (each element after its length), read in place.
    skip: u32,
}

impl BytesData {
    /// No elements.
    pub fn new() -> BytesData {
        BytesData {
            buf: Bytes::new(),
            offsets: vec![0],
            skip: 0,
        }
    }

    /// `n` empty elements.
    pub fn empty_elements(n: usize) -> BytesData {
        BytesData {
            buf: Bytes::new(),
            offsets: vec![0; n + 1],
            skip: 0,
        }
    }

    /// Reads the binary layout (each element a 4-byte little-endian length and that many bytes)
    /// in place: the elements are slices of `buf`, nothing is copied. The lengths are walked
    /// twice, to size the offsets exactly (a doubling vector would briefly hold 1.5× their size).
    pub fn from_length_prefixed(buf: Bytes) -> Result<BytesData, BytesError> {
        if buf.len() as u64 > LIMIT {
            // Checked before reading: a length could otherwise point past `u32` offsets.
            return Err(BytesError::TooLarge(buf.len() as u64));
        }
        // Where the element starting at `at` ends.
        let next = |at: usize| -> Result<usize, BytesError> {
            let rest = &buf[at..];
            let Some(len) = rest.first_chunk::<4>() else {
                return Err(BytesError::TruncatedLength);
            };
            let n = u32::from_le_bytes(*len) as usize;
            if rest.len() - 4 < n {
                return Err(BytesError::PastEnd(n));
            }
            Ok(at + 4 + n)
        };
        let (mut at, mut count) = (0, 0);
        while at < buf.len() {
            at = next(at)?;
            count += 1;
        }
        let mut offsets = Vec::with_capacity(count + 1);
        offsets.push(0);
        let mut at = 0;
        while at < buf.len() {
            at = next(at)?;
            offsets.push(at as u32);
        }
        Ok(BytesData {
            buf,
            offsets,
            skip: 4,
        })
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let (a, b) = (*self.offsets.get(i)?, *self.offsets.get(i + 1)?);
        Some(&self.buf[(a + self.skip) as usize..b as usize])
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + DoubleEndedIterator + '_ {
        self.offsets
            .windows(2)
            .map(|w| &self.buf[(w[0] + self.skip) as usize..w[1] as usize])
    }

    /// The elements' bytes together (lengths and offsets not counted).
    pub fn byte_len(&self) -> usize {
        let span = (self.offsets[self.len()] - self.offsets[0]) as usize;
        span - self.skip as usize * self.len()
    }

    /// Elements `[start, end)`, sharing this buffer. Panics when out of range, as slicing does.
    pub fn slice(&self, start: usize, end: usize) -> BytesData {
        BytesData {
            buf: self.buf.clone(),
            offsets: self.offsets[start..=end].to_vec(),
            skip: self.skip,
        }
    }

    /// Appends the elements in the binary layout: one copy of the span when they are already in
    /// it, else length and bytes element by element.
    pub fn write_length_prefixed(&self, out: &mut Vec<u8>) {
        if self.skip == 4 {
            out.extend_from_slice(
                &self.buf[self.offsets[0] as usize..self.offsets[self.len()] as usize],
            );
            return;
        }
        out.reserve(self.byte_len() + 4 * self.len());
        for x in self.iter() {
            out.extend_from_slice(&(x.len() as u32).to_le_bytes());
            out.extend_from_slice(x);
        }
    }

    /// Appends `other`'s elements, or refuses (nothing changed) when together they would pass
    /// 4 GiB. The buffer is reused when this data is packed and holds the only reference to it (a
    /// concatenation in progress); otherwise this data is copied into a new one first, so
    /// concatenating k parts copies each part about once, not k times.
    pub fn extend_from(&mut self, other: &BytesData) -> Result<(), BytesError> {
        if other.is_empty() {
            return Ok(());
        }
        // The packed result's last offset; checked here so that no push below can fail.
        let total = self.byte_len() as u64 + other.byte_len() as u64;
        if total > LIMIT {
            return Err(BytesError::TooLarge(total));
        }
        let packed_alone = self.skip == 0 && self.offsets[0] == 0;
        let mut b = match std::mem::take(&mut self.buf).try_into_mut() {
            Ok(mut own) if packed_alone => {
                own.truncate(self.offsets[self.len()] as usize);
                BytesBuilder {
                    buf: own,
                    offsets: std::mem::take(&mut self.offsets),
                }
            }
            Ok(own) => self.repack(own.freeze(), other),
            Err(shared) => self.repack(shared, other),
        };
        b.buf.reserve(other.byte_len());
        b.offsets.reserve(other.len());
        for x in other.iter() {
            b.push(x)
                .expect("the total was checked against the limit. This is a bug.");
        }
        *self = b.finish();
        Ok(())
    }

    /// This data's elements copied into a new builder with room for `other`'s.
    fn repack(&mut self, buf: Bytes, other: &BytesData) -> BytesBuilder {
        self.buf = buf;
        let mut b = BytesBuilder::with_capacity(
            self.len() + other.len(),
            self.byte_len() + other.byte_len(),
        );
        for x in self.iter() {
            b.push(x)
                .expect("the total was checked against the limit. This is a bug.");
        }
        b
    }
}

impl Default for BytesData {
    fn default() -> BytesData {
        BytesData::new()
    }
}

impl std::ops::Index<usize> for BytesData {
    type Output = [u8];

    fn index(&self, i: usize) -> &[u8] {
        match self.get(i) {
            Some(x) => x,
            None => panic!("BYTES element {i} of {}", self.len()),
        }
    }
}

/// Equal when the elements are, however each side is laid out.
impl PartialEq for BytesData {
    fn eq(&self, other: &BytesData) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

/// The elements, each as text where it is UTF-8 (lossy otherwise), like a `Vec<String>`.
impl fmt::Debug for BytesData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}

/// For data of known small size (labels, test values, warm-up texts): panics past 4 GiB. Request
/// data goes through `BytesBuilder`, which refuses it instead.
impl<T: AsRef<[u8]>> FromIterator<T> for BytesData {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> BytesData {
        let items = items.into_iter();
        let mut b = BytesBuilder::with_capacity(items.size_hint().0, 0);
        for x in items {
            b.push(x.as_ref())
                .expect("BYTES data collected from small values is under 4 GiB. This is a bug.");
        }
        b.finish()
    }
}

/// Builds packed BYTES data element by element (the decoders' path): one growing buffer and the
/// offsets, nothing per element.
pub struct BytesBuilder {
    /// `BytesMut`, not `Vec`: freezing it and taking it back (`extend_from`) copies nothing.
    buf: BytesMut,
    offsets: Vec<u32>,
}

impl BytesBuilder {
    /// Room for `elements` elements of `bytes` bytes together (an estimate: it may grow).
    pub fn with_capacity(elements: usize, bytes: usize) -> BytesBuilder {
        let mut offsets = Vec::with_capacity(elements + 1);
        offsets.push(0);
        BytesBuilder {
            buf: BytesMut::with_capacity(bytes),
            offsets,
        }
    }

    /// Elements pushed so far.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one element; refused (nothing appended) when the data would pass 4 GiB.
    pub fn push(&mut self, x: &[u8]) -> Result<(), BytesError> {
        let end = self.buf.len() as u64 + x.len() as u64;
        if end > LIMIT {
            return Err(BytesError::TooLarge(end));
        }
        self.buf.extend_from_slice(x);
        self.offsets.push(end as u32);
        Ok(())
    }

    pub fn finish(self) -> BytesData {
        BytesData {
            buf: self.buf.freeze(),
            offsets: self.offsets,
            skip: 0,
        }
    }
}

/// BYTES data whose every element is UTF-8, read as `&str`: the texts of an embedding request,
/// checked once when built.
#[derive(Clone, Default, PartialEq)]
pub struct Texts(BytesData);

impl Texts {
    /// `data` as texts, or the index of its first element that is not UTF-8.
    pub fn new(data: BytesData) -> Result<Texts, usize> {
        let bad = data.iter().position(|x| std::str::from_utf8(x).is_err());
        match bad {
            Some(i) => Err(i),
            None => Ok(Texts(data)),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Text `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.0.get(i).map(as_str)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + DoubleEndedIterator + '_ {
        self.0.iter().map(as_str)
    }

    /// The texts as BYTES tensor data (no copy).
    pub fn into_data(self) -> BytesData {
        self.0
    }
}

/// An element of `Texts`, checked when the `Texts` was built.
fn as_str(x: &[u8]) -> &str {
    // SAFETY: every element of a `Texts` was checked to be UTF-8 when it was built (`Texts::new`)
    // or came from a `&str` (`TextsBuilder`, `FromIterator`), and the data is never mutated.
    unsafe { std::str::from_utf8_unchecked(x) }
}

impl std::ops::Index<usize> for Texts {
    type Output = str;

    fn index(&self, i: usize) -> &str {
        as_str(&self.0[i])
    }
}

impl fmt::Debug for Texts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// For texts of known small size (see `BytesData`'s `FromIterator`).
impl<S: AsRef<str>> FromIterator<S> for Texts {
    fn from_iter<I: IntoIterator<Item = S>>(texts: I) -> Texts {
        let mut b = TextsBuilder::with_capacity(0, 0);
        for s in texts {
            b.push(s.as_ref())
                .expect("texts collected from small values are under 4 GiB. This is a bug.");
        }
        b.finish()
    }
}

/// Builds `Texts` from strings (the JSON decoders' path).
pub struct TextsBuilder(BytesBuilder);

impl TextsBuilder {
    pub fn with_capacity(texts: usize, bytes: usize) -> TextsBuilder {
        TextsBuilder(BytesBuilder::with_capacity(texts, bytes))
    }

    pub fn push(&mut self, s: &str) -> Result<(), BytesError> {
        self.0.push(s.as_bytes())
    }

    pub fn finish(self) -> Texts {
        Texts(self.0.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Empty elements, non-UTF-8 bytes, a NUL and a longer run: what BYTES may hold.
    fn samples() -> Vec<Vec<u8>> {
        vec![
            b"".to_vec(),
            b"hello".to_vec(),
            vec![0xff, 0xfe, 0x00, 0x80],
            b"".to_vec(),
            "naïve café".as_bytes().to_vec(),
            vec![b'x'; 300],
            b"".to_vec(),
        ]
    }

    fn built(items: &[Vec<u8>]) -> BytesData {
        let mut b = BytesBuilder::with_capacity(2, 1);
        for x in items {
            b.push(x).unwrap();
        }
        b.finish()
    }

    fn length_prefixed(items: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for x in items {
            out.extend_from_slice(&(x.len() as u32).to_le_bytes());
            out.extend_from_slice(x);
        }
        out
    }

    fn elements(d: &BytesData) -> Vec<Vec<u8>> {
        d.iter().map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn built_data_reads_back_every_element_including_empty_and_non_utf8() {
        let want = samples();
        let d = built(&want);
        assert_eq!(d.len(), want.len());
        assert_eq!(elements(&d), want);
        for (i, x) in want.iter().enumerate() {
            assert_eq!(d.get(i), Some(&x[..]));
            assert_eq!(&d[i], &x[..]);
        }
        assert_eq!(d.get(want.len()), None);
        assert_eq!(d.byte_len(), want.iter().map(Vec::len).sum::<usize>());
        assert_eq!(d.iter().len(), want.len());
        assert_eq!(d.iter().next_back(), Some(&b""[..]));
        assert!(BytesData::new().is_empty() && BytesData::new().get(0).is_none());
        assert_eq!(
            elements(&BytesData::empty_elements(3)),
            vec![Vec::<u8>::new(); 3]
        );
    }

    #[test]
    fn length_prefixed_data_is_read_in_place_and_equals_packed() {
        let want = samples();
        let wire = Bytes::from(length_prefixed(&want));
        let span = wire.as_ptr_range();
        let d = BytesData::from_length_prefixed(wire.clone()).unwrap();
        assert_eq!(elements(&d), want);
        assert_eq!(d, built(&want));
        // (An empty element at the end points one past the buffer, which `contains` excludes.)
        let inside = |x: &[u8]| x.is_empty() || span.contains(&x.as_ptr());
        assert!(d.iter().all(inside), "copied");
        assert_eq!(d.byte_len(), built(&want).byte_len());
        // Written back in the same layout: the wire bytes, from either representation.
        for d in [&d, &built(&want)] {
            let mut out = b"head".to_vec();
            d.write_length_prefixed(&mut out);
            assert_eq!(&out[4..], &wire[..]);
        }
        assert!(BytesData::from_length_prefixed(Bytes::new())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn malformed_length_prefixed_data_is_refused_with_the_wire_messages() {
        let e = BytesData::from_length_prefixed(Bytes::from_static(&[1, 0, 0])).unwrap_err();
        assert_eq!(e.to_string(), "truncated BYTES element length");
        let e =
            BytesData::from_length_prefixed(Bytes::from_static(&[5, 0, 0, 0, b'a'])).unwrap_err();
        assert_eq!(e.to_string(), "BYTES element of 5 bytes runs past the data");
        // A length near u32::MAX must not wrap the bound check.
        let e = BytesData::from_length_prefixed(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 1]))
            .unwrap_err();
        assert_eq!(e, BytesError::PastEnd(u32::MAX as usize));
    }

    #[test]
    fn slices_share_the_buffer_and_keep_their_elements() {
        let want = samples();
        for d in [
            built(&want),
            BytesData::from_length_prefixed(length_prefixed(&want).into()).unwrap(),
        ] {
            let s = d.slice(1, 5);
            assert_eq!(elements(&s), want[1..5]);
            assert_eq!(s.get(0).unwrap().as_ptr(), d.get(1).unwrap().as_ptr());
            assert!(d.slice(2, 2).is_empty());
            let mut out = Vec::new();
            s.write_length_prefixed(&mut out);
            assert_eq!(out, length_prefixed(&want[1..5]));
        }
    }

    #[test]
    fn extend_concatenates_any_layouts_and_leaves_shared_parts_alone() {
        let want = samples();
        let wire = BytesData::from_length_prefixed(length_prefixed(&want).into()).unwrap();
        let packed = built(&want);
        let mut all = BytesData::new();
        for part in [&wire.slice(0, 3), &packed.slice(3, 7), &packed, &wire] {
            all.extend_from(part).unwrap();
        }
        let expected: Vec<Vec<u8>> = want.iter().chain(&want).chain(&want).cloned().collect();
        assert_eq!(elements(&all), expected);
        // The parts are untouched by the concatenation that copied from them.
        assert_eq!(elements(&wire), want);
        assert_eq!(elements(&packed), want);
        // Extending a slice (a view of a shared buffer) leaves the data it shares with alone.
        let mut head = packed.slice(0, 2);
        head.extend_from(&built(&[b"z".to_vec()])).unwrap();
        assert_eq!(
            elements(&head),
            vec![b"".to_vec(), b"hello".to_vec(), b"z".to_vec()]
        );
        assert_eq!(elements(&packed), want);
    }

    #[test]
    fn data_past_the_4_gib_offset_bound_is_refused_cleanly() {
        // Zeroed memory from the allocator: never written or read below, so never resident.
        let huge = vec![0u8; u32::MAX as usize + 1];
        let mut b = BytesBuilder::with_capacity(2, 0);
        b.push(b"ok").unwrap();
        assert_eq!(
            b.push(&huge[..u32::MAX as usize - 1]),
            Err(BytesError::TooLarge(u32::MAX as u64 + 1))
        );
        assert_eq!(b.len(), 1, "nothing appended");
        assert_eq!(elements(&b.finish()), vec![b"ok".to_vec()]);
        let e = BytesData::from_length_prefixed(Bytes::from(huge)).unwrap_err();
        assert_eq!(e, BytesError::TooLarge(u32::MAX as u64 + 1));
        assert_eq!(
            e.to_string(),
            "BYTES data of 4294967296 bytes is more than the 4 GiB one tensor may hold"
        );
    }

    #[test]
    fn extend_past_the_bound_leaves_the_data_unchanged() {
        // One element of almost 4 GiB in the binary layout: only its length is ever touched.
        let mut wire = vec![0u8; u32::MAX as usize - 2];
        wire[..4].copy_from_slice(&(u32::MAX - 6).to_le_bytes());
        let mut a = BytesData::from_length_prefixed(wire.into()).unwrap();
        assert_eq!((a.len(), a.byte_len()), (1, u32::MAX as usize - 6));
        let b = built(&[b"0123456789".to_vec()]);
        assert_eq!(
            a.extend_from(&b),
            Err(BytesError::TooLarge(u32::MAX as u64 + 4))
        );
        assert_eq!((a.len(), a.byte_len()), (1, u32::MAX as usize - 6));
    }

    #[test]
    fn texts_refuse_non_utf8_and_read_as_str() {
        let e = Texts::new(built(&samples())).unwrap_err();
        assert_eq!(e, 2, "the first element that is not UTF-8");
        let t: Texts = ["", "héllo", "日本語"].into_iter().collect();
        assert_eq!(t.iter().collect::<Vec<_>>(), vec!["", "héllo", "日本語"]);
        assert_eq!((&t[1], t.get(2), t.get(3)), ("héllo", Some("日本語"), None));
        let again = Texts::new(t.clone().into_data()).unwrap();
        assert_eq!(again, t);
        assert_eq!(format!("{t:?}"), r#"["", "héllo", "日本語"]"#);
    }
}
