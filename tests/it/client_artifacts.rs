//! The committed files that are generated from this tree for the TypeScript client and the board,
//! checked by `cargo test` so that a Rust-only change that makes them stale fails here and not only
//! later in `npm test`:
//! - `clients/js/src/generated/asyncapi.json` is the AsyncAPI document the Rust code builds now;
//! - `clients/js/src/generated/protocol.ts` carries the stamp `gen-types.mjs` writes (the SHA-256
//!   of that asyncapi.json, of the generator, and of the rest of the file), and it still holds;
//! - `web/assets/SOURCES.sha256`, written by `npm run build:board`, still lists the board's inputs
//!   and outputs as they are;
//! - where Node and `clients/js/node_modules` exist, the real generator and `check-board.mjs`
//!   reproduce the committed files byte for byte (without them the tests say they skip, and fail
//!   under `CI=true`).
//!
//! The first three need no Node: they compare hashes, which is why the generators write stamps.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};

const REGEN: &str =
    "run `npm run gen` in clients/js against a server built from this tree, and commit";
const REBUILD: &str = "run `npm run build:board` in clients/js, and commit web/assets";
const STAMP: &str = "SOURCES.sha256";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn js() -> PathBuf {
    root().join("clients").join("js")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Relative paths (with `/`) of the files under `dir`, sorted; empty when it does not exist.
fn files(dir: &Path, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let entry = entry.expect("a directory entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().expect("a file type").is_dir() {
            out.extend(files(&entry.path(), &format!("{prefix}{name}/")));
        } else {
            out.push(format!("{prefix}{name}"));
        }
    }
    out.sort();
    out
}

// ---- 1. the committed AsyncAPI document -------------------------------------------------------

fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 70 {
        format!("{}...", s.chars().take(70).collect::<String>())
    } else {
        s
    }
}

/// Where `committed` and `built` differ, as JSON pointers.
fn json_diff(path: &str, committed: &Value, built: &Value, out: &mut Vec<String>) {
    match (committed, built) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = format!("{path}/{}", pointer_escape(k));
                match b.get(k) {
                    Some(vb) => json_diff(&p, va, vb, out),
                    None => out.push(format!("only in the committed file: {p}")),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!(
                    "only in the Rust-built document: {path}/{}",
                    pointer_escape(k)
                ));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                json_diff(&format!("{path}/{i}"), va, vb, out);
            }
            for i in b.len()..a.len() {
                out.push(format!("only in the committed file: {path}/{i}"));
            }
            for i in a.len()..b.len() {
                out.push(format!("only in the Rust-built document: {path}/{i}"));
            }
        }
        (Value::String(a), Value::String(b)) if a != b => {
            // Long texts (descriptions) differ somewhere in the middle: show from there.
            let at = a
                .char_indices()
                .zip(b.chars())
                .find(|((_, x), y)| x != y)
                .map_or(a.len().min(b.len()), |((i, _), _)| i);
            let from = a[..at].char_indices().rev().nth(20).map_or(0, |(i, _)| i);
            let cut = if from > 0 { "..." } else { "" };
            out.push(format!(
                "changed: {path}: committed {cut}{}, now {cut}{}",
                short(&Value::from(&a[from..])),
                short(&Value::from(&b[from..]))
            ));
        }
        (a, b) if a != b => out.push(format!(
            "changed: {}: committed {}, now {}",
            if path.is_empty() { "/" } else { path },
            short(a),
            short(b)
        )),
        _ => {}
    }
}

#[test]
fn committed_asyncapi_json_is_what_the_rust_code_builds() {
    let file = js().join("src/generated/asyncapi.json");
    let committed: Value = serde_json::from_slice(&read(&file))
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {REGEN}", file.display()));
    let built = taskforge::realtime::asyncapi::document();
    let mut diff = Vec::new();
    json_diff("", &committed, &built, &mut diff);
    const SHOWN: usize = 20;
    let more = diff.len().saturating_sub(SHOWN);
    diff.truncate(SHOWN);
    if more > 0 {
        diff.push(format!("... and {more} more"));
    }
    assert!(
        diff.is_empty(),
        "clients/js/src/generated/asyncapi.json differs from the AsyncAPI document the Rust code \
         builds (taskforge::realtime::asyncapi::document):\n  {}\n{REGEN} clients/js/src/generated/",
        diff.join("\n  ")
    );
}

// ---- 2. protocol.ts's stamp -------------------------------------------------------------------

