//! The shape the code keeps (STYLE.md): every function in `src/` fits on a screen, and every
//! file of `src/` opens with a `//!` paragraph saying what it owns.
//!
//! Functions are found by parsing each file with `syn` (free functions, methods in `impl` and
//! `trait` blocks, functions nested in modules, test functions included) and measured from
//! their first line (attributes and doc comments excluded) to their closing brace.

use std::path::{Path, PathBuf};

use syn::spanned::Spanned;
use syn::visit::Visit;

/// About a screen.
const MAX_FN_LINES: usize = 80;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    files.sort();
    assert!(
        files.len() > 20,
        "src/ should hold the crate, found {files:?}"
    );
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let relative = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
            (relative.to_owned(), text)
        })
        .collect()
}

/// Every function of a file with its first and last line.
#[derive(Default)]
struct Functions(Vec<(String, usize, usize)>);

impl Functions {
    fn add(&mut self, name: &syn::Ident, sig: &syn::Signature, block: &syn::Block) {
        let first = sig.span().start().line;
        let last = block.span().end().line;
        self.0.push((name.to_string(), first, last));
    }
}

impl<'ast> Visit<'ast> for Functions {
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.add(&f.sig.ident, &f.sig, &f.block);
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.add(&f.sig.ident, &f.sig, &f.block);
        syn::visit::visit_impl_item_fn(self, f);
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(block) = &f.default {
            self.add(&f.sig.ident, &f.sig, block);
        }
        syn::visit::visit_trait_item_fn(self, f);
    }
}

fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let file = syn::parse_file(text).unwrap();
    let mut found = Functions::default();
    found.visit_file(&file);
    found.0
}

#[test]
fn no_function_in_src_is_longer_than_a_screen() {
    let mut long = Vec::new();
    let mut count = 0;
    for (path, text) in sources() {
        for (name, first, last) in functions(&text) {
            count += 1;
            let lines = last - first + 1;
            if lines > MAX_FN_LINES {
                long.push(format!(
                    "{}:{first} `{name}`: {lines} lines",
                    path.display()
                ));
            }
        }
    }
    assert!(count > 500, "the parser found only {count} functions");
    assert!(
        long.is_empty(),
        "functions longer than {MAX_FN_LINES} lines (split them by idea):\n{}",
        long.join("\n")
    );
}

#[test]
fn every_file_in_src_opens_with_a_module_doc() {
    let missing: Vec<_> = sources()
        .into_iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` paragraph: {missing:?}"
    );
}

#[test]
fn the_measure_counts_from_signature_to_closing_brace() {
    let text = "/// doc\n#[inline]\nfn a() {\n    let x = 1;\n    let _ = x;\n}\n\nstruct S;\nimpl S {\n    fn b(&self) {}\n}\n";
    let found = functions(text);
    assert_eq!(
        found,
        [("a".to_owned(), 3, 6), ("b".to_owned(), 10, 10)],
        "lines of each function"
    );
}
