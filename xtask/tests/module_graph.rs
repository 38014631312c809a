//! The module structure of every crate: no two modules import each other in a loop (counting
//! every path in code, `use` or not, by the module it names), and no architecture file imports
//! from the registry that lists it (`worker/src/arch/mod.rs`, `worker/src/gguf/mod.rs`): the
//! vocabulary they share lives below them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The modules of one crate, found from its root through `mod` items, and which module's code
/// names a path into which other module.
struct ModuleGraph {
    /// The file of each module; an inline module (`mod tests { .. }`) is a module of its own,
    /// in the file that holds it.
    files: Vec<PathBuf>,
    modules: BTreeMap<Vec<String>, usize>,
    module_paths: Vec<Vec<String>>,
    /// (from, to): code in module `from` names an item of module `to` (a `use` or a path).
    edges: BTreeSet<(usize, usize)>,
}

impl ModuleGraph {
    fn load(root: &Path) -> Result<Self, String> {
        let mut graph = Self {
            files: Vec::new(),
            modules: BTreeMap::new(),
            module_paths: Vec::new(),
            edges: BTreeSet::new(),
        };
        let dir = root.parent().unwrap_or(Path::new("")).to_path_buf();
        let mut parsed = Vec::new();
        graph.add_file(root, Vec::new(), dir, &mut parsed)?;
        let mut edges = BTreeSet::new();
        for (module, ast) in &parsed {
            let mut visitor = PathCollector {
                graph: &graph,
                module: graph.module_paths[*module].clone(),
                found: BTreeSet::new(),
            };
            visitor.visit_file(ast);
            edges.extend(visitor.found);
        }
        graph.edges = edges;
        Ok(graph)
    }

    fn add_file(
        &mut self,
        path: &Path,
        module: Vec<String>,
        dir: PathBuf,
        parsed: &mut Vec<(usize, syn::File)>,
    ) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let ast = syn::parse_file(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let index = self.add_module(path, module.clone());
        let items = ast.items.clone();
        parsed.push((index, ast));
        self.add_items(&items, path, &module, &dir, parsed)
    }

    fn add_module(&mut self, file: &Path, module: Vec<String>) -> usize {
        let index = self.files.len();
        self.files.push(file.to_path_buf());
        self.modules.insert(module.clone(), index);
        self.module_paths.push(module);
        index
    }

    fn add_items(
        &mut self,
        items: &[syn::Item],
        file: &Path,
        module: &[String],
        dir: &Path,
        parsed: &mut Vec<(usize, syn::File)>,
    ) -> Result<(), String> {
        for item in items {
            let syn::Item::Mod(item) = item else { continue };
            let name = item.ident.to_string();
            let child: Vec<String> = module.iter().cloned().chain([name.clone()]).collect();
            match &item.content {
                Some((_, inner)) => {
                    self.add_module(file, child.clone());
                    self.add_items(inner, file, &child, &dir.join(&name), parsed)?;
                }
                None => {
                    let path = match path_attribute(&item.attrs) {
                        Some(path) => dir.join(path),
                        None if dir.join(format!("{name}.rs")).is_file() => {
                            dir.join(format!("{name}.rs"))
                        }
                        None => dir.join(&name).join("mod.rs"),
                    };
                    let child_dir = dir.join(&name);
                    self.add_file(&path, child, child_dir, parsed)?;
                }
            }
        }
        Ok(())
    }

    /// The file a path names, seen from `module`; `None` for other crates and local items.
    fn resolve(&self, module: &[String], segments: &[String]) -> Option<usize> {
        let (mut current, rest): (Vec<String>, &[String]) = match segments.first()?.as_str() {
            "crate" => (Vec::new(), &segments[1..]),
            "self" => (module.to_vec(), &segments[1..]),
            "super" => {
                let mut current = module.to_vec();
                let mut rest = segments;
                while rest.first().is_some_and(|s| s == "super") {
                    current.pop()?;
                    rest = &rest[1..];
                }
                (current, rest)
            }
            // A child module by its name; a lone name is a local (`shape.iter()`), not a path.
            first if segments.len() > 1 => {
                let child: Vec<String> =
                    module.iter().cloned().chain([first.to_string()]).collect();
                if !self.modules.contains_key(&child) {
                    return None;
                }
                (module.to_vec(), segments)
            }
            _ => return None,
        };
        for segment in rest {
            current.push(segment.clone());
            if !self.modules.contains_key(&current) {
                current.pop();
                break;
            }
        }
        self.modules.get(&current).copied()
    }

    /// The module's file, and its name for an inline module.
    fn name(&self, module: usize) -> String {
        let path = &self.module_paths[module];
        let file = self.files[module].display().to_string();
        let inline = !path.is_empty()
            && self
                .modules
                .get(&path[..path.len() - 1])
                .is_some_and(|parent| self.files[*parent] == self.files[module]);
        match path.last() {
            Some(name) if inline => format!("{file} (mod {name})"),
            _ => file,
        }
    }

    /// Groups of modules that import each other in a loop.
    fn cycles(&self) -> Vec<Vec<usize>> {
        let mut next: Vec<Vec<usize>> = vec![Vec::new(); self.files.len()];
        for (from, to) in &self.edges {
            next[*from].push(*to);
        }
        strongly_connected(&next)
            .into_iter()
            .filter(|group| group.len() > 1)
            .collect()
    }

