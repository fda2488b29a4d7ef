//! Loading an ELF vmlinux by mapping it: each `PT_LOAD` segment's whole pages are
//! mapped privately from the file over guest RAM (copy-on-write), and only the partial
//! pages at its ends are copied (guest RAM shared with a vhost-user backend is copied
//! into instead). Nothing is read until the guest touches it, and the
//! kernel's pages stay shared in the host page cache by every VM that boots it.
//!
//! The ELF is the user's input: every header field is checked before use, and a file
//! that is short, overflowing or outside guest memory is an error, never a panic.

use std::fs::File;
use std::os::fd::AsRawFd;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const PAGE: u64 = 4096;
/// Headers larger than this are not a kernel.
const MAX_PHNUM: u16 = 64;

/// Errors of ELF parsing and loading.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file cannot be read.
    #[error("Cannot read the ELF file")]
    Read(#[source] std::io::Error),
    /// The file is not a little-endian x86-64 ELF64 executable.
    #[error("Not an x86-64 ELF64 executable")]
    NotX86_64,
    /// A header field is out of range.
    #[error("Malformed ELF: {0}")]
    Malformed(&'static str),
    /// A segment does not fit in guest memory.
    #[error("ELF segment at {addr:#x} ({size:#x} bytes) does not fit in guest memory")]
    OutsideMemory {
        /// Guest physical address of the segment.
        addr: u64,
        /// Its size in memory.
        size: u64,
    },
    /// Mapping a segment from the file failed.
    #[error("Cannot map an ELF segment")]
    Map(#[source] std::io::Error),
    /// Copying part of a segment into guest memory failed.
    #[error("Cannot copy an ELF segment into guest memory")]
    Copy(#[source] vm_memory::GuestMemoryError),
}

/// What the ELF loader found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfKernel {
    /// `e_entry`: the 64-bit entry point.
    pub entry: u64,
    /// The PVH entry from the `Xen` note, when there is one.
    pub pvh_entry: Option<u64>,
    /// First byte above every loaded segment.
    pub end: u64,
}

/// One program header, the fields Arca uses.
#[derive(Debug, Clone, Copy)]
struct Segment {
    kind: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

fn read_at(file: &File, offset: u64, len: usize) -> Result<Vec<u8>, ElfError> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(ElfError::Read)?;
    Ok(buf)
}

/// Parses the ELF header and program headers of `file` (of `file_len` bytes).
fn parse(file: &File, file_len: u64) -> Result<(u64, Vec<Segment>), ElfError> {
    let ehdr = read_at(file, 0, 64).map_err(|_| ElfError::NotX86_64)?;
    if ehdr[..4] != *b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 || u16_at(&ehdr, 18) != Some(0x3e) {
        return Err(ElfError::NotX86_64);
    }
    let bad = ElfError::Malformed;
    let entry = u64_at(&ehdr, 24).ok_or(bad("header"))?;
    let phoff = u64_at(&ehdr, 32).ok_or(bad("header"))?;
    let phentsize = u16_at(&ehdr, 54).ok_or(bad("header"))?;
    let phnum = u16_at(&ehdr, 56).ok_or(bad("header"))?;
    if phentsize != 56 {
        return Err(bad("program header size is not 56"));
    }
    if phnum == 0 || phnum > MAX_PHNUM {
        return Err(bad("program header count"));
    }
    let table_len = u64::from(phnum) * 56;
    if phoff
        .checked_add(table_len)
        .is_none_or(|end| end > file_len)
    {
        return Err(bad("program headers outside the file"));
    }
    let table = read_at(file, phoff, table_len as usize)?;
    let mut segments = Vec::with_capacity(usize::from(phnum));
    for ph in table.chunks_exact(56) {
        let field = |off| u64_at(ph, off).ok_or(bad("program header"));
        let seg = Segment {
            kind: u32_at(ph, 0).ok_or(bad("program header"))?,
            offset: field(8)?,
            paddr: field(24)?,
            filesz: field(32)?,
            memsz: field(40)?,
        };
        if seg.kind == PT_LOAD || seg.kind == PT_NOTE {
            if seg
                .offset
                .checked_add(seg.filesz)
                .is_none_or(|end| end > file_len)
            {
                return Err(bad("segment outside the file"));
            }
            if seg.kind == PT_LOAD
                && (seg.filesz > seg.memsz || seg.paddr.checked_add(seg.memsz).is_none())
            {
                return Err(bad("segment sizes"));
            }
            segments.push(seg);
        }
    }
    Ok((entry, segments))
}

/// The PVH entry from the notes, if any.
fn pvh_entry(file: &File, segments: &[Segment]) -> Result<Option<u64>, ElfError> {
    for seg in segments.iter().filter(|s| s.kind == PT_NOTE) {
        if seg.filesz > 1 << 20 {
            return Err(ElfError::Malformed("note segment too large"));
        }
        let notes = read_at(file, seg.offset, seg.filesz as usize)?;
        let mut pos = 0usize;
        while pos + 12 <= notes.len() {
            let (Some(namesz), Some(descsz), Some(kind)) = (
                u32_at(&notes, pos),
                u32_at(&notes, pos + 4),
                u32_at(&notes, pos + 8),
            ) else {
                break;
            };
            let name_start = pos + 12;
            let desc_start = name_start.saturating_add((namesz as usize).next_multiple_of(4));
            let next = desc_start.saturating_add((descsz as usize).next_multiple_of(4));
            let name = notes.get(name_start..name_start.saturating_add(namesz as usize));
            if name == Some(b"Xen\0") && kind == XEN_ELFNOTE_PHYS32_ENTRY {
                let desc = notes.get(desc_start..desc_start.saturating_add(descsz as usize));
                return match desc {
                    Some(d) if d.len() == 4 => Ok(u32_at(d, 0).map(u64::from)),
                    Some(d) if d.len() == 8 => Ok(u64_at(d, 0)),
                    _ => Err(ElfError::Malformed("PVH entry note")),
                };
            }
            if next <= pos {
                break;
            }
            pos = next;
        }
    }
    Ok(None)
}

/// Loads `file` into `memory`: segments must lie in RAM at or above `lowest`.
pub fn load(memory: &GuestMemoryMmap, file: &File, lowest: u64) -> Result<ElfKernel, ElfError> {
    let file_len = file.metadata().map_err(ElfError::Read)?.len();
    let (entry, segments) = parse(file, file_len)?;
    let pvh_entry = pvh_entry(file, &segments)?;
    let mut end = 0u64;
    let mut loaded = 0;
    for seg in segments.iter().filter(|s| s.kind == PT_LOAD && s.memsz > 0) {
        let outside = || ElfError::OutsideMemory {
            addr: seg.paddr,
            size: seg.memsz,
        };
        if seg.paddr < lowest {
            return Err(outside());
        }
        // The whole segment must lie in one RAM region.
        let region = memory
            .find_region(GuestAddress(seg.paddr))
            .ok_or_else(outside)?;
        let region_end = region.start_addr().0 + region.len();
        if seg.paddr + seg.memsz > region_end {
            return Err(outside());
        }
        map_segment(memory, region, file, seg)?;
        end = end.max(seg.paddr + seg.memsz);
        loaded += 1;
    }
    if loaded == 0 {
        return Err(ElfError::Malformed("no loadable segment"));
    }
    Ok(ElfKernel {
        entry,
        pvh_entry,
        end,
    })
}

/// Maps the segment's whole file pages and copies its ragged ends; the BSS beyond
/// `filesz` stays the zeroed guest RAM it already is.
fn map_segment(
    memory: &GuestMemoryMmap,
    region: &vm_memory::GuestRegionMmap,
    file: &File,
    seg: &Segment,
) -> Result<(), ElfError> {
    let copy = |gpa: u64, off: u64, len: u64| -> Result<(), ElfError> {
        if len == 0 {
            return Ok(());
        }
        let bytes = read_at(file, off, len as usize)?;
        memory
            .write_slice(&bytes, GuestAddress(gpa))
            .map_err(ElfError::Copy)
    };
    // Page alignment must agree between file offset and address to map at all; and
    // RAM shared with a vhost-user backend (a memfd) must stay that memfd: the backend
    // would not see a private file mapping's pages (the kernel frees its init sections
    // to the guest's page allocator, so they may end up holding I/O buffers).
    if seg.offset % PAGE != seg.paddr % PAGE || region.file_offset().is_some() {
        return copy(seg.paddr, seg.offset, seg.filesz);
    }
    let head = (PAGE - seg.paddr % PAGE) % PAGE;
    let head = head.min(seg.filesz);
    let body = (seg.filesz - head) / PAGE * PAGE;
    let tail = seg.filesz - head - body;
    copy(seg.paddr, seg.offset, head)?;
    if body > 0 {
        let gpa = seg.paddr + head;
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(gpa - region.start_addr().0))
            .map_err(|_| ElfError::OutsideMemory {
                addr: seg.paddr,
                size: seg.memsz,
            })?;
        let offset =
            libc::off_t::try_from(seg.offset + head).map_err(|_| ElfError::Malformed("offset"))?;
        // SAFETY: [host, host + body) lies inside `region`'s mapping (the segment was
        // checked to fit in the region, and `host` is page aligned because gpa and the
        // region start are); no reference into those pages is alive (the guest has not
        // run, and nothing holds a slice), so replacing them with a private, writable
        // file mapping of the same size changes only their contents. The region's own
        // unmap later covers this mapping too.
        let ret = unsafe {
            libc::mmap(
                host.cast(),
                body as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                file.as_raw_fd(),
                offset,
            )
        };
        if ret == libc::MAP_FAILED {
            return Err(ElfError::Map(std::io::Error::last_os_error()));
        }
    }
    copy(seg.paddr + head + body, seg.offset + head + body, tail)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// An ELF64 image: `code` loaded at `addr`, with `bss` zero bytes after it and an
    /// optional PVH note. The code starts at file offset `code_off`.
    fn elf(code: &[u8], addr: u64, code_off: u64, bss: u64, pvh: Option<u32>) -> Vec<u8> {
        let mut note = Vec::new();
        if let Some(entry) = pvh {
            for v in [4u32, 4, XEN_ELFNOTE_PHYS32_ENTRY] {
                note.extend_from_slice(&v.to_le_bytes());
            }
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&entry.to_le_bytes());
        }
        let phnum: u16 = if pvh.is_some() { 2 } else { 1 };
        let note_off = 64 + 56 * u64::from(phnum);
        let mut e = Vec::new();
        e.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        e.extend_from_slice(&2u16.to_le_bytes());
        e.extend_from_slice(&0x3eu16.to_le_bytes());
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&(addr + 0x10).to_le_bytes());
        e.extend_from_slice(&64u64.to_le_bytes());
        e.extend_from_slice(&0u64.to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        for v in [64u16, 56, phnum, 64, 0, 0] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        let ph = |e: &mut Vec<u8>, kind: u32, off: u64, paddr: u64, filesz: u64, memsz: u64| {
            e.extend_from_slice(&kind.to_le_bytes());
            e.extend_from_slice(&5u32.to_le_bytes());
            for v in [off, paddr, paddr, filesz, memsz, PAGE] {
                e.extend_from_slice(&v.to_le_bytes());
            }
        };
        ph(
            &mut e,
            PT_LOAD,
            code_off,
            addr,
            code.len() as u64,
            code.len() as u64 + bss,
        );
        if pvh.is_some() {
            ph(
                &mut e,
                PT_NOTE,
                note_off,
                0,
                note.len() as u64,
                note.len() as u64,
            );
        }
        e.extend_from_slice(&note);
        e.resize(code_off as usize, 0);
        e.extend_from_slice(code);
        e
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    #[test]
    fn loads_segments_spanning_mapped_pages_and_copied_ends_and_zeroes_bss() {
        // Code from 0x100f00 over 3 pages: a 256-byte head, two mapped pages, a tail.
        let code: Vec<u8> = (0..(256 + 2 * 4096 + 100))
            .map(|i| (i % 251) as u8)
            .collect();
        let mem = memory();
        // Dirty the BSS range first: it must read back as zero (not file bytes).
        mem.write_slice(&[0xee; 64], GuestAddress(0x100f00 + code.len() as u64))
            .unwrap();
        let kernel = load(
            &mem,
            &file_with(&elf(&code, 0x100f00, 0xf00, 64, Some(0x100f40))),
            0x10_0000,
        )
        .unwrap();
        assert_eq!(
            kernel,
            ElfKernel {
                entry: 0x100f10,
                pvh_entry: Some(0x100f40),
                end: 0x100f00 + code.len() as u64 + 64
            }
        );
        let mut back = vec![0u8; code.len()];
        mem.read_slice(&mut back, GuestAddress(0x100f00)).unwrap();
        assert_eq!(back, code);
        let mut bss = [0xffu8; 64];
        mem.read_slice(&mut bss, GuestAddress(0x100f00 + code.len() as u64))
            .unwrap();
        assert_eq!(bss, [0xee; 64], "BSS is guest RAM the loader leaves alone");
    }

    #[test]
    fn guest_writes_to_mapped_pages_do_not_reach_the_file() {
        let code = vec![0x90u8; 2 * 4096];
        let bytes = elf(&code, 0x200000, 0x1000, 0, None);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        let mem = memory();
        let kernel = load(&mem, f.as_file(), 0x10_0000).unwrap();
        assert_eq!(kernel.pvh_entry, None);
        mem.write_slice(&[0xcc; 16], GuestAddress(0x200000))
            .unwrap();
        assert_eq!(std::fs::read(f.path()).unwrap(), bytes);
    }

    #[test]
    fn misaligned_segments_are_copied() {
        let code: Vec<u8> = (0..9000).map(|i| i as u8).collect();
        let mem = memory();
        load(
            &mem,
            &file_with(&elf(&code, 0x100000, 0x1234, 0, None)),
            0x10_0000,
        )
        .unwrap();
        let mut back = vec![0u8; code.len()];
        mem.read_slice(&mut back, GuestAddress(0x100000)).unwrap();
        assert_eq!(back, code);
    }

    #[test]
    fn hostile_headers_are_errors_not_panics() {
        let good = elf(&[0x90; 64], 0x100000, 0x1000, 0, Some(0x100000));
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("truncated header", good[..40].to_vec()),
            (
                "not elf",
                b"MZ not an elf at all, but long enough to hold a header.........".to_vec(),
            ),
        ];
        let mut patch = |name, off: usize, val: &[u8]| {
            let mut b = good.clone();
            b[off..off + val.len()].copy_from_slice(val);
            cases.push((name, b));
        };
        patch("32-bit class", 4, &[1]);
        patch("other machine", 18, &0xb7u16.to_le_bytes());
        patch("phentsize", 54, &32u16.to_le_bytes());
        patch("phnum huge", 56, &0xffffu16.to_le_bytes());
        patch("phoff past end", 32, &u64::MAX.to_le_bytes());
        patch(
            "segment offset past end",
            64 + 8,
            &(1u64 << 40).to_le_bytes(),
        );
        patch("filesz past end", 64 + 32, &(1u64 << 40).to_le_bytes());
        patch("memsz smaller than filesz", 64 + 40, &1u64.to_le_bytes());
        patch("paddr wraps", 64 + 24, &(u64::MAX - 10).to_le_bytes());
        patch("below high memory", 64 + 24, &0x1000u64.to_le_bytes());
        patch("beyond guest memory", 64 + 24, &0x3f_fff0u64.to_le_bytes());
        patch("PVH note of 3 bytes", 64 + 2 * 56 + 4, &3u32.to_le_bytes());
        for (name, bytes) in cases {
            let mem = memory();
            assert!(
                load(&mem, &file_with(&bytes), 0x10_0000).is_err(),
                "{name} was accepted"
            );
        }
    }
}
