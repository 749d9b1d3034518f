//! Loading manifests from YAML files: multi-document, recursive, the same kinds and shapes a
//! Kubernetes API server stores. A file that fails to load keeps what it held before.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::compile::{Inputs, ObjectRef, RoutesDelta};
use crate::resources::{
    API_VERSION, EndpointSlice, GatewayRoute, RateLimitPolicy, Secret, Service,
};

/// One object of a kind Sluice reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// A GatewayRoute.
    Route(Arc<GatewayRoute>),
    /// A RateLimitPolicy.
    Policy(Arc<RateLimitPolicy>),
    /// A Service.
    Service(Arc<Service>),
    /// An EndpointSlice.
    Slice(Arc<EndpointSlice>),
    /// A Secret (JWT keys, API keys).
    Secret(Arc<Secret>),
}

/// A problem loading a file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The object, when the document got far enough to name one.
    pub object: Option<Box<ObjectRef>>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Parses every document of one file. Documents of other kinds are skipped; an empty document
/// is fine. The first error fails the whole file, so that a half-read file never replaces a
/// whole one.
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<(ObjectRef, Object)>, LoadError> {
    let objects = parse_file_noting(path, text, &mut Vec::new())?;
    Ok(objects.into_iter().map(|o| (o.reference(), o)).collect())
}

/// [`parse_file`], adding to `notices` the skipped documents that look like mistakes: an
/// unknown kind in Sluice's group or a near miss of one of its kinds (`GatewayRotue`), and the
/// kinds users coming from other controllers write (`Ingress`, `HTTPRoute`), which Sluice does
/// not read. `check` counts them as problems; `run` logs them as warnings.
pub fn parse_file_noting(
    path: &Path,
    text: &str,
    notices: &mut Vec<LoadError>,
) -> Result<Vec<Object>, LoadError> {
    let mut out = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document).map_err(|e| LoadError {
            path: path.to_owned(),
            line: e.location().map(|l| l.line()),
            object: None,
            message: format!("invalid YAML: {}", strip_location(&e)),
        })?;
        if value.is_null() {
            continue;
        }
        let field = |name: &str| value.get(name).and_then(|v| v.as_str()).unwrap_or("");
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        let meta = value.get("metadata");
        let meta_str = |name: &str| meta.and_then(|m| m.get(name)).and_then(|v| v.as_str());
        let object = |kind: &'static str| ObjectRef {
            kind,
            namespace: meta_str("namespace").unwrap_or("default").to_owned(),
            name: meta_str("name").unwrap_or("").to_owned(),
        };
        let fail = |object: ObjectRef, line: Option<usize>, message: String| LoadError {
            path: path.to_owned(),
            line,
            object: Some(Box::new(object)),
            message,
        };
        let (object_ref, parsed) = match (api_version, kind) {
            (API_VERSION, "GatewayRoute") => {
                let o = object("GatewayRoute");
                (
                    o.clone(),
                    Object::Route(typed(path, text, index, &value, &o)?),
                )
            }
            (API_VERSION, "RateLimitPolicy") => {
                let o = object("RateLimitPolicy");
                (
                    o.clone(),
                    Object::Policy(typed(path, text, index, &value, &o)?),
                )
            }
            ("v1", "Service") => {
                let o = object("Service");
                (
                    o.clone(),
                    Object::Service(typed(path, text, index, &value, &o)?),
                )
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                let o = object("EndpointSlice");
                (
                    o.clone(),
                    Object::Slice(typed(path, text, index, &value, &o)?),
                )
            }
            ("v1", "Secret") => {
                let o = object("Secret");
                (
                    o.clone(),
                    Object::Secret(typed(path, text, index, &value, &o)?),
                )
            }
            (api, "GatewayRoute" | "RateLimitPolicy") => {
                return Err(fail(
                    object("Object"),
                    None,
                    format!("apiVersion {api:?} is not supported; use {API_VERSION}"),
                ));
            }
            ("", _) | (_, "") => {
                return Err(LoadError {
                    path: path.to_owned(),
                    line: None,
                    object: None,
                    message: format!("document {} has no apiVersion or kind", index + 1),
                });
            }
            _ => {
                if let Some(why) = skipped_kind(api_version, kind) {
                    let name = meta_str("name").unwrap_or("");
                    let namespace = meta_str("namespace").unwrap_or("default");
                    notices.push(LoadError {
                        path: path.to_owned(),
                        line: kind_line(text, index),
                        object: None,
                        message: format!("{kind}/{namespace}/{name}: {why}"),
                    });
                }
                continue;
            }
        };
        if object_ref.name.is_empty() {
            return Err(fail(
                object_ref,
                None,
                "metadata.name is required".to_owned(),
            ));
        }
        out.push(parsed);
    }
    Ok(out)
}

