//! Address → function name, file and line, on the push thread (never the handler): DWARF
//! line tables and inline information through `addr2line`, the ELF symbol table where there is
//! no DWARF (system libraries, the vDSO). Rust names are demangled without their hash suffix.

use std::collections::HashMap;
use std::sync::Arc;

use object::{Object, ObjectSymbol};

use super::modules::{self, ModuleInfo};

/// One (possibly inlined) function at an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Frame {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// Frames of one address, innermost (inlined) first — pprof's `Location.line` order.
pub(super) type Frames = Arc<[Frame]>;

enum Resolver {
    Dwarf(Box<addr2line::Loader>),
    /// Sorted (address, name) from the symbol table.
    Symbols(Vec<(u64, String)>),
    Nothing,
}

/// Caches resolvers per module and results per address, across profiles.
pub(super) struct Symbolizer {
    resolvers: HashMap<(String, u64), Resolver>,
    cache: HashMap<u64, Frames>,
}

/// Addresses cached at most; a long-running process with many code paths clears the cache
/// rather than grow without bound.
const CACHE_MAX: usize = 200_000;

impl Symbolizer {
    pub fn new() -> Symbolizer {
        Symbolizer { resolvers: HashMap::new(), cache: HashMap::new() }
    }

    /// Frames for a lookup address (for return addresses: the address minus one).
    pub fn resolve(&mut self, modules: &[ModuleInfo], addr: u64) -> Frames {
        if let Some(f) = self.cache.get(&addr) {
            return f.clone();
        }
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        let frames: Frames = match modules::find(modules, addr) {
            Some((_, m)) => {
                let resolver = self
                    .resolvers
                    .entry((m.name.clone(), m.bias))
                    .or_insert_with(|| Resolver::load(m));
                let found = resolver.frames(addr.wrapping_sub(m.bias));
                if found.is_empty() {
                    let base = m.name.rsplit('/').next().unwrap_or(&m.name);
                    Arc::from([unknown(&format!("{base}+{:#x}", addr.wrapping_sub(m.bias)))])
                } else {
                    Arc::from(found)
                }
            }
            None => Arc::from([unknown(&format!("{addr:#x}"))]),
        };
        self.cache.insert(addr, frames.clone());
        frames
    }
}

fn unknown(name: &str) -> Frame {
    Frame { function: name.to_string(), file: String::new(), line: 0 }
}

/// Demangles Rust (legacy and v0) names, dropping the hash; other names pass through.
pub(super) fn demangle(raw: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(raw))
}

impl Resolver {
    fn load(m: &ModuleInfo) -> Resolver {
        if let Some(image) = &m.image {
            return match object::File::parse(&**image) {
                Ok(obj) => Resolver::Symbols(symbol_table(&obj)),
                Err(_) => Resolver::Nothing,
            };
        }
        match m.path.as_ref().map(addr2line::Loader::new) {
            Some(Ok(loader)) => Resolver::Dwarf(Box::new(loader)),
            _ => Resolver::Nothing,
        }
    }

    /// `probe` is an address as stated in the file (runtime address minus the load bias).
    fn frames(&self, probe: u64) -> Vec<Frame> {
        match self {
            Resolver::Dwarf(loader) => dwarf_frames(loader, probe),
            Resolver::Symbols(syms) => {
                let i = syms.partition_point(|(a, _)| *a <= probe);
                match i.checked_sub(1).and_then(|i| syms.get(i)) {
                    Some((_, name)) => vec![Frame { function: demangle(name), ..unknown("") }],
                    None => Vec::new(),
                }
            }
            Resolver::Nothing => Vec::new(),
        }
    }
}

fn dwarf_frames(loader: &addr2line::Loader, probe: u64) -> Vec<Frame> {
    let mut out = Vec::new();
    if let Ok(mut it) = loader.find_frames(probe) {
        while let Ok(Some(f)) = it.next() {
            let function = f
                .function
                .as_ref()
                .and_then(|n| n.raw_name().ok())
                .map(|n| demangle(&n))
                .unwrap_or_default();
            let (file, line) = f
                .location
                .map(|l| (l.file.unwrap_or_default().to_string(), l.line.unwrap_or(0)))
                .unwrap_or_default();
            out.push(Frame { function, file, line });
        }
    }
    // The symbol table names the outermost (non-inlined) function by its full path, where
    // line-tables-only DWARF may only have its short name; and it covers code without DWARF.
    if let Some(sym) = loader.find_symbol(probe) {
        let name = demangle(sym);
        match out.last_mut() {
            Some(last) => last.function = name,
            None => out.push(Frame { function: name, ..unknown("") }),
        }
    }
    out.retain(|f| !f.function.is_empty() || !f.file.is_empty());
    out
}

fn symbol_table<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>) -> Vec<(u64, String)> {
    let mut syms: Vec<(u64, String)> = obj
        .dynamic_symbols()
        .chain(obj.symbols())
        .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
        .filter_map(|s| Some((s.address(), s.name().ok()?.to_string())))
        .collect();
    syms.sort();
    syms.dedup_by_key(|(a, _)| *a);
    syms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_with_a_distinct_name() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn resolves_this_crates_functions_to_demangled_paths() {
        let modules = modules::loaded_modules();
        let addr = a_function_with_a_distinct_name as fn() -> u64 as usize as u64;
        let mut s = Symbolizer::new();
        let frames = s.resolve(&modules, addr + 1);
        let last = frames.last().expect("a frame");
        assert!(
            last.function.ends_with("symbols::tests::a_function_with_a_distinct_name"),
            "{frames:?}"
        );
        assert!(last.file.ends_with("symbols.rs"), "{frames:?}");
        assert!(Arc::ptr_eq(&frames, &s.resolve(&modules, addr + 1)), "cached");
        assert_eq!(demangle("_ZN3foo3bar17h0123456789abcdefE"), "foo::bar");
        assert_eq!(demangle("memcpy"), "memcpy");
    }
}
