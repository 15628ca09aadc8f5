//! The code modules loaded in this process (executable, shared libraries, vDSO) and their
//! unwind tables. Enumerated with `dl_iterate_phdr` on the drain thread — never in the signal
//! handler — and re-enumerated when samples land in code no known module covers (a library
//! loaded later with `dlopen`).
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::CStr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use framehop::ExplicitModuleSectionInfo;
use object::{Object, ObjectSection, ReadRef};

/// One loaded module.
#[derive(Debug, Clone)]
pub(super) struct ModuleInfo {
    /// File path (or `[vdso]`), for pprof mappings and diagnostics.
    pub name: String,
    /// Where to read the ELF file; `None` when the image exists only in memory (vDSO).
    pub path: Option<PathBuf>,
    /// A copy of an in-memory-only ELF image (the vDSO).
    pub image: Option<Arc<[u8]>>,
    /// Load bias: runtime address = address in the file + bias.
    pub bias: u64,
    /// Runtime address range of its executable segments.
    pub text: Range<u64>,
    /// ELF build id, hex (empty when absent).
    pub build_id: String,
}

impl ModuleInfo {
    pub fn contains(&self, addr: u64) -> bool {
        self.text.contains(&addr)
    }
}

/// Finds the module containing `addr` (modules are sorted by start address).
pub(super) fn find(modules: &[ModuleInfo], addr: u64) -> Option<(usize, &ModuleInfo)> {
    let i = modules.partition_point(|m| m.text.start <= addr).checked_sub(1)?;
    modules.get(i).filter(|m| m.contains(addr)).map(|m| (i, m))
}

struct Raw {
    name: String,
    bias: u64,
    text: Range<u64>,
    /// Extent of the image from its first loadable byte (for in-memory copies).
    image: Range<u64>,
}

/// Lists the modules loaded now, sorted by address.
#[cfg(target_os = "linux")]
pub(super) fn loaded_modules() -> Vec<ModuleInfo> {
    unsafe extern "C" fn callback(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `&mut Vec<Raw>` passed to dl_iterate_phdr below, which
        // outlives the iteration; `info` is valid for the duration of this callback.
        let (out, info) = unsafe { (&mut *(data as *mut Vec<Raw>), &*info) };
        let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
            &[]
        } else {
            // SAFETY: the loader guarantees `dlpi_phdr` points to `dlpi_phnum` program
            // headers for the duration of the callback.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
        };
        let name = if info.dlpi_name.is_null() {
            String::new()
        } else {
            // SAFETY: a non-null `dlpi_name` is a NUL-terminated string owned by the loader.
            unsafe { CStr::from_ptr(info.dlpi_name) }.to_string_lossy().into_owned()
        };
        let bias = info.dlpi_addr;
        let mut text: Option<Range<u64>> = None;
        let mut image: Option<Range<u64>> = None;
        for ph in phdrs.iter().filter(|ph| ph.p_type == libc::PT_LOAD) {
            let start = bias.wrapping_add(ph.p_vaddr);
            let r = start..start.wrapping_add(ph.p_memsz);
            if ph.p_flags & libc::PF_X != 0 {
                text = Some(match text {
                    Some(t) => t.start.min(r.start)..t.end.max(r.end),
                    None => r.clone(),
                });
            }
            let file_start = start.wrapping_sub(ph.p_offset);
            let file_end = start.wrapping_add(ph.p_filesz);
            image = Some(match image {
                Some(i) => i.start.min(file_start)..i.end.max(file_end),
                None => file_start..file_end,
            });
        }
        if let (Some(text), Some(image)) = (text, image) {
            out.push(Raw { name, bias, text, image });
        }
        0
    }

    let mut raw: Vec<Raw> = Vec::new();
    // SAFETY: the callback matches dl_iterate_phdr's contract and only uses `data` as the
    // Vec passed here; dl_iterate_phdr is called from normal code, not a signal handler.
    unsafe {
        libc::dl_iterate_phdr(Some(callback), &mut raw as *mut Vec<Raw> as *mut libc::c_void)
    };
    // SAFETY: getauxval has no preconditions.
    let vdso = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    let mut out: Vec<ModuleInfo> = raw
        .into_iter()
        .filter_map(|r| {
            if vdso != 0 && r.image.contains(&vdso) {
                let image = copy_vdso(vdso, &r)?;
                return Some(ModuleInfo {
                    name: "[vdso]".into(),
                    path: None,
                    build_id: build_id(&object::File::parse(&*image).ok()?),
                    image: Some(image),
                    bias: r.bias,
                    text: r.text,
                });
            }
            // The executable reports an empty name; /proc/self/exe opens it even if the file
            // was replaced or deleted since it started.
            let (name, path) = if r.name.is_empty() {
                let name = std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "[exe]".into());
                (name, PathBuf::from("/proc/self/exe"))
            } else {
                (r.name.clone(), PathBuf::from(&r.name))
            };
            Some(ModuleInfo {
                name,
                path: Some(path),
                image: None,
                bias: r.bias,
                text: r.text,
                build_id: String::new(),
            })
        })
        .collect();
    for m in out.iter_mut().filter(|m| m.image.is_none()) {
        m.build_id = file_build_id(m).unwrap_or_default();
    }
    out.sort_by_key(|m| m.text.start);
    out
}

