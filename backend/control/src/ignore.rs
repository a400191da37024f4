//! `.dockerignore` applied to a build context, as the Docker CLI does before it uploads one (the
//! engine does not): patterns in Go's `filepath.Match` syntax plus `**`, matched against each
//! path and its parent directories, the last matching line deciding, `!` re-including.

use std::io::Read as _;

use anyhow::Context as _;
use globset::{GlobBuilder, GlobMatcher};

struct Rule {
    matcher: GlobMatcher,
    include: bool,
}

/// The rules of a `.dockerignore` file.
pub struct DockerIgnore {
    rules: Vec<Rule>,
}

impl DockerIgnore {
    pub fn parse(text: &str) -> anyhow::Result<DockerIgnore> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (include, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = clean(pattern);
            if pattern.is_empty() {
                continue;
            }
            let matcher = GlobBuilder::new(&pattern)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .with_context(|| format!(".dockerignore: {line:?} is not a valid pattern"))?
                .compile_matcher();
            rules.push(Rule { matcher, include });
        }
        Ok(DockerIgnore { rules })
    }

    /// True when `path` (relative to the context, `/`-separated) is left out of the context.
    pub fn excludes(&self, path: &str) -> bool {
        let path = clean(path);
        let mut excluded = false;
        for rule in &self.rules {
            // A pattern naming a directory covers everything under it.
            let matches = ancestors_and_self(&path).any(|p| rule.matcher.is_match(p));
            if matches {
                excluded = !rule.include;
            }
        }
        excluded
    }
}

fn clean(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    parts.join("/")
}

fn ancestors_and_self(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(|(i, _)| &path[..i]).chain(std::iter::once(path))
}

/// Rewrites a context tar without the entries `.dockerignore` (if the context has one) excludes;
/// the Dockerfile and `.dockerignore` themselves always stay, as with the Docker CLI.
pub fn filter_context(archive: &[u8], dockerfile: &str) -> anyhow::Result<Vec<u8>> {
    let Some(ignore) = read_entry(archive, ".dockerignore")? else { return Ok(archive.to_vec()) };
    let ignore = DockerIgnore::parse(&ignore)?;
    let keep_always = [clean(dockerfile), ".dockerignore".to_string()];
    let mut output = tar::Builder::new(Vec::new());
    let mut input = tar::Archive::new(archive);
    for entry in input.entries().context("reading the context archive")? {
        let mut entry = entry.context("reading the context archive")?;
        let path = clean(&entry.path()?.to_string_lossy());
        if path.is_empty() {
            continue;
        }
        if ignore.excludes(&path) && !keep_always.contains(&path) {
            continue;
        }
        let mut header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        if let Some(target) = entry.link_name()? {
            output.append_link(&mut header, &path, target)?;
        } else {
            output.append_data(&mut header, &path, data.as_slice())?;
        }
    }
    Ok(output.into_inner()?)
}

fn read_entry(archive: &[u8], wanted: &str) -> anyhow::Result<Option<String>> {
    let mut input = tar::Archive::new(archive);
    for entry in input.entries().context("reading the context archive")? {
        let mut entry = entry.context("reading the context archive")?;
        if clean(&entry.path()?.to_string_lossy()) == wanted {
            let mut text = String::new();
            entry.read_to_string(&mut text).context("reading .dockerignore")?;
            return Ok(Some(text));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_the_docker_cli() {
        let ignore = DockerIgnore::parse("# comment\nnode_modules\n*.log\n!keep.log\ndocs/**/*.md\n/target\n").unwrap();
        assert!(ignore.excludes("node_modules"));
        assert!(ignore.excludes("node_modules/a/b.js"), "a directory covers its contents");
        assert!(ignore.excludes("debug.log"));
        assert!(!ignore.excludes("keep.log"), "an exception re-includes");
        assert!(!ignore.excludes("sub/debug.log"), "`*` does not cross directories");
        assert!(ignore.excludes("docs/a/b/c.md"));
        assert!(ignore.excludes("docs/c.md"), "`**` matches no directory too");
        assert!(ignore.excludes("target/debug/x"));
        assert!(!ignore.excludes("src/main.rs"));
    }

    #[test]
    fn the_context_loses_excluded_files_but_keeps_the_dockerfile() {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, body) in [
            ("Dockerfile", "FROM scratch\n"),
            (".dockerignore", "secret.txt\nDockerfile\nbuild/\n"),
            ("secret.txt", "s3cr3t"),
            ("build/out.bin", "x"),
            ("app.txt", "hello"),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, body.as_bytes()).unwrap();
        }
        let archive = builder.into_inner().unwrap();
        let filtered = filter_context(&archive, "Dockerfile").unwrap();
        let mut names: Vec<String> = tar::Archive::new(filtered.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert_eq!(names, [".dockerignore", "Dockerfile", "app.txt"]);
    }
}
