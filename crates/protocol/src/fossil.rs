//! Fossil deltas (<https://fossil-scm.org/home/doc/tip/www/delta_format.wiki>), the
//! delta format of Centrifugo's `delta: "fossil"` subscriptions: [`create`] turns one
//! payload into the next, [`apply`] reads one back.
//!
//! The encoder follows Fossil's `delta.c`: the source is indexed by a rolling hash of
//! its 16-byte blocks, the target is scanned with the same hash, and a match becomes a
//! copy command when it is shorter than the literal it replaces. A delta holds the
//! target's bytes and ASCII commands: between two UTF-8 texts it is UTF-8 unless a copy
//! boundary splits a character.

/// Bytes hashed per block.
const NHASH: usize = 16;

/// Candidates examined per position at most, as `delta.c` does.
const CHAIN_LIMIT: usize = 250;

const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";

/// Appends `v` in the format's base-64 digits, most significant first.
fn put_int(out: &mut Vec<u8>, mut v: u32) {
    let mut buf = [0u8; 6];
    let mut n = 0;
    loop {
        buf[n] = DIGITS[(v & 63) as usize];
        n += 1;
        v >>= 6;
        if v == 0 {
            break;
        }
    }
    out.extend(buf[..n].iter().rev());
}

/// How many base-64 digits `v` takes.
fn digit_count(v: usize) -> usize {
    let mut digits = 1;
    let mut x = 64usize;
    while v >= x {
        digits += 1;
        x = x.saturating_mul(64);
        if x == usize::MAX {
            break;
        }
    }
    digits
}

/// The sum of `z` read as big-endian 32-bit words, zero-padded, wrapping.
fn checksum(z: &[u8]) -> u32 {
    let mut chunks = z.chunks_exact(4);
    let mut sum = 0u32;
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut last = [0u8; 4];
    last[..rest.len()].copy_from_slice(rest);
    sum.wrapping_add(u32::from_be_bytes(last))
}

/// `delta.c`'s rolling hash of a 16-byte window.
struct Hash {
    a: u16,
    b: u16,
    i: usize,
    z: [u8; NHASH],
}

impl Hash {
    fn new(window: &[u8]) -> Self {
        let (mut a, mut b) = (0u16, 0u16);
        let mut z = [0u8; NHASH];
        for (i, &c) in window[..NHASH].iter().enumerate() {
            a = a.wrapping_add(u16::from(c));
            b = b.wrapping_add(((NHASH - i) as u16).wrapping_mul(u16::from(c)));
            z[i] = c;
        }
        Self { a, b, i: 0, z }
    }

    fn roll(&mut self, c: u8) {
        let old = self.z[self.i];
        self.z[self.i] = c;
        self.i = (self.i + 1) & (NHASH - 1);
        self.a = self
            .a
            .wrapping_sub(u16::from(old))
            .wrapping_add(u16::from(c));
        self.b = self
            .b
            .wrapping_sub((NHASH as u16).wrapping_mul(u16::from(old)))
            .wrapping_add(self.a);
    }

    fn value(&self) -> u32 {
        u32::from(self.a) | (u32::from(self.b) << 16)
    }
}