/// The stamp lines gen-types.mjs writes at the top of protocol.ts, in order: what each hashes and
/// the file it is compared with (`None`: the rest of protocol.ts itself).
const PROTOCOL_STAMP: [(&str, Option<&str>); 3] = [
    (
        "// sha256 of src/generated/asyncapi.json: ",
        Some("src/generated/asyncapi.json"),
    ),
    (
        "// sha256 of scripts/gen-types.mjs: ",
        Some("scripts/gen-types.mjs"),
    ),
    ("// sha256 of the rest of this file: ", None),
];

/// What is wrong with protocol.ts's stamp, if anything.
fn protocol_stamp_problems(protocol: &str, file_hash: impl Fn(&str) -> String) -> Vec<String> {
    let mut rest = protocol;
    let mut stamped = Vec::new();
    for (prefix, _) in PROTOCOL_STAMP {
        let Some((line, tail)) = rest.split_once('\n') else {
            break;
        };
        let Some(hash) = line.strip_prefix(prefix) else {
            break;
        };
        stamped.push(hash.to_owned());
        rest = tail;
    }
    if stamped.len() != PROTOCOL_STAMP.len() {
        return vec![format!(
            "protocol.ts does not start with the {} stamp lines gen-types.mjs writes \
             (`{}<hex>` ...): it was not written by the current generator",
            PROTOCOL_STAMP.len(),
            PROTOCOL_STAMP[0].0
        )];
    }
    let mut problems = Vec::new();
    for ((prefix, file), stamped) in PROTOCOL_STAMP.iter().zip(stamped) {
        let now = match file {
            Some(f) => file_hash(f),
            None => sha256(rest.as_bytes()),
        };
        if now != stamped {
            let what = prefix
                .trim_start_matches("// sha256 of ")
                .trim_end_matches(": ");
            problems.push(match file {
                Some(_) => format!(
                    "{what} changed since protocol.ts was generated (stamped {stamped}, now {now})"
                ),
                None => format!(
                    "protocol.ts was edited after it was generated: the rest of the file hashes \
                     to {now}, its stamp says {stamped}"
                ),
            });
        }
    }
    problems
}

#[test]
fn protocol_ts_is_stamped_with_its_current_inputs() {
    let protocol = String::from_utf8(read(&js().join("src/generated/protocol.ts")))
        .expect("protocol.ts is UTF-8");
    let problems = protocol_stamp_problems(&protocol, |f| sha256(&read(&js().join(f))));
    assert!(
        problems.is_empty(),
        "clients/js/src/generated/protocol.ts is not what scripts/gen-types.mjs makes of \
         src/generated/asyncapi.json:\n  {}\n{REGEN} clients/js/src/generated/ (when only the \
         generator changed, `npm run gen -- src/generated/asyncapi.json` regenerates from the \
         committed document)",
        problems.join("\n  ")
    );
}

// ---- 3. web/assets' stamp ---------------------------------------------------------------------

/// `web/assets/SOURCES.sha256`, parsed (see clients/js/scripts/board-stamp.mjs for the format).
#[derive(Debug, Default, PartialEq)]
struct BoardStamp {
    typescript: String,
    /// Repository-relative path -> SHA-256.
    inputs: BTreeMap<String, String>,
    outputs: BTreeMap<String, String>,
}

