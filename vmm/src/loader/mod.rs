//! Putting a kernel, its command line and an initrd into guest memory, and the boot
//! information (PVH `hvm_start_info` or the Linux zero page) the kernel reads first.

pub mod elf;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    XEN_HVM_START_MAGIC_VALUE, hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{Cmdline, KernelLoader, load_cmdline};
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, ReadVolatile,
};

use crate::arch::x86_64::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, E820Kind, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START,
    PVH_MODLIST_START, ZERO_PAGE_START, memory_map,
};
use crate::arch::x86_64::regs::BootProtocol;

/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// "HdrS", the boot protocol signature at offset 0x202 of a bzImage.
const BZIMAGE_MAGIC: u32 = 0x5372_6448;
const PAGE_SIZE: u64 = 4096;
/// The zero page's loader type: "other".
const LOADER_TYPE_OTHER: u8 = 0xff;

/// Errors of kernel, initrd and boot information loading.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The kernel or initrd file cannot be opened or read.
    #[error("Cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The kernel file is neither format Arca boots.
    #[error("{0} is not a kernel Arca can boot: expected an ELF vmlinux or a bzImage")]
    UnknownFormat(PathBuf),
    /// The ELF kernel is malformed or does not fit.
    #[error("Cannot load the kernel {path}")]
    Elf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: elf::ElfError,
    },
    /// linux-loader refused the bzImage.
    #[error("Cannot load the kernel {path}: malformed or does not fit in guest memory")]
    Kernel {
        /// The file.
        path: PathBuf,
        /// What linux-loader said.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// PVH was asked for but the ELF has no PVH entry note.
    #[error(
        "{0} has no PVH entry (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y or boot it with the 64-bit protocol"
    )]
    NoPvhEntry(PathBuf),
    /// PVH was asked for a bzImage.
    #[error("{0} is a bzImage, which boots only with the 64-bit Linux protocol")]
    PvhBzImage(PathBuf),
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error(
        "The initrd {path} ({size} bytes) does not fit in guest memory above the kernel; give the VM more memory"
    )]
    InitrdTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The initrd file is empty.
    #[error("The initrd {0} is empty")]
    EmptyInitrd(PathBuf),
    /// The command line is invalid or too long.
    #[error("Invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing the command line or boot information to guest memory failed.
    #[error("Cannot write the boot information to guest memory")]
    BootInfo(#[source] linux_loader::loader::Error),
    /// Writing the boot information through the configurator failed.
    #[error("Cannot write the boot information to guest memory")]
    Configurator(#[source] linux_loader::configurator::Error),
}

/// Which protocol to boot with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtocolChoice {
    /// PVH when the kernel is an ELF with a PVH note, else the 64-bit protocol.
    #[default]
    Auto,
    /// Insist on PVH.
    Pvh,
    /// Insist on the 64-bit Linux boot protocol.
    Linux64,
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Where the boot vCPU starts.
    pub entry: GuestAddress,
    /// How it starts there.
    pub protocol: BootProtocol,
    /// First byte above the kernel image.
    pub end: u64,
    /// The setup header of a bzImage, handed back to it in the zero page.
    pub setup_header: Option<setup_header>,
}

/// An initrd in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    /// Where it starts.
    pub addr: GuestAddress,
    /// Its size in bytes.
    pub size: u64,
}