    /// (child, parent) where a file's code names an item of the file of its parent module.
    fn edges_into_parent(&self) -> Vec<(usize, usize)> {
        self.edges
            .iter()
            .filter(|(from, to)| {
                let module = &self.module_paths[*from];
                !module.is_empty() && self.modules.get(&module[..module.len() - 1]) == Some(to)
            })
            .copied()
            .collect()
    }
}

fn path_attribute(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find_map(|attr| match &attr.meta {
        syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

struct PathCollector<'a> {
    graph: &'a ModuleGraph,
    /// The module whose code is being read: the file's, or an inline one within it.
    module: Vec<String>,
    found: BTreeSet<(usize, usize)>,
}

impl PathCollector<'_> {
    fn note(&mut self, segments: &[String]) {
        let from = self.graph.modules[&self.module];
        if let Some(to) = self.graph.resolve(&self.module, segments) {
            if to != from {
                self.found.insert((from, to));
            }
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.note(&prefix.clone());
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.note(&prefix.clone());
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.note(&prefix.clone()),
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for PathCollector<'_> {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if item.content.is_some() {
            self.module.push(item.ident.to_string());
            syn::visit::visit_item_mod(self, item);
            self.module.pop();
        }
    }

    // `pub(crate)` and `pub(super)` name a module, but import nothing from it.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.note(&segments);
        syn::visit::visit_path(self, path);
    }
}

/// Tarjan's strongly connected components.
fn strongly_connected(next: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        next: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        counter: usize,
        groups: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State, v: usize) {
        s.index[v] = Some(s.counter);
        s.low[v] = s.counter;
        s.counter += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &s.next[v] {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(i) if s.on_stack[w] => s.low[v] = s.low[v].min(i),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                group.push(w);
                if w == v {
                    break;
                }
            }
            group.sort();
            s.groups.push(group);
        }
    }
    let n = next.len();
    let mut s = State {
        next,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        counter: 0,
        groups: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.groups
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

const CRATES: &[&str] = &[
    "worker/api/src/lib.rs",
    "worker/cpu-kernels/src/lib.rs",
    "worker/src/lib.rs",
    "worker/src/main.rs",
    "conformance/src/lib.rs",
    "xtask/src/main.rs",
];

#[test]
fn no_module_imports_in_a_loop() {
    let mut loops = Vec::new();
    for krate in CRATES {
        let graph = ModuleGraph::load(&root().join(krate)).unwrap();
        assert!(graph.files.len() > 3, "{krate}: only {:?}", graph.files);
        for cycle in graph.cycles() {
            let names: Vec<String> = cycle.iter().map(|m| graph.name(*m)).collect();
            loops.push(names.join(" <-> "));
        }
    }
    assert!(
        loops.is_empty(),
        "modules that import each other:\n{}",
        loops.join("\n")
    );
}

#[test]
fn no_architecture_imports_from_its_registry() {
    let graph = ModuleGraph::load(&root().join("worker/src/lib.rs")).unwrap();
    let registries = [
        root().join("worker/src/arch/mod.rs"),
        root().join("worker/src/gguf/mod.rs"),
    ];
    let into_registry: Vec<String> = graph
        .edges_into_parent()
        .into_iter()
        .filter(|(child, parent)| {
            registries.contains(&graph.files[*parent])
                && graph.files[*child] != graph.files[*parent]
        })
        .map(|(child, parent)| format!("{} -> {}", graph.name(child), graph.name(parent)))
        .collect();
    assert!(into_registry.is_empty(), "{}", into_registry.join("\n"));
    let architectures = graph
        .files
        .iter()
        .filter(|f| f.parent() == Some(&root().join("worker/src/arch")))
        .count();
    assert!(
        architectures > 10,
        "{architectures} files in worker/src/arch"
    );
}

/// The check finds what it looks for: a crate of three files, two of which import each other
/// (one through a `use`, one through a path in code) and one child importing from its parent.
#[test]
fn a_loop_and_an_import_from_the_parent_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "mod a;\nmod b;\nmod reg;\n");
    write("a.rs", "use crate::b::B;\npub struct A(B);\n");
    write("b.rs", "pub struct B;\nfn f() { let _ = crate::a::A; }\n");
    write(
        "reg/mod.rs",
        "mod one;\npub struct Shared;\nfn all() { let _ = one::One; }\n",
    );
    write(
        "reg/one.rs",
        "use super::Shared;\npub struct One(Shared);\n",
    );
    let graph = ModuleGraph::load(&dir.path().join("lib.rs")).unwrap();
    let cycles: Vec<Vec<String>> = graph
        .cycles()
        .iter()
        .map(|c| c.iter().map(|m| graph.name(*m)).collect())
        .collect();
    assert_eq!(cycles.len(), 2, "{cycles:?}");
    assert!(cycles.iter().any(|c| c.iter().any(|n| n.ends_with("a.rs"))));
    let into_parent = graph.edges_into_parent();
    assert_eq!(into_parent.len(), 1);
    assert!(graph.name(into_parent[0].0).ends_with("reg/one.rs"));
}