impl BoardStamp {
    fn parse(text: &str) -> Result<Self, String> {
        let mut stamp = BoardStamp::default();
        for (n, line) in text.lines().enumerate() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [] => {}
                [first, ..] if first.starts_with('#') => {}
                ["typescript", version] => stamp.typescript = (*version).to_owned(),
                ["input", hash, path] => {
                    stamp.inputs.insert((*path).to_owned(), (*hash).to_owned());
                }
                ["output", hash, path] => {
                    stamp.outputs.insert((*path).to_owned(), (*hash).to_owned());
                }
                _ => return Err(format!("line {}: {line:?}", n + 1)),
            }
        }
        Ok(stamp)
    }

    /// The stamp the current tree calls for: what clients/js/scripts/board-stamp.mjs would write.
    fn current() -> Self {
        let js = js();
        let lock: Value = serde_json::from_slice(&read(&js.join("package-lock.json")))
            .expect("package-lock.json is JSON");
        let typescript = lock["packages"]["node_modules/typescript"]["version"]
            .as_str()
            .expect("package-lock.json pins node_modules/typescript")
            .to_owned();
        // What tsc compiles under tsconfig.board.json's `include`, and the configs it reads.
        let is_source = |f: &String| {
            [".ts", ".tsx", ".mts", ".cts"]
                .iter()
                .any(|ext| f.ends_with(ext))
        };
        let mut inputs = vec!["tsconfig.board.json".to_owned(), "tsconfig.json".to_owned()];
        for dir in ["board", "src"] {
            inputs.extend(
                files(&js.join(dir), &format!("{dir}/"))
                    .into_iter()
                    .filter(is_source),
            );
        }
        let assets = root().join("web").join("assets");
        Self {
            typescript,
            inputs: inputs
                .into_iter()
                .map(|f| (format!("clients/js/{f}"), sha256(&read(&js.join(&f)))))
                .collect(),
            outputs: files(&assets, "")
                .into_iter()
                .filter(|f| f != STAMP)
                .map(|f| (format!("web/assets/{f}"), sha256(&read(&assets.join(&f)))))
                .collect(),
        }
    }

    /// What changed from `self` (the committed stamp) to `now`, one line each.
    fn changes(&self, now: &Self) -> Vec<String> {
        let mut out = Vec::new();
        if self.typescript != now.typescript {
            out.push(format!(
                "package-lock.json pins typescript {}, web/assets was built with {}",
                now.typescript, self.typescript
            ));
        }
        for (path, hash) in &now.inputs {
            match self.inputs.get(path) {
                None => out.push(format!("new input since the build: {path}")),
                Some(h) if h != hash => out.push(format!("changed since the build: {path}")),
                Some(_) => {}
            }
        }
        for path in self.inputs.keys().filter(|p| !now.inputs.contains_key(*p)) {
            out.push(format!("gone since the build: {path}"));
        }
        for (path, hash) in &now.outputs {
            match self.outputs.get(path) {
                None => out.push(format!("not written by the build (left over?): {path}")),
                Some(h) if h != hash => {
                    out.push(format!(
                        "not what the build wrote (edited by hand?): {path}"
                    ));
                }
                Some(_) => {}
            }
        }
        for path in self
            .outputs
            .keys()
            .filter(|p| !now.outputs.contains_key(*p))
        {
            out.push(format!("missing (the build wrote it): {path}"));
        }
        out
    }
}

#[test]
fn board_assets_are_stamped_with_their_current_sources() {
    let path = root().join("web").join("assets").join(STAMP);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("web/assets/{STAMP} cannot be read ({e}): {REBUILD}"));
    let stamp = BoardStamp::parse(&text)
        .unwrap_or_else(|e| panic!("web/assets/{STAMP} is malformed at {e}: {REBUILD}"));
    let changes = stamp.changes(&BoardStamp::current());
    assert!(
        changes.is_empty(),
        "web/assets is stale against the board's sources:\n  {}\n{REBUILD}",
        changes.join("\n  ")
    );
}

#[test]
fn the_binary_embeds_the_stamped_assets_but_not_the_stamp() {
    let stamp = BoardStamp::parse(
        &std::fs::read_to_string(root().join("web/assets").join(STAMP)).expect("the stamp"),
    )
    .expect("a well-formed stamp");
    let embedded: BTreeMap<&str, &[u8]> = taskforge::http::web::ASSETS
        .iter()
        .map(|a| (a.path, a.body))
        .collect();
    assert!(
        !embedded.keys().any(|p| p.ends_with(STAMP)),
        "build.rs must leave web/assets/{STAMP} out of the binary: {:?}",
        embedded.keys()
    );
    assert!(!stamp.outputs.is_empty());
    for (path, hash) in &stamp.outputs {
        let url = format!("/{}", path.trim_start_matches("web/"));
        let body = embedded
            .get(url.as_str())
            .unwrap_or_else(|| panic!("{path} is not embedded at {url}"));
        assert_eq!(&sha256(body), hash, "{url}");
    }
}

