//! The AOT stamp: the text (defined in wamr-source, passed in by build.rs)
//! that every AOT file tollgate-aotc writes carries in a raw AOT custom
//! section, and that the gateway requires before it runs an AOT file. It
//! gets there through WAMR's own path: [`append`] adds it to the module as a
//! wasm custom section, the compiler is asked to keep that section
//! (`AOTCompOption::custom_sections`), and [`emitted`] checks the result,
//! because WAMR only logs a warning when a section to keep is missing.

/// The stamp and the name of the section that carries it.
pub const STAMP: &str = env!("TOLLGATE_AOT_STAMP");
pub const SECTION: &str = env!("TOLLGATE_AOT_STAMP_SECTION");

/// Why a module cannot be stamped.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The bytes are not a sequence of well-formed wasm sections; WAMR's
    /// loader will say what is wrong in its own words.
    Layout(String),
    /// The module already has a section by the stamp's name: appending ours
    /// would leave two, and which one WAMR keeps would be up to its lookup order.
    AlreadyStamped,
}

/// The module with the stamp appended as its last section (custom sections
/// may stand anywhere, and a trailing one changes nothing else). The input's
/// sections must end exactly at its end: appending to a truncated module
/// could complete its last section with the stamp's bytes.
pub fn append(wasm: &[u8]) -> Result<Vec<u8>, Refusal> {
    for name in custom_section_names(wasm).map_err(Refusal::Layout)? {
        if name == SECTION.as_bytes() {
            return Err(Refusal::AlreadyStamped);
        }
    }
    let mut payload = leb128(SECTION.len());
    payload.extend_from_slice(SECTION.as_bytes());
    payload.extend_from_slice(STAMP.as_bytes());
    let mut out = Vec::with_capacity(wasm.len() + payload.len() + 6);
    out.extend_from_slice(wasm);
    out.push(0); // custom section
    out.extend(leb128(payload.len()));
    out.extend(payload);
    Ok(out)
}

/// Whether an AOT file holds the stamp as WAMR writes a raw custom section:
/// the name as a NUL-terminated string, then the content up to the section's end.
pub fn emitted(aot: &[u8]) -> bool {
    let mut needle = Vec::with_capacity(SECTION.len() + 1 + STAMP.len());
    needle.extend_from_slice(SECTION.as_bytes());
    needle.push(0);
    needle.extend_from_slice(STAMP.as_bytes());
    aot.windows(needle.len()).any(|w| w == needle)
}

/// The names of a module's custom sections, checking that every section
/// lies inside the bytes and the last one ends at the end.
fn custom_section_names(wasm: &[u8]) -> Result<Vec<&[u8]>, String> {
    if wasm.get(..4) != Some(b"\0asm") {
        return Err("not a WebAssembly module (no \\0asm magic)".into());
    }
    if wasm.len() < 8 {
        return Err("the module ends inside its header".into());
    }
    let mut at = 8;
    let mut names = Vec::new();
    while at < wasm.len() {
        let id = wasm[at];
        let (size, len) = read_leb128(&wasm[at + 1..]).ok_or_else(|| format!("bad section size at byte {at}"))?;
        let start = at + 1 + len;
        let end = start
            .checked_add(size)
            .filter(|&end| end <= wasm.len())
            .ok_or_else(|| format!("section {id} at byte {at} extends past the end of the module"))?;
        if id == 0 {
            let body = &wasm[start..end];
            let (name_len, len) = read_leb128(body).ok_or_else(|| format!("bad custom section name at byte {at}"))?;
            let name = body
                .get(len..len.saturating_add(name_len))
                .ok_or_else(|| format!("custom section name at byte {at} extends past its section"))?;
            names.push(name);
        }
        at = end;
    }
    Ok(names)
}

/// An unsigned LEB128 u32: (value, bytes read).
fn read_leb128(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().take(5).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return u32::try_from(value).ok().map(|v| (v as usize, i + 1));
        }
    }
    None
}

fn leb128(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(module (func (export "f")))` with a custom section "x" = "y" in the middle.
    const MODULE: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x60, 0x00, 0x00, 0x03, 0x02, 0x01, 0x00,
        0x00, 0x03, 0x01, b'x', b'y', // custom "x"
        0x07, 0x05, 0x01, 0x01, b'f', 0x00, 0x00, 0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b,
    ];

    #[test]
    fn appends_one_custom_section_holding_the_stamp() {
        let stamped = append(MODULE).unwrap();
        assert_eq!(&stamped[..MODULE.len()], MODULE, "the module is unchanged before it");
        assert_eq!(
            custom_section_names(&stamped).unwrap(),
            [b"x".as_slice(), SECTION.as_bytes()],
            "well-formed, the stamp last"
        );
        assert!(stamped.ends_with(STAMP.as_bytes()));
    }

    #[test]
    fn refuses_a_module_that_already_has_a_stamp_section() {
        let stamped = append(MODULE).unwrap();
        assert_eq!(append(&stamped), Err(Refusal::AlreadyStamped));
    }

    #[test]
    fn refuses_a_module_whose_sections_do_not_end_at_its_end() {
        for cut in [1, 3, MODULE.len() - 9] {
            let truncated = &MODULE[..MODULE.len() - cut];
            assert!(
                matches!(append(truncated), Err(Refusal::Layout(_))),
                "cut {cut}: {:?}",
                append(truncated)
            );
        }
        assert!(matches!(append(b"not wasm"), Err(Refusal::Layout(_))));
        assert!(matches!(append(b"\0asm\x01"), Err(Refusal::Layout(_))));
    }

    #[test]
    fn finds_the_stamp_as_wamr_emits_it() {
        let mut aot = b"\0aot....".to_vec();
        aot.extend_from_slice(SECTION.as_bytes());
        aot.push(0);
        aot.extend_from_slice(STAMP.as_bytes());
        assert!(emitted(&aot));
        let last = aot.len() - 1;
        aot[last] ^= 1;
        assert!(!emitted(&aot), "another stamp");
    }

    #[test]
    fn leb128_round_trips() {
        for v in [0, 1, 127, 128, 300, 16_384, u32::MAX as usize] {
            let bytes = leb128(v);
            assert_eq!(read_leb128(&bytes), Some((v, bytes.len())));
        }
        assert_eq!(read_leb128(&[0x80, 0x80]), None, "unterminated");
    }
}
