//! A front-to-back byte reader for fuzz inputs whose format seeds are written in by hand
//! ([`Writer`] is its mirror), so that seed corpora can be generated from real data.

/// Reads little-endian integers and byte strings; past the end every read is `None`.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> Option<u8> {
        let (first, rest) = self.data.split_first()?;
        self.data = rest;
        Some(*first)
    }

    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from(self.u16()?) | u32::from(self.u16()?) << 16)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// A length-prefixed (`u32`) byte string, cut at the end of the input.
    pub fn blob(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        Some(self.bytes(len))
    }
}

/// Builds inputs for [`Reader`] (seed corpora).
#[derive(Default)]
pub struct Writer {
    pub out: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn blob(&mut self, bytes: &[u8]) -> &mut Self {
        self.u32(u32::try_from(bytes.len()).expect("seed blobs are small"));
        self.out.extend_from_slice(bytes);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_and_reader_agree() {
        let mut w = Writer::default();
        w.u8(7).u16(0x1234).u32(0xdead_beef).blob(b"abc");
        let mut r = Reader::new(&w.out);
        assert_eq!(r.u8(), Some(7));
        assert_eq!(r.u16(), Some(0x1234));
        assert_eq!(r.u32(), Some(0xdead_beef));
        assert_eq!(r.blob(), Some(&b"abc"[..]));
        assert!(r.is_empty());
        assert_eq!(r.u8(), None);
    }
}
