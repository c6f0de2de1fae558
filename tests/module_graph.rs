//! The layering check: the library's files must not import each other in a circle.
//!
//! Reads every `src/**/*.rs` file of the library (not `main.rs`, a crate of its own),
//! strips comments, strings and char literals, and collects every path that starts with
//! `crate::`, `super::` or `self::` (in `use` trees, braces expanded, and in code). Each
//! path is resolved to the file of the deepest module it names; a name that module only
//! imports (`use`, `pub use`) is followed to the file that defines it. A `pub use`
//! re-export is no edge of its own, nor is a `mod` declaration (a parent declaring its
//! children is not an import). An edge A → B means "A's code names
//! something defined in B". The test fails on any strongly connected component of more
//! than one file and prints each one.
//!
//! Contract of docs/architecture.md: the import graph between files is acyclic, so
//! every file can be read knowing only the files below it.
//!
//! Not followed: 2018-style paths relative to a child module (`reader::Cursor` inside
//! `gguf/mod.rs`). A module root that uses its private children while they use a type the
//! root defines is a parent ↔ child loop this check does not see.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

/// A module path below the crate root, e.g. `["engine", "core"]`.
type ModPath = Vec<String>;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Punct(char),
    /// `::`
    PathSep,
}

/// Tokens of `src` without comments, string/char literals and lifetimes.
fn tokenize(src: &str) -> Vec<Tok> {
    let b: Vec<char> = src.chars().collect();
    let (mut i, mut out) = (0, Vec::new());
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && matches!(next, Some('"') | Some('#')) && raw_string_len(&b[i..]) > 0 {
            i += raw_string_len(&b[i..]);
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '\'' {
            i += char_or_lifetime_len(&b[i..]);
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            let word: String = b[start..i].iter().collect();
            // `b"..."` / `br"..."` byte strings: skip the prefix, the literal follows.
            if !(matches!(word.as_str(), "b" | "br") && matches!(b.get(i), Some('"' | '#'))) {
                out.push(Tok::Ident(word));
            }
        } else if c == ':' && next == Some(':') {
            out.push(Tok::PathSep);
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(Tok::Punct(c));
            }
            i += 1;
        }
    }
    out
}

/// Length of a raw string literal `r#*"…"#*` at the start of `b`, 0 if there is none.
fn raw_string_len(b: &[char]) -> usize {
    let hashes = b[1..].iter().take_while(|&&c| c == '#').count();
    if b.get(1 + hashes) != Some(&'"') {
        return 0;
    }
    let mut i = 2 + hashes;
    while i < b.len() {
        if b[i] == '"'
            && b[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            return i + 1 + hashes;
        }
        i += 1;
    }
    b.len()
}

/// Length of a char literal or a lifetime at the start of `b` (which is `'`).
fn char_or_lifetime_len(b: &[char]) -> usize {
    match (b.get(1), b.get(2)) {
        (Some('\\'), _) => 2 + b[2..].iter().position(|&c| c == '\'').unwrap_or(0) + 1,
        (Some(_), Some('\'')) => 3,
        _ => 1, // a lifetime: the quote alone, the name becomes an ident
    }
}

/// One file's outgoing paths (absolute module paths + item names) and its re-exports.
#[derive(Default)]
struct FileRefs {
    /// Absolute paths named by the file's code and `use` items (not `pub use`).
    paths: Vec<ModPath>,
    /// Names the file's `use` items bring in (children may name them through this
    /// module, `pub use` or not) → the absolute path each points at.
    aliases: HashMap<String, ModPath>,
}