/// Format lengths and offsets are 32-bit: payloads past 4 GiB are not deltas.
fn u32_of(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn put_literal(out: &mut Vec<u8>, text: &[u8]) {
    put_int(out, u32_of(text.len()));
    out.push(b':');
    out.extend_from_slice(text);
}

/// The delta that turns `source` into `target`. It may be larger than `target` when
/// the two have little in common: callers compare and send whichever is smaller.
pub fn create(source: &[u8], target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    put_int(&mut out, u32_of(target.len()));
    out.push(b'\n');
    if source.len() <= NHASH {
        // No copy could pay for itself.
        put_literal(&mut out, target);
        put_int(&mut out, checksum(target));
        out.push(b';');
        return out;
    }
    // Index every whole block but the last (as delta.c does): `landmark` holds the
    // latest block per hash, `collide` chains each block to the previous one.
    let blocks = source.len() / NHASH;
    let mut collide = vec![usize::MAX; blocks];
    let mut landmark = vec![usize::MAX; blocks];
    let mut i = 0;
    while i + NHASH < source.len() {
        let hv = Hash::new(&source[i..]).value() as usize % blocks;
        collide[i / NHASH] = landmark[hv];
        landmark[hv] = i / NHASH;
        i += NHASH;
    }
    let mut base = 0;
    while base + NHASH < target.len() {
        let mut hash = Hash::new(&target[base..]);
        let (mut best_count, mut best_offset, mut best_literal) = (0, 0, 0);
        let mut i = 0;
        loop {
            let mut block = landmark[hash.value() as usize % blocks];
            let mut limit = CHAIN_LIMIT;
            while block != usize::MAX && limit > 0 {
                limit -= 1;
                let src = block * NHASH;
                // Extend the match forward from the block, then backward before it.
                let forward = source[src..]
                    .iter()
                    .zip(&target[base + i..])
                    .take_while(|(a, b)| a == b)
                    .count();
                let mut back = 1;
                while back < src && back <= i && source[src - back] == target[base + i - back] {
                    back += 1;
                }
                let back = back - 1;
                let offset = src - back;
                let count = forward + back;
                let literal = i - back;
                let cost = digit_count(literal) + digit_count(count) + digit_count(offset) + 3;
                if count >= cost && count > best_count {
                    (best_count, best_offset, best_literal) = (count, offset, literal);
                }
                block = collide[block];
            }
            if best_count > 0 {
                if best_literal > 0 {
                    put_literal(&mut out, &target[base..base + best_literal]);
                    base += best_literal;
                }
                base += best_count;
                put_int(&mut out, u32_of(best_count));
                out.push(b'@');
                put_int(&mut out, u32_of(best_offset));
                out.push(b',');
                break;
            }
            if base + i + NHASH >= target.len() {
                put_literal(&mut out, &target[base..]);
                base = target.len();
                break;
            }
            hash.roll(target[base + i + NHASH]);
            i += 1;
        }
    }
    if base < target.len() {
        put_literal(&mut out, &target[base..]);
    }
    put_int(&mut out, checksum(target));
    out.push(b';');
    out
}

/// Why a delta could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError(&'static str);

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ApplyError {}

/// Reads a base-64 number off the front of `z`.
fn get_int(z: &mut &[u8]) -> Result<u32, ApplyError> {
    let mut v: u32 = 0;
    let mut digits = 0;
    while let Some(&c) = z.first() {
        let Some(d) = DIGITS.iter().position(|&x| x == c) else {
            break;
        };
        v = v
            .checked_mul(64)
            .and_then(|v| v.checked_add(d as u32))
            .ok_or(ApplyError("number too large"))?;
        *z = &z[1..];
        digits += 1;
    }
    if digits == 0 {
        return Err(ApplyError("number expected"));
    }
    Ok(v)
}

/// The target a delta made by [`create`] (or any Fossil encoder) turns `source` into.
///
/// # Errors
/// [`ApplyError`] for a malformed delta, one that reads past `source`, or whose
/// size or checksum does not match its output.
pub fn apply(source: &[u8], delta: &[u8]) -> Result<Vec<u8>, ApplyError> {
    let mut z = delta;
    let size = get_int(&mut z)? as usize;
    if z.first() != Some(&b'\n') {
        return Err(ApplyError("size not terminated by a newline"));
    }
    z = &z[1..];
    let mut out = Vec::with_capacity(size);
    loop {
        let n = get_int(&mut z)? as usize;
        let (&op, rest) = z.split_first().ok_or(ApplyError("unterminated delta"))?;
        z = rest;
        match op {
            b'@' => {
                let offset = get_int(&mut z)? as usize;
                if z.first() != Some(&b',') {
                    return Err(ApplyError("copy not terminated by a comma"));
                }
                z = &z[1..];
                let end = offset.checked_add(n).ok_or(ApplyError("copy overflows"))?;
                let copied = source
                    .get(offset..end)
                    .ok_or(ApplyError("copy past the source"))?;
                out.extend_from_slice(copied);
            }
            b':' => {
                let text = z.get(..n).ok_or(ApplyError("literal past the delta"))?;
                out.extend_from_slice(text);
                z = &z[n..];
            }
            b';' => {
                if out.len() != size {
                    return Err(ApplyError("size mismatch"));
                }
                if checksum(&out) != n as u32 {
                    return Err(ApplyError("checksum mismatch"));
                }
                return Ok(out);
            }
            _ => return Err(ApplyError("unknown command")),
        }
        if out.len() > size {
            return Err(ApplyError("output larger than announced"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Vec<u8> {
        b"shared-body-payload-".repeat(64)
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// Vectors of the Go encoder Centrifugo uses (centrifugal/fdelta's golden file),
    /// for inputs where every faithful encoder finds the same matches.
    #[test]
    fn known_vectors() {
        let body = body();
        let literal = |t: &[u8]| cat(&[b"K0\nK0:", t, b"3xzMQ0;"]);
        type Case = (&'static str, Vec<u8>, Vec<u8>, Vec<u8>);
        let cases: [Case; 10] = [
            ("both-empty", vec![], vec![], b"0\n0:0;".to_vec()),
            ("empty-origin", vec![], body.clone(), literal(&body)),
            ("empty-target", body.clone(), vec![], b"0\n0;".to_vec()),
            (
                "origin-below-window",
                b"short".to_vec(),
                body.clone(),
                literal(&body),
            ),
            (
                "origin-at-window",
                b"0123456789abcdef".to_vec(),
                body.clone(),
                literal(&body),
            ),
            (
                "identical",
                body.clone(),
                body.clone(),
                b"K0\nK0@0,3xzMQ0;".to_vec(),
            ),
            (
                "suffix-change",
                cat(&[&body, b"x"]),
                cat(&[&body, b"y"]),
                b"K1\nK0@0,1:y1qzMQ0;".to_vec(),
            ),
            (
                "middle-change",
                cat(&[&body, b"MIDDLE", &body]),
                cat(&[&body, b"middle", &body]),
                b"d6\nK0@0,6:middleK0@0,ypST_;".to_vec(),
            ),
            (
                "truncated-by-half",
                body.clone(),
                body[..body.len() / 2].to_vec(),
                b"A0\nA0@A0,3zVBD0;".to_vec(),
            ),
            (
                "doubled",
                body.clone(),
                cat(&[&body, &body]),
                b"d0\nK0@0,K0@0,3uxhp0;".to_vec(),
            ),
        ];
        for (name, source, target, want) in cases {
            let got = create(&source, &target);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "{name}"
            );
            assert_eq!(apply(&source, &got).unwrap(), target, "{name}");
        }
    }

    #[test]
    fn round_trips_edits_of_json() {
        let mut source = br#"{"board":["#.to_vec();
        for i in 0..200 {
            source.extend_from_slice(format!(r#"{{"cell":{i},"v":"x"}},"#).as_bytes());
        }
        source.extend_from_slice(b"null]}");
        let mut x = 7u64;
        let mut prev = source;
        for _ in 0..50 {
            let mut next = prev.clone();
            for _ in 0..3 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (x >> 33) as usize % next.len();
                next[at] = b'a' + (x % 26) as u8;
            }
            let d = create(&prev, &next);
            assert!(d.len() < next.len() / 4, "a small edit is a small delta");
            assert_eq!(apply(&prev, &d).unwrap(), next);
            prev = next;
        }
    }

    #[test]
    fn round_trips_non_ascii_text() {
        let a = "héllo wörld, ünïcode stays whole ✓ ".repeat(8);
        let b = a.replace("wörld", "wёrld");
        let d = create(a.as_bytes(), b.as_bytes());
        assert_eq!(apply(a.as_bytes(), &d).unwrap(), b.as_bytes());
    }

    #[test]
    fn broken_deltas_are_refused() {
        let body = body();
        let d = create(&body, &cat(&[&body, b"y"]));
        assert!(apply(&body, &d[..d.len() - 1]).is_err());
        assert!(apply(&body[..100], &d).is_err());
        let mut bad = d;
        let at = bad.len() - 3;
        bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
        assert_eq!(apply(&body, &bad), Err(ApplyError("checksum mismatch")));
        assert!(apply(b"", b"").is_err());
        assert!(apply(b"", b"1\n5:ab;").is_err());
    }
}