/// Why skipping a document of `kind` is worth saying, if it is.
fn skipped_kind(api_version: &str, kind: &str) -> Option<String> {
    const OURS: [&str; 2] = ["GatewayRoute", "RateLimitPolicy"];
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    match (group, kind) {
        ("networking.k8s.io", "Ingress") | ("gateway.networking.k8s.io", "HTTPRoute") => {
            Some(format!(
                "{kind} is not read by Sluice; write the same routes as a GatewayRoute \
                 (README: \"Coming from Ingress or HTTPRoute\")"
            ))
        }
        _ => {
            let near = OURS.iter().find(|ours| near_miss(kind, ours));
            if group != crate::resources::GROUP && near.is_none() {
                return None;
            }
            let hint = near.map_or_else(String::new, |ours| format!("; did you mean {ours}?"));
            Some(format!(
                "kind {kind:?} is not one Sluice reads (its kinds are GatewayRoute and \
                 RateLimitPolicy, in {API_VERSION}){hint}"
            ))
        }
    }
}

/// True when `kind` is a misspelling of `ours`: another case, or at most two edits away.
fn near_miss(kind: &str, ours: &str) -> bool {
    kind != ours && edit_distance(&kind.to_ascii_lowercase(), &ours.to_ascii_lowercase()) <= 2
}

/// Levenshtein distance (kind names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The 1-based line of the `kind:` of document `index`.
fn kind_line(text: &str, index: usize) -> Option<usize> {
    let start = document_start(text, index)?;
    text.lines()
        .enumerate()
        .skip(start)
        .take_while(|(_, line)| !line.starts_with("---"))
        .find(|(_, line)| line.starts_with("kind:"))
        .map(|(n, _)| n + 1)
}

/// Deserialises document `index` as `K`. The fast path goes through the already parsed value;
/// only on error is the document parsed again from the text, to report the line.
fn typed<K>(
    path: &Path,
    text: &str,
    index: usize,
    value: &serde_yaml::Value,
    object: &ObjectRef,
) -> Result<Arc<K>, LoadError>
where
    K: DeserializeOwned + kube::Resource,
{
    // From the value as it is: a clone to deserialise from would copy every document once more.
    match K::deserialize(value) {
        Ok(mut k) => {
            if k.meta().namespace.is_none() {
                // As `kubectl apply` does: no namespace means `default`.
                k.meta_mut().namespace = Some("default".to_owned());
            }
            Ok(Arc::new(k))
        }
        Err(first) => {
            let located = serde_yaml::Deserializer::from_str(text)
                .nth(index)
                .map(serde_path_to_error::deserialize::<_, K>);
            let (line, message) = match located {
                // A scalar the parsed value typed as a number (`request: 5`) is still a string
                // to a typed read of the text, as it is to the API server: accept it, and let
                // compile say what is wrong with its value, field by field.
                Some(Ok(mut k)) => {
                    if k.meta().namespace.is_none() {
                        k.meta_mut().namespace = Some("default".to_owned());
                    }
                    return Ok(Arc::new(k));
                }
                Some(Err(e)) => {
                    let path = e.path().to_string();
                    let inner = strip_location(e.inner());
                    // serde_yaml may lead with a path of its own (a prefix of ours).
                    let inner = match inner.split_once(": ") {
                        Some((lead, rest)) if path.starts_with(lead) => rest.to_owned(),
                        _ => inner,
                    };
                    let message = user_words(&inner, &path);
                    let line = e
                        .inner()
                        .location()
                        .map(|l| l.line())
                        .or_else(|| line_of_path(text, index, e.path()));
                    let message = if path == "." {
                        message
                    } else {
                        format!("{path}: {message}")
                    };
                    (line, message)
                }
                _ => (None, strip_location(&first)),
            };
            Err(LoadError {
                path: path.to_owned(),
                line,
                object: Some(Box::new(object.clone())),
                message,
            })
        }
    }
}