/// Parses one use tree starting at `toks[*i]` under `prefix`; pushes each leaf path.
fn use_tree(toks: &[Tok], i: &mut usize, prefix: ModPath, leaves: &mut Vec<(ModPath, String)>) {
    let mut path = prefix;
    loop {
        match toks.get(*i) {
            Some(Tok::Ident(w)) => {
                path.push(w.clone());
                *i += 1;
            }
            Some(Tok::Punct('*')) => {
                *i += 1;
                leaves.push((path, "*".into()));
                return;
            }
            Some(Tok::Punct('{')) => {
                *i += 1;
                while !matches!(toks.get(*i), Some(Tok::Punct('}')) | None) {
                    use_tree(toks, i, path.clone(), leaves);
                    if toks.get(*i) == Some(&Tok::Punct(',')) {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            _ => break,
        }
        if toks.get(*i) == Some(&Tok::PathSep) {
            *i += 1;
            continue;
        }
        break;
    }
    let mut name = path.last().cloned().unwrap_or_default();
    if name == "self" {
        path.pop();
        name = path.last().cloned().unwrap_or_default();
    }
    if toks.get(*i) == Some(&Tok::Ident("as".into())) {
        if let Some(Tok::Ident(alias)) = toks.get(*i + 1) {
            name = alias.clone();
        }
        *i += 2;
    }
    leaves.push((path, name));
}

/// Turns a path written in module `here` into an absolute one (None: not a `crate::`,
/// `super::` or `self::` path).
fn absolute(here: &[String], path: &[String]) -> Option<ModPath> {
    let mut base: ModPath = match path.first()?.as_str() {
        "crate" => Vec::new(),
        "super" | "self" => here.to_vec(),
        _ => return None,
    };
    let mut rest = if path[0] == "crate" { &path[1..] } else { path };
    while let Some(first) = rest.first() {
        match first.as_str() {
            "super" => {
                base.pop()?;
            }
            "self" => {}
            _ => break,
        }
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// Collects the crate-local paths of one file whose module path is `file_mod`.
fn scan(file_mod: &[String], toks: &[Tok]) -> FileRefs {
    let mut refs = FileRefs::default();
    // The module path at each open brace: inline `mod x { … }` changes it.
    let mut scopes: Vec<ModPath> = vec![file_mod.to_vec()];
    let mut pending_mod: Option<String> = None;
    let mut i = 0;
    while i < toks.len() {
        let here = scopes.last().cloned().unwrap_or_default();
        match &toks[i] {
            Tok::Ident(w) if w == "mod" => {
                if let Some(Tok::Ident(name)) = toks.get(i + 1) {
                    pending_mod = Some(name.clone());
                }
                i += 2;
                continue;
            }
            Tok::Ident(w) if w == "use" => {
                let is_pub = i > 0 && is_pub_before(toks, i);
                i += 1;
                let mut leaves = Vec::new();
                use_tree(toks, &mut i, Vec::new(), &mut leaves);
                for (path, name) in leaves {
                    let Some(abs) = absolute(&here, &path) else {
                        continue;
                    };
                    let is_glob = name == "*";
                    if !is_glob && here == file_mod {
                        refs.aliases.insert(name, abs.clone());
                    }
                    if !is_pub || is_glob {
                        refs.paths.push(abs);
                    }
                }
                continue;
            }
            Tok::Ident(w)
                if matches!(w.as_str(), "crate" | "super" | "self")
                    && toks.get(i + 1) == Some(&Tok::PathSep)
                    && (i == 0 || toks[i - 1] != Tok::PathSep) =>
            {
                let mut path = vec![w.clone()];
                i += 1;
                while toks.get(i) == Some(&Tok::PathSep) {
                    match toks.get(i + 1) {
                        Some(Tok::Ident(seg)) => path.push(seg.clone()),
                        _ => break,
                    }
                    i += 2;
                }
                if let Some(abs) = absolute(&here, &path) {
                    refs.paths.push(abs);
                }
                continue;
            }
            Tok::Punct('{') => {
                let scope = match pending_mod.take() {
                    Some(name) => [here.clone(), vec![name]].concat(),
                    None => here.clone(),
                };
                scopes.push(scope);
            }
            Tok::Punct('}') if scopes.len() > 1 => {
                scopes.pop();
            }
            Tok::Punct(';') => pending_mod = None,
            _ => {}
        }
        i += 1;
    }
    refs
}

/// Whether the `use` at `toks[i]` is `pub` / `pub(crate)` / `pub(super)`.
fn is_pub_before(toks: &[Tok], i: usize) -> bool {
    let is_pub = |j: usize| toks.get(j) == Some(&Tok::Ident("pub".into()));
    is_pub(i - 1) || (i >= 4 && toks[i - 1] == Tok::Punct(')') && is_pub(i - 4))
}

/// Every library source file and its module path (`src/a/b.rs` and `src/a/b/mod.rs` → `a::b`).
fn library_files(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = fs::read_dir(&dir).expect("src/ is readable");
        for entry in entries.map(|e| e.expect("directory entry")) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("below src/");
            let mut segs: ModPath = rel
                .with_extension("")
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if matches!(segs.last().map(String::as_str), Some("mod" | "lib")) {
                segs.pop();
            }
            if segs == ["main"] || segs.first().map(String::as_str) == Some("bin") {
                continue; // binaries are crates of their own
            }
            files.insert(segs, path);
        }
    }
    files
}

/// The file that defines what `path` names: the deepest module file it passes through,
/// following that module's `use` aliases (bounded: aliases can chain).
fn resolve(
    path: &[String],
    files: &BTreeMap<ModPath, PathBuf>,
    refs: &BTreeMap<ModPath, FileRefs>,
    depth: usize,
) -> Option<ModPath> {
    let module = (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| files.contains_key(p))?;
    if depth < 8 {
        let item = path.get(module.len());
        if let Some(target) = item.and_then(|name| refs[&module].aliases.get(name)) {
            let mut full = target.clone();
            full.extend(path[module.len() + 1..].iter().cloned());
            return resolve(&full, files, refs, depth + 1).or(Some(module));
        }
    }
    Some(module)
}

/// Strongly connected components with more than one node (Tarjan).
fn cycles(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct State<'g> {
        graph: &'g BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: HashMap<&'g ModPath, usize>,
        low: HashMap<&'g ModPath, usize>,
        stack: Vec<&'g ModPath>,
        on_stack: BTreeSet<&'g ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g ModPath) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in &s.graph[v] {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

/// The file-level import graph of the library under `src`.
fn import_graph(src: &Path) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let files = library_files(src);
    let refs: BTreeMap<ModPath, FileRefs> = files
        .iter()
        .map(|(m, path)| {
            let text = fs::read_to_string(path).expect("source is UTF-8");
            (m.clone(), scan(m, &tokenize(&text)))
        })
        .collect();
    let mut graph = BTreeMap::new();
    for (m, r) in &refs {
        let targets: BTreeSet<ModPath> = r
            .paths
            .iter()
            .filter_map(|p| resolve(p, &files, &refs, 0))
            .filter(|t| t != m)
            .collect();
        graph.insert(m.clone(), targets);
    }
    graph
}

fn show(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// `a ↔ b ↔ c` and the edges inside the circle (`a → b`), to show what to move.
fn describe(component: &[ModPath], graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> String {
    let names: Vec<String> = component.iter().map(|m| show(m)).collect();
    let edges: Vec<String> = component
        .iter()
        .flat_map(|a| {
            graph[a]
                .iter()
                .filter(|b| component.contains(b))
                .map(move |b| format!("{} → {}", show(a), show(b)))
        })
        .collect();
    format!("{}  ({})", names.join(" ↔ "), edges.join(", "))
}

#[test]
fn library_files_import_no_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src);
    assert!(
        graph.len() > 50,
        "found only {} files under src/",
        graph.len()
    );
    let found = cycles(&graph);
    let listing: Vec<String> = found.iter().map(|c| describe(c, &graph)).collect();
    assert!(
        found.is_empty(),
        "{} import circle(s) between files of src/:\n  {}",
        found.len(),
        listing.join("\n  ")
    );
}

#[test]
fn the_checker_sees_circles_and_resolves_paths() {
    let a: ModPath = vec!["a".into()];
    let toks = tokenize(
        "use super::b::{self, C as D}; // crate::x::y\n\
         pub use crate::c::E; fn f() { let s = \"crate::z\"; crate::d::f(); }\n\
         #[cfg(test)] mod tests { use super::*; use super::super::e; }",
    );
    let refs = scan(&a, &toks);
    let paths: Vec<String> = refs.paths.iter().map(|p| show(p)).collect();
    assert_eq!(
        paths,
        ["b", "b::C", "d::f", "a", "e"],
        "comments and strings are skipped, groups expanded, inline modules tracked"
    );
    assert_eq!(refs.aliases["E"], vec!["c".to_string(), "E".into()]);
    assert_eq!(refs.aliases["D"], vec!["b".to_string(), "C".into()]);

    let node = |s: &str| vec![s.to_string()];
    let mut graph = BTreeMap::new();
    graph.insert(node("x"), [node("y")].into());
    graph.insert(node("y"), [node("z")].into());
    graph.insert(node("z"), [node("x")].into());
    graph.insert(node("w"), [node("x")].into());
    assert_eq!(cycles(&graph), vec![vec![node("x"), node("y"), node("z")]]);
}