#[test]
fn board_stamp_changes_name_what_changed() {
    // The comparison itself, on made-up stamps: each kind of change is reported, and by name.
    let text = "# a comment\ntypescript 5.9.3\ninput aa clients/js/board/board.ts\n\
                input bb clients/js/src/gone.ts\noutput cc web/assets/board/board.js\n\
                output dd web/assets/src/gone.js\n";
    let old = BoardStamp::parse(text).expect("a well-formed stamp");
    assert_eq!(old.inputs.len(), 2);
    let now = BoardStamp {
        typescript: "5.9.4".into(),
        inputs: [
            ("clients/js/board/board.ts".into(), "a2".into()),
            ("clients/js/src/new.ts".into(), "ee".into()),
        ]
        .into(),
        outputs: [
            ("web/assets/board/board.js".into(), "c2".into()),
            ("web/assets/src/stray.js".into(), "ff".into()),
        ]
        .into(),
    };
    assert_eq!(
        old.changes(&now),
        [
            "package-lock.json pins typescript 5.9.4, web/assets was built with 5.9.3",
            "changed since the build: clients/js/board/board.ts",
            "new input since the build: clients/js/src/new.ts",
            "gone since the build: clients/js/src/gone.ts",
            "not what the build wrote (edited by hand?): web/assets/board/board.js",
            "not written by the build (left over?): web/assets/src/stray.js",
            "missing (the build wrote it): web/assets/src/gone.js",
        ]
    );
    assert!(old.changes(&old).is_empty());
    assert!(BoardStamp::parse("input onlyahash\n").is_err());
}

#[test]
fn protocol_stamp_problems_name_what_changed() {
    let body = "// Generated\nexport type A = string;\n";
    let stamp = |a: &str, g: &str, rest: &str| {
        format!(
            "{}{a}\n{}{g}\n{}{rest}\n{body}",
            PROTOCOL_STAMP[0].0, PROTOCOL_STAMP[1].0, PROTOCOL_STAMP[2].0
        )
    };
    let hashes = |f: &str| format!("hash of {f}");
    let good = stamp(
        "hash of src/generated/asyncapi.json",
        "hash of scripts/gen-types.mjs",
        &sha256(body.as_bytes()),
    );
    assert_eq!(protocol_stamp_problems(&good, hashes), Vec::<String>::new());
    let bad = stamp("x", "hash of scripts/gen-types.mjs", "y");
    let problems = protocol_stamp_problems(&bad, hashes);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("src/generated/asyncapi.json changed"));
    assert!(problems[1].starts_with("protocol.ts was edited"));
    assert_eq!(protocol_stamp_problems(body, hashes).len(), 1);
}

// ---- 4. the real generators, where Node is installed ------------------------------------------

/// `Some(node)` when Node and clients/js/node_modules are there. Otherwise says so where it is
/// seen even when the test passes (libtest captures `eprintln!`, not a direct write to stderr),
/// and fails under `CI=true`: CI installs both, so a skip there would hide a stale file.
fn node() -> Option<&'static str> {
    let node_runs = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let reason = if !node_runs {
        "`node` is not on PATH"
    } else if !js().join("node_modules/typescript/bin/tsc").is_file() {
        "clients/js/node_modules is not installed (`npm ci` in clients/js)"
    } else {
        return Some("node");
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but {reason}: the node-based comparison of the client's files cannot run");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\nskipping the node-based comparison: {reason}"
    );
    None
}

/// The first line where `a` and `b` differ, for a failure message.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    let mut lines = a.lines().zip(b.lines()).enumerate();
    match lines.find(|(_, (x, y))| x != y) {
        Some((n, (x, y))) => format!("line {}: committed {x:?}, generated {y:?}", n + 1),
        None => format!(
            "one is a prefix of the other ({} vs {} lines)",
            a.lines().count(),
            b.lines().count()
        ),
    }
}

#[test]
fn node_generator_reproduces_the_committed_files() {
    let Some(node) = node() else { return };
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let doc = tmp.path().join("asyncapi.json");
    // Byte for byte what the server serves at /asyncapi.json.
    std::fs::write(&doc, taskforge::realtime::asyncapi::document().to_string())
        .expect("writing the document");
    let out = tmp.path().join("out");
    let run = Command::new(node)
        .arg("scripts/gen-types.mjs")
        .arg(&doc)
        .arg("--out-dir")
        .arg(&out)
        .current_dir(js())
        .output()
        .expect("running node");
    assert!(
        run.status.success(),
        "gen-types.mjs failed on the Rust-built document: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    for name in ["asyncapi.json", "protocol.ts"] {
        let committed = read(&js().join("src/generated").join(name));
        let generated = read(&out.join(name));
        assert!(
            committed == generated,
            "clients/js/src/generated/{name} is not what scripts/gen-types.mjs makes of the \
             Rust-built document ({}): {REGEN} clients/js/src/generated/",
            first_difference(&committed, &generated)
        );
    }
}

#[test]
fn node_board_check_passes() {
    let Some(node) = node() else { return };
    let run = Command::new(node)
        .arg("scripts/check-board.mjs")
        .current_dir(js())
        .output()
        .expect("running node");
    assert!(
        run.status.success(),
        "clients/js/scripts/check-board.mjs failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}