/// Fields that hold GEP-2257 durations: a number there is a common slip (`request: 5`).
const DURATION_FIELDS: &[&str] = &[
    "request",
    "backendRequest",
    "period",
    "clockSkew",
    "backoff",
    "perTryTimeout",
    "ejectionTime",
    "interval",
    "timeout",
    "ttl",
    "maxAge",
];

/// serde's message in a user's words: no Rust type names, and for a duration given as a number,
/// the shape it should have.
fn user_words(message: &str, path: &str) -> String {
    let last = path.rsplit('.').next().unwrap_or("");
    let last = last.split('[').next().unwrap_or(last);
    if DURATION_FIELDS.contains(&last) && message.contains("expected a string") {
        let got = message
            .strip_prefix("invalid type: ")
            .and_then(|m| m.split(", expected").next())
            .unwrap_or("a value");
        return format!(
            "{got} is not a duration: write one as a string such as \"5s\", \"250ms\" or \"1m30s\""
        );
    }
    let mut out = String::with_capacity(message.len());
    let mut words = message.split(' ').peekable();
    while let Some(w) = words.next() {
        if w == "struct" || w == "enum" {
            // `expected struct RouteFilters`: the Rust name means nothing to a user.
            let _ = words.next();
            out.push_str(if w == "struct" {
                "a mapping of fields"
            } else {
                "one of the allowed values"
            });
        } else {
            let integer = [
                "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "usize", "isize",
            ];
            let trimmed = w.trim_end_matches(',');
            if integer.contains(&trimmed) {
                out.push_str("an integer");
                out.push_str(&w[trimmed.len()..]);
            } else if trimmed == "f64" || trimmed == "f32" {
                out.push_str("a number");
                out.push_str(&w[trimmed.len()..]);
            } else {
                out.push_str(w);
            }
        }
        if words.peek().is_some() {
            out.push(' ');
        }
    }
    out
}

/// The line of the field at `path` in document `index`, found by walking the keys in order
/// (and counting `- ` items for list indices); `None` when the layout defeats the walk (flow
/// style), rather than a wrong line.
fn line_of_path(text: &str, index: usize, path: &serde_path_to_error::Path) -> Option<usize> {
    use serde_path_to_error::Segment;
    let start = document_start(text, index)?;
    let lines: Vec<&str> = text.lines().collect();
    let mut at = start;
    let mut found = None;
    for segment in path.iter() {
        match segment {
            Segment::Map { key } | Segment::Enum { variant: key } => {
                let pattern = format!("{key}:");
                let hit = (at..lines.len()).find(|&n| {
                    let t = lines[n].trim_start().trim_start_matches("- ");
                    t.starts_with(&pattern)
                })?;
                found = Some(hit);
                at = hit;
            }
            Segment::Seq { index: item } => {
                let base = found?;
                let indent = |l: &str| l.len() - l.trim_start().len();
                let key_indent = indent(lines[base]);
                let mut seen = 0;
                let mut hit = None;
                for (n, &l) in lines.iter().enumerate().skip(base + 1) {
                    if l.trim().is_empty() {
                        continue;
                    }
                    if indent(l) <= key_indent && !l.trim_start().starts_with("- ") {
                        break;
                    }
                    if l.trim_start().starts_with("- ") && indent(l) <= key_indent + 2 {
                        if seen == *item {
                            hit = Some(n);
                            break;
                        }
                        seen += 1;
                    }
                }
                let hit = hit?;
                found = Some(hit);
                at = hit;
            }
            Segment::Unknown => {}
        }
    }
    found.map(|n| n + 1)
}