fn open(path: &Path) -> Result<File, LoaderError> {
    File::open(path).map_err(|source| LoaderError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Loads the kernel at `path` (ELF vmlinux or bzImage) into `memory`.
pub fn load_kernel(
    memory: &GuestMemoryMmap,
    path: &Path,
    choice: ProtocolChoice,
) -> Result<LoadedKernel, LoaderError> {
    let mut file = open(path)?;
    let read_err = |source| LoaderError::Read {
        path: path.to_owned(),
        source,
    };
    let mut head = [0u8; 0x206];
    let got = read_up_to(&mut file, &mut head).map_err(read_err)?;
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let kernel_err = |source| LoaderError::Kernel {
        path: path.to_owned(),
        source,
    };

    if got >= 4 && head[..4] == *b"\x7fELF" {
        let elf = elf::load(memory, &file, HIMEM_START).map_err(|source| LoaderError::Elf {
            path: path.to_owned(),
            source,
        })?;
        let (entry, protocol) = match (choice, elf.pvh_entry) {
            (ProtocolChoice::Auto | ProtocolChoice::Pvh, Some(addr)) => (addr, BootProtocol::Pvh),
            (ProtocolChoice::Pvh, None) => return Err(LoaderError::NoPvhEntry(path.to_owned())),
            (ProtocolChoice::Auto | ProtocolChoice::Linux64, _) => {
                (elf.entry, BootProtocol::Linux64)
            }
        };
        return Ok(LoadedKernel {
            entry: GuestAddress(entry),
            protocol,
            end: elf.end,
            setup_header: None,
        });
    }
    if got >= 0x206
        && u32::from_le_bytes([head[0x202], head[0x203], head[0x204], head[0x205]]) == BZIMAGE_MAGIC
    {
        if choice == ProtocolChoice::Pvh {
            return Err(LoaderError::PvhBzImage(path.to_owned()));
        }
        let result = BzImage::load(memory, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(kernel_err)?;
        return Ok(LoadedKernel {
            entry: GuestAddress(result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
            protocol: BootProtocol::Linux64,
            end: result.kernel_end,
            setup_header: result.setup_header,
        });
    }
    Err(LoaderError::UnknownFormat(path.to_owned()))
}

/// Reads as much of `buf` as the file has.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Loads the initrd at `path` at the top of low memory (page aligned, above the kernel).
pub fn load_initrd(
    memory: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<LoadedInitrd, LoaderError> {
    let mut file = open(path)?;
    let read_err = |source| LoaderError::Read {
        path: path.to_owned(),
        source,
    };
    let size = file.metadata().map_err(read_err)?.len();
    let too_large = || LoaderError::InitrdTooLarge {
        path: path.to_owned(),
        size,
    };
    let low_end = memory
        .find_region(GuestAddress(0))
        .map(|r| r.len())
        .ok_or_else(too_large)?;
    let mut max_end = low_end;
    if let Some(hdr) = kernel.setup_header {
        let addr_max = u64::from(hdr.initrd_addr_max);
        if addr_max != 0 {
            max_end = max_end.min(addr_max + 1);
        }
    }
    let addr = max_end
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .ok_or_else(too_large)?;
    if size == 0 {
        return Err(LoaderError::EmptyInitrd(path.to_owned()));
    }
    if addr < kernel.end {
        return Err(too_large());
    }
    let mut slice = memory
        .get_slice(GuestAddress(addr), size as usize)
        .map_err(|_| too_large())?;
    file.read_exact_volatile(&mut slice)
        .map_err(|e| LoaderError::Read {
            path: path.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(LoadedInitrd {
        addr: GuestAddress(addr),
        size,
    })
}

/// Builds the kernel command line: Arca's base parameters, then the user's.
pub fn build_cmdline(base: &str, extra: Option<&str>) -> Result<Cmdline, LoaderError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(LoaderError::Cmdline)?;
    cmdline.insert_str(base).map_err(LoaderError::Cmdline)?;
    append_cmdline(&mut cmdline, extra)?;
    Ok(cmdline)
}

/// Appends the user's part of the command line, if any.
pub fn append_cmdline(cmdline: &mut Cmdline, extra: Option<&str>) -> Result<(), LoaderError> {
    if let Some(extra) = extra.map(str::trim).filter(|s| !s.is_empty()) {
        cmdline.insert_str(extra).map_err(LoaderError::Cmdline)?;
    }
    Ok(())
}

/// Writes the command line and the boot information the kernel's entry expects.
pub fn write_boot_info(
    memory: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<LoadedInitrd>,
    mem_size: u64,
) -> Result<(), LoaderError> {
    load_cmdline(memory, GuestAddress(CMDLINE_START), cmdline).map_err(LoaderError::BootInfo)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(LoaderError::Cmdline)?
        .as_bytes_with_nul()
        .len();
    let map = memory_map(mem_size);
    match kernel.protocol {
        BootProtocol::Pvh => {
            let memmap: Vec<hvm_memmap_table_entry> = map
                .iter()
                .map(|e| hvm_memmap_table_entry {
                    addr: e.addr,
                    size: e.size,
                    type_: e.kind as u32,
                    reserved: 0,
                })
                .collect();
            let modules: Vec<hvm_modlist_entry> = initrd
                .iter()
                .map(|i| hvm_modlist_entry {
                    paddr: i.addr.0,
                    size: i.size,
                    ..Default::default()
                })
                .collect();
            let start_info = hvm_start_info {
                magic: XEN_HVM_START_MAGIC_VALUE,
                version: 1,
                nr_modules: modules.len() as u32,
                modlist_paddr: if modules.is_empty() {
                    0
                } else {
                    PVH_MODLIST_START
                },
                cmdline_paddr: CMDLINE_START,
                memmap_paddr: PVH_MEMMAP_START,
                memmap_entries: memmap.len() as u32,
                ..Default::default()
            };
            let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
            params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
            if !modules.is_empty() {
                params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
            }
            PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, memory)
                .map_err(LoaderError::Configurator)
        }
        BootProtocol::Linux64 => {
            let mut zero_page = boot_params::default();
            match kernel.setup_header {
                Some(hdr) => zero_page.hdr = hdr,
                None => {
                    zero_page.hdr.boot_flag = 0xaa55;
                    zero_page.hdr.header = BZIMAGE_MAGIC;
                    zero_page.hdr.kernel_alignment = 0x0100_0000;
                }
            }
            zero_page.hdr.type_of_loader = LOADER_TYPE_OTHER;
            zero_page.hdr.cmd_line_ptr = CMDLINE_START as u32;
            zero_page.hdr.cmdline_size = cmdline_len as u32;
            if let Some(initrd) = initrd {
                zero_page.hdr.ramdisk_image = initrd.addr.0 as u32;
                zero_page.hdr.ramdisk_size = initrd.size as u32;
            }
            for (slot, e) in zero_page.e820_table.iter_mut().zip(&map) {
                *slot = boot_e820_entry {
                    addr: e.addr,
                    size: e.size,
                    r#type: e.kind as u32,
                };
            }
            zero_page.e820_entries = map.len() as u8;
            debug_assert!(map.iter().any(|e| e.kind == E820Kind::Ram));
            LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
                &BootParams::new(&zero_page, GuestAddress(ZERO_PAGE_START)),
                memory,
            )
            .map_err(LoaderError::Configurator)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use vm_memory::Bytes;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn memory(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    fn kernel(protocol: BootProtocol, end: u64) -> LoadedKernel {
        LoadedKernel {
            entry: GuestAddress(0x100_0000),
            protocol,
            end,
            setup_header: None,
        }
    }

    fn file_of(len: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![0x5a; len]).unwrap();
        f
    }

    #[test]
    fn initrd_goes_page_aligned_to_the_top_of_low_memory() {
        let mem = memory(64 * MIB);
        let f = file_of(10_000);
        let initrd = load_initrd(&mem, f.path(), &kernel(BootProtocol::Pvh, 20 * MIB)).unwrap();
        assert_eq!(initrd.size, 10_000);
        assert_eq!(initrd.addr.0 % 4096, 0);
        assert!(
            initrd.addr.0 + initrd.size <= 64 * MIB
                && initrd.addr.0 + initrd.size > 64 * MIB - 4096
        );
        let mut back = [0u8; 4];
        mem.read_slice(&mut back, GuestAddress(initrd.addr.0 + 9_996))
            .unwrap();
        assert_eq!(back, [0x5a; 4]);
    }

    #[test]
    fn initrd_that_would_overlap_the_kernel_or_is_empty_is_refused() {
        let mem = memory(32 * MIB);
        let f = file_of((8 * MIB) as usize);
        let err = load_initrd(&mem, f.path(), &kernel(BootProtocol::Pvh, 30 * MIB)).unwrap_err();
        assert!(matches!(err, LoaderError::InitrdTooLarge { size, .. } if size == 8 * MIB));
        assert!(err.to_string().contains("give the VM more memory"));
        let empty = file_of(0);
        assert!(matches!(
            load_initrd(&mem, empty.path(), &kernel(BootProtocol::Pvh, 20 * MIB)),
            Err(LoaderError::EmptyInitrd(_))
        ));
        assert!(matches!(
            load_initrd(
                &mem,
                Path::new("/nonexistent"),
                &kernel(BootProtocol::Pvh, MIB)
            ),
            Err(LoaderError::Read { .. })
        ));
    }

    #[test]
    fn command_line_is_base_then_user_and_bounded() {
        let c = build_cmdline("console=ttyS0 reboot=k", Some("  quiet init=/bin/sh ")).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 reboot=k quiet init=/bin/sh"
        );
        let c = build_cmdline("console=ttyS0", None).unwrap();
        assert_eq!(c.as_cstring().unwrap().to_str().unwrap(), "console=ttyS0");
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            build_cmdline("console=ttyS0", Some(&long)),
            Err(LoaderError::Cmdline(_))
        ));
        assert!(build_cmdline("console=ttyS0", Some("bad\u{7f}char")).is_err());
    }

    #[test]
    fn pvh_start_info_points_at_cmdline_memmap_and_initrd() {
        let mem = memory(128 * MIB);
        let cmdline = build_cmdline("console=ttyS0", None).unwrap();
        let initrd = LoadedInitrd {
            addr: GuestAddress(100 * MIB),
            size: 1234,
        };
        write_boot_info(
            &mem,
            &kernel(BootProtocol::Pvh, 20 * MIB),
            &cmdline,
            Some(initrd),
            128 * MIB,
        )
        .unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(
            (info.cmdline_paddr, info.memmap_paddr, info.memmap_entries),
            (CMDLINE_START, PVH_MEMMAP_START, 3)
        );
        assert_eq!(
            (info.nr_modules, info.modlist_paddr),
            (1, PVH_MODLIST_START)
        );
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((module.paddr, module.size), (100 * MIB, 1234));
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(PVH_MEMMAP_START + 2 * 24))
            .unwrap();
        assert_eq!((last.addr, last.size, last.type_), (MIB, 127 * MIB, 1));
        let mut text = [0u8; 14];
        mem.read_slice(&mut text, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&text, b"console=ttyS0\0");
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let mem = memory(128 * MIB);
        let cmdline = build_cmdline("console=ttyS0", Some("quiet")).unwrap();
        let initrd = LoadedInitrd {
            addr: GuestAddress(100 * MIB),
            size: 4321,
        };
        write_boot_info(
            &mem,
            &kernel(BootProtocol::Linux64, 20 * MIB),
            &cmdline,
            Some(initrd),
            128 * MIB,
        )
        .unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, BZIMAGE_MAGIC);
        assert_eq!({ hdr.type_of_loader }, LOADER_TYPE_OTHER);
        assert_eq!(
            ({ hdr.cmd_line_ptr }, { hdr.cmdline_size }),
            (CMDLINE_START as u32, 20)
        );
        assert_eq!(
            ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
            ((100 * MIB) as u32, 4321)
        );
        assert_eq!(params.e820_entries, 3);
        let e = params.e820_table[2];
        assert_eq!(({ e.addr }, { e.size }, { e.r#type }), (MIB, 127 * MIB, 1));
    }

    #[test]
    fn unknown_formats_and_pvh_mismatches_are_named() {
        let mem = memory(64 * MIB);
        let junk = file_of(4096);
        let err = load_kernel(&mem, junk.path(), ProtocolChoice::Auto).unwrap_err();
        assert!(matches!(err, LoaderError::UnknownFormat(_)));
        let short = file_of(3);
        assert!(matches!(
            load_kernel(&mem, short.path(), ProtocolChoice::Auto),
            Err(LoaderError::UnknownFormat(_))
        ));
        // A bzImage signature with PVH asked for.
        let mut fake = vec![0u8; 0x300];
        fake[0x202..0x206].copy_from_slice(&BZIMAGE_MAGIC.to_le_bytes());
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&fake).unwrap();
        assert!(matches!(
            load_kernel(&mem, f.path(), ProtocolChoice::Pvh),
            Err(LoaderError::PvhBzImage(_))
        ));
        // ...and as a bzImage it is too broken to load.
        assert!(matches!(
            load_kernel(&mem, f.path(), ProtocolChoice::Auto),
            Err(LoaderError::Kernel { .. })
        ));
    }
}
