//! Strings into fixed, NUL-terminated `char` arrays of the C structs.

use std::ffi::c_char;

/// Copies `s` into `out` as a NUL-terminated string, cut at a character boundary if it does
/// not fit (the protocol bounds the names this is used for, so nothing is cut in practice).
pub(crate) fn copy_into(out: &mut [c_char], s: &str) {
    let Some(room) = out.len().checked_sub(1) else { return };
    let mut end = s.len().min(room);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    for (o, b) in out.iter_mut().zip(&s.as_bytes()[..end]) {
        *o = *b as c_char;
    }
    out[end..].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(out: &[c_char]) -> Vec<u8> {
        out.iter().map(|c| *c as u8).collect()
    }

    #[test]
    fn copies_terminates_and_cuts_at_char_boundaries() {
        let mut out = [7 as c_char; 6];
        copy_into(&mut out, "ab");
        assert_eq!(bytes(&out), b"ab\0\0\0\0");
        copy_into(&mut out, "abcdefgh");
        assert_eq!(bytes(&out), b"abcde\0");
        // "abcdé" is 6 bytes; 'é' does not fit in the 5 bytes of room and is dropped whole.
        copy_into(&mut out, "abcdé");
        assert_eq!(bytes(&out), b"abcd\0\0");
        copy_into(&mut [], "x");
    }
}