/// The 0-based line where document `index` starts (documents split at `---` lines).
fn document_start(text: &str, index: usize) -> Option<usize> {
    let mut document = 0;
    let mut content = false;
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            // A `---` before any content opens the first document rather than ending one.
            if content {
                document += 1;
            }
            content = true;
            if document == index {
                return Some(n + 1);
            }
            continue;
        }
        if !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            if document == index {
                return Some(n);
            }
            content = true;
        }
    }
    None
}

/// serde_yaml appends " at line L column C"; the line is reported separately.
/// The error without the positions libyaml writes into it (the problem's and its context's):
/// the line is already in the `file:line:` prefix, and saying it again (or a second line, the
/// context's) reads as two places to look.
fn strip_location(e: &serde_yaml::Error) -> String {
    static POSITION: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let position = POSITION.get_or_init(|| {
        regex::Regex::new(r" at line [0-9]+ column [0-9]+").expect("a valid pattern")
    });
    position.replace_all(&e.to_string(), "").into_owned()
}

fn digest(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Every `.yaml`/`.yml` file under `root` (or `root` itself if it is a file), sorted, skipping
/// hidden files and folders (editor swap files, Kubernetes' `..data` volume internals).
pub fn yaml_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if root.is_file() {
        out.push(root.to_owned());
        return Ok(out);
    }
    let mut stack = vec![root.to_owned()];
    // Symlinked folders are followed (ConfigMap mounts are built from them), each real folder
    // once, so a link back up the tree cannot loop.
    let mut visited = std::collections::HashSet::new();
    while let Some(dir) = stack.pop() {
        if !visited.insert(std::fs::canonicalize(&dir)?) {
            continue;
        }
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[derive(Debug)]
struct FileState {
    /// What `stat` said of the file just before it was last read.
    stamp: Option<Stamp>,
    /// The stamp proves the content unchanged: the file's last change was more than
    /// [`RACY_MARGIN`] before it was read, so a later write of the same size cannot hide in the
    /// same timestamp.
    trusted: bool,
    /// Hash of the file's bytes, for files read again: an edit that keeps every object as it
    /// was (a rewrite with the same content) changes nothing.
    digest: u64,
    /// (Their [`ObjectRef`]s are not kept beside them: at 10,000 routes those copies of every
    /// name and namespace were more than a megabyte.)
    objects: Vec<Object>,
}

/// Timestamps are only as fine as the file system's (ext4: a kernel tick; FAT and some network
/// file systems: one or two seconds): a file changed this close to its last read is read again.
const RACY_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// A file's identity and last change, from `stat`: equal stamps mean an unchanged file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    #[cfg(unix)]
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        // Follows links, as the read does: a ConfigMap's files are links swapped on update.
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            device: m.dev(),
            inode: m.ino(),
            size: m.size(),
            modified: (m.mtime(), m.mtime_nsec()),
            changed: (m.ctime(), m.ctime_nsec()),
        })
    }

    #[cfg(not(unix))]
    fn of(_: &Path) -> Option<Stamp> {
        None
    }

    /// True when the last change was more than `margin` before `read_at` (since the epoch).
    fn settled_by(&self, read_at: std::time::Duration, margin: std::time::Duration) -> bool {
        let newest = self.changed.max(self.modified);
        let changed = std::time::Duration::new(
            u64::try_from(newest.0).unwrap_or(0),
            u32::try_from(newest.1).unwrap_or(0),
        );
        changed + margin < read_at
    }
}