#[cfg(not(target_os = "linux"))]
pub(super) fn loaded_modules() -> Vec<ModuleInfo> {
    Vec::new()
}

/// The vDSO exists only in memory: copy its image (it is a complete ELF file, sections
/// included, one or two pages).
#[cfg(target_os = "linux")]
fn copy_vdso(ehdr: u64, r: &Raw) -> Option<Arc<[u8]>> {
    const MAX: u64 = 1 << 20;
    let len = r.image.end.checked_sub(ehdr)?;
    if len == 0 || len > MAX {
        return None;
    }
    // SAFETY: the kernel maps the whole vDSO image readable for the life of the process at
    // AT_SYSINFO_EHDR; `len` comes from its own program headers (file extent of its loadable
    // segments, which start at the ELF header) and is capped.
    let bytes = unsafe { std::slice::from_raw_parts(ehdr as usize as *const u8, len as usize) };
    Some(Arc::from(bytes))
}

fn file_build_id(m: &ModuleInfo) -> Option<String> {
    let file = std::fs::File::open(m.path.as_ref()?).ok()?;
    let cache = object::ReadCache::new(file);
    let obj = object::File::parse(&cache).ok()?;
    Some(build_id(&obj))
}

fn build_id<'d, R: ReadRef<'d>>(obj: &object::File<'d, R>) -> String {
    obj.build_id().ok().flatten().map(crate::propagation::hex).unwrap_or_default()
}

/// The unwind tables of a module, for framehop: `.eh_frame` and its `.eh_frame_hdr` index
/// (copied: a few MiB for a large debug binary, read once per module), plus the section
/// addresses that pointer encodings in them may be relative to.
pub(super) fn unwind_sections(m: &ModuleInfo) -> Option<ExplicitModuleSectionInfo<Vec<u8>>> {
    if let Some(image) = &m.image {
        return Some(sections(&object::File::parse(&**image).ok()?));
    }
    let file = std::fs::File::open(m.path.as_ref()?).ok()?;
    let cache = object::ReadCache::new(file);
    let obj = object::File::parse(&cache).ok()?;
    Some(sections(&obj))
}

fn sections<'d, R: ReadRef<'d>>(obj: &object::File<'d, R>) -> ExplicitModuleSectionInfo<Vec<u8>> {
    let range = |name: &str| {
        obj.section_by_name(name).map(|s| s.address()..s.address().saturating_add(s.size()))
    };
    let data =
        |name: &str| obj.section_by_name(name).and_then(|s| s.data().ok()).map(<[u8]>::to_vec);
    ExplicitModuleSectionInfo {
        // ELF: section addresses are relative to a zero base; the load bias maps them.
        base_svma: 0,
        text_svma: range(".text"),
        got_svma: range(".got"),
        eh_frame_svma: range(".eh_frame"),
        eh_frame: data(".eh_frame"),
        eh_frame_hdr_svma: range(".eh_frame_hdr"),
        eh_frame_hdr: data(".eh_frame_hdr"),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_executable_and_its_unwind_tables() {
        let modules = loaded_modules();
        let here = finds_the_executable_and_its_unwind_tables as fn() as usize as u64;
        let (_, m) = find(&modules, here).expect("this function's module");
        assert!(m.path.is_some(), "{m:?}");
        let s = unwind_sections(m).expect("sections");
        assert!(s.eh_frame.as_ref().is_some_and(|d| !d.is_empty()));
        assert!(s.eh_frame_hdr.is_some());
        assert!(modules.windows(2).all(|w| w[0].text.start <= w[1].text.start));
        assert!(find(&modules, 16).is_none());
    }
}