/// The objects of a set of files, file by file.
#[derive(Debug)]
pub struct ManifestSet {
    files: BTreeMap<PathBuf, FileState>,
    /// See [`RACY_MARGIN`].
    margin: std::time::Duration,
    /// How many files define each object, and how many objects more than one defines: without
    /// any such, [`ManifestSet::inputs`] need not look for them.
    /// (By a 64-bit hash of the object's kind, namespace and name: two objects that share one
    /// only look defined twice, which sends [`ManifestSet::inputs`] down the exact path.)
    defined: crate::compile::FastMap<u64, u32>,
    defined_twice: usize,
    /// The inputs [`ManifestSet::take_inputs`] handed out last, for the namespaces it was
    /// given, and the objects refreshes took out and put in since: the next call patches them
    /// instead of listing every object again.
    kept: Option<(Vec<String>, Inputs)>,
    taken_out: Vec<Object>,
    put_in: Vec<Object>,
}

impl Default for ManifestSet {
    fn default() -> Self {
        Self::with_margin(RACY_MARGIN)
    }
}

/// What a refresh found.
#[derive(Debug, Default)]
pub struct Refresh {
    /// True when some object was added, changed or removed.
    pub changed: bool,
    /// Files that failed to load (their previous objects are kept).
    pub errors: Vec<LoadError>,
    /// Skipped documents that look like mistakes, in the files read again (see
    /// [`parse_file_noting`]).
    pub notices: Vec<LoadError>,
    /// Files read (the others were unchanged by their `stat`).
    pub read: usize,
}

/// Adds one loaded object to its kind's list in `inputs`.
impl Inputs {
    /// Adds `object` to the list of its kind.
    pub fn push(&mut self, object: &Object) {
        match object {
            Object::Route(r) => self.routes.push(Arc::clone(r)),
            Object::Policy(p) => self.policies.push(Arc::clone(p)),
            Object::Service(s) => self.services.push(Arc::clone(s)),
            Object::Slice(s) => self.slices.push(Arc::clone(s)),
            Object::Secret(s) => self.secrets.push(Arc::clone(s)),
        }
    }
}

impl Object {
    /// Kind, namespace and name: what its [`ObjectRef`] holds, borrowed.
    pub fn key(&self) -> (&'static str, &str, &str) {
        fn of<'a, K: kube::Resource>(
            kind: &'static str,
            o: &'a K,
        ) -> (&'static str, &'a str, &'a str) {
            let meta = o.meta();
            let namespace = meta.namespace.as_deref().unwrap_or("default");
            (kind, namespace, meta.name.as_deref().unwrap_or(""))
        }
        match self {
            Object::Route(o) => of("GatewayRoute", &**o),
            Object::Policy(o) => of("RateLimitPolicy", &**o),
            Object::Service(o) => of("Service", &**o),
            Object::Slice(o) => of("EndpointSlice", &**o),
            Object::Secret(o) => of("Secret", &**o),
        }
    }

    /// The object's reference in diagnostics.
    pub fn reference(&self) -> ObjectRef {
        let (kind, namespace, name) = self.key();
        ObjectRef {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// Where the object lives: the same address, the same object.
    fn address(&self) -> usize {
        match self {
            Object::Route(o) => Arc::as_ptr(o) as usize,
            Object::Policy(o) => Arc::as_ptr(o) as usize,
            Object::Service(o) => Arc::as_ptr(o) as usize,
            Object::Slice(o) => Arc::as_ptr(o) as usize,
            Object::Secret(o) => Arc::as_ptr(o) as usize,
        }
    }
}

impl ManifestSet {
    /// A set that trusts a `stat` once the file's last change is `margin` old.
    fn with_margin(margin: std::time::Duration) -> Self {
        ManifestSet {
            files: BTreeMap::new(),
            margin,
            defined: crate::compile::FastMap::default(),
            defined_twice: 0,
            kept: None,
            taken_out: Vec::new(),
            put_in: Vec::new(),
        }
    }

    /// Counts (`true`) or uncounts the objects of a file, and notes them for the inputs kept.
    fn count(&mut self, objects: &[Object], add: bool) {
        if self.kept.is_some() {
            if add {
                self.put_in.extend(objects.iter().cloned());
            } else {
                self.taken_out.extend(objects.iter().cloned());
            }
        }
        for o in objects {
            let key = std::hash::BuildHasher::hash_one(self.defined.hasher(), o.key());
            let n = self.defined.entry(key).or_insert(0);
            let before = *n;
            *n = if add {
                before + 1
            } else {
                before.saturating_sub(1)
            };
            match (before, *n) {
                (1, 2) => self.defined_twice += 1,
                (2, 1) => self.defined_twice -= 1,
                (_, 0) => {
                    self.defined.remove(&key);
                }
                _ => {}
            }
        }
    }

    /// Re-parses the files under `roots` whose content changed, drops files that disappeared,
    /// and keeps the previous objects of files that fail to load. A file whose `stat` (device,
    /// inode, size, modification and change times) is what it was when it was last read, well
    /// after its last change, is not read again.
    pub fn refresh(&mut self, roots: &[PathBuf]) -> Refresh {
        let mut refresh = Refresh::default();
        let mut present = Vec::new();
        for root in roots {
            match yaml_files(root) {
                Ok(files) => present.extend(files),
                Err(e) => {
                    refresh.errors.push(LoadError {
                        path: root.clone(),
                        line: None,
                        object: None,
                        message: format!("cannot read: {e}"),
                    });
                    // Keep what this root held rather than dropping it on a transient error.
                    present.extend(self.files.keys().filter(|p| p.starts_with(root)).cloned());
                }
            }
        }
        let wanted: std::collections::HashSet<&PathBuf> = present.iter().collect();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !wanted.contains(p))
            .cloned()
            .collect();
        for path in gone {
            if let Some(file) = self.files.remove(&path) {
                self.count(&file.objects, false);
                refresh.changed = true;
            }
        }

        for path in present {
            let stamp = Stamp::of(&path);
            let known = self.files.get(&path);
            if known.is_some_and(|f| f.trusted && f.stamp.is_some() && f.stamp == stamp) {
                continue;
            }
            let read_at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let trusted = stamp.is_some_and(|s| s.settled_by(read_at, self.margin));
            refresh.read += 1;
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) => {
                    refresh.errors.push(LoadError {
                        path: path.clone(),
                        line: None,
                        object: None,
                        message: format!("cannot read: {e}"),
                    });
                    continue;
                }
            };
            let digest = digest(&text);
            if let Some(file) = self.files.get_mut(&path)
                && file.digest == digest
            {
                file.stamp = stamp;
                file.trusted = trusted;
                continue;
            }
            let known = self.files.get(&path);
            match parse_file_noting(&path, &text, &mut refresh.notices) {
                Ok(mut objects) => {
                    // Kept while the file is: without the slack of the pushes that built it.
                    objects.shrink_to_fit();
                    let same = known.is_some_and(|f| f.objects == objects);
                    refresh.changed |= !same;
                    self.count(&objects, true);
                    let state = FileState {
                        stamp,
                        trusted,
                        digest,
                        objects,
                    };
                    if let Some(old) = self.files.insert(path, state) {
                        self.count(&old.objects, false);
                    }
                }
                Err(e) => refresh.errors.push(e),
            }
        }
        refresh
    }

    /// [`ManifestSet::inputs`], patched from the ones handed out last when that is right (the
    /// same namespaces, no object defined twice): a reload then costs what changed, not a
    /// pass over every object. Give them back with [`ManifestSet::keep_inputs`].
    pub fn take_inputs(&mut self, namespaces: &[String]) -> (Inputs, Vec<LoadError>) {
        let taken_out = std::mem::take(&mut self.taken_out);
        let put_in = std::mem::take(&mut self.put_in);
        match self.kept.take() {
            Some((kept_for, mut inputs)) if kept_for == namespaces && self.defined_twice == 0 => {
                if !taken_out.is_empty() {
                    let gone: crate::compile::FastMap<usize, ()> =
                        taken_out.iter().map(|o| (o.address(), ())).collect();
                    let keep = |a: usize| !gone.contains_key(&a);
                    inputs.routes.retain(|o| keep(Arc::as_ptr(o) as usize));
                    inputs.policies.retain(|o| keep(Arc::as_ptr(o) as usize));
                    inputs.services.retain(|o| keep(Arc::as_ptr(o) as usize));
                    inputs.slices.retain(|o| keep(Arc::as_ptr(o) as usize));
                    inputs.secrets.retain(|o| keep(Arc::as_ptr(o) as usize));
                }
                let mut delta = RoutesDelta {
                    added: Vec::new(),
                    removed: taken_out
                        .iter()
                        .filter(|o| matches!(o, Object::Route(_)))
                        .map(Object::address)
                        .collect(),
                };
                for object in &put_in {
                    if in_namespaces(namespaces, object) {
                        inputs.push(object);
                        if let Object::Route(r) = object {
                            delta.added.push(Arc::clone(r));
                        }
                    }
                }
                // Only route changes can be followed route by route: any other object may
                // change what every route compiles to.
                let routes_only = taken_out
                    .iter()
                    .chain(&put_in)
                    .all(|o| matches!(o, Object::Route(_)));
                inputs.routes_delta = routes_only.then_some(delta);
                (inputs, Vec::new())
            }
            _ => self.inputs(namespaces),
        }
    }

    /// Keeps `inputs` (from [`ManifestSet::take_inputs`] for `namespaces`) for the next call.
    pub fn keep_inputs(&mut self, namespaces: &[String], inputs: Inputs) {
        self.kept = Some((namespaces.to_vec(), inputs));
    }

    /// The compile inputs, restricted to `namespaces` when it is not empty. An object defined in
    /// two files is taken from the first (in path order) and the other is reported.
    pub fn inputs(&self, namespaces: &[String]) -> (Inputs, Vec<LoadError>) {
        let mut seen: crate::compile::FastMap<(&str, &str, &str), &Path> =
            crate::compile::FastMap::default();
        let mut duplicates = Vec::new();
        let mut inputs = Inputs::default();
        // Only when some object is defined twice is it worth remembering what came first.
        let dedup = self.defined_twice > 0;
        for (path, file) in &self.files {
            for object in &file.objects {
                if !in_namespaces(namespaces, object) {
                    continue;
                }
                if !dedup {
                    inputs.push(object);
                    continue;
                }
                if let Some(first) = seen.get(&object.key()) {
                    duplicates.push(LoadError {
                        path: path.clone(),
                        line: None,
                        object: Some(Box::new(object.reference())),
                        message: format!(
                            "already defined in {}; this copy is ignored",
                            first.display()
                        ),
                    });
                    continue;
                }
                seen.insert(object.key(), path);
                inputs.push(object);
            }
        }
        (inputs, duplicates)
    }

    /// The file an object was loaded from.
    pub fn origin(&self, object: &ObjectRef) -> Option<&Path> {
        self.files
            .iter()
            .find(|(_, f)| {
                let key = (object.kind, &*object.namespace, &*object.name);
                f.objects.iter().any(|o| o.key() == key)
            })
            .map(|(p, _)| p.as_path())
    }

    /// Number of objects loaded.
    pub fn len(&self) -> usize {
        self.files.values().map(|f| f.objects.len()).sum()
    }

    /// True when nothing is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// True when `namespaces` is empty (all of them) or holds the object's.
fn in_namespaces(namespaces: &[String], object: &Object) -> bool {
    namespaces.is_empty() || namespaces.iter().any(|n| *n == object.key().1)
}

#[cfg(test)]
mod tests;
