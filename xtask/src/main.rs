//! `cargo xtask <task>`: the project's multi-step chores as one command each.
//!
//! - `test`: formatting, lint and unused-dependency checks, then every test (the end-to-end ones
//!   need Docker).
//! - `bench [dashboard|ingress|failover|watchers|api]`: builds the release server (and dashboard), then runs the
//!   benchmark in `tests/bench` (not a test: it prints figures, it asserts nothing).
//! - `dashboard [--release]`: the dashboard's wasm and JS, next to the `berth` binary (`site/pkg`).
//! - `run`: the dashboard and `berth server`, release builds (the README's run command).
//! - `dist`: a statically linked release `berth` in `dist/`, for the `Dockerfile`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "test" => test(),
        "bench" => bench(std::env::args().nth(2).as_deref()),
        "dist" => dist(),
        "dashboard" => dashboard(std::env::args().any(|a| a == "--release")),
        "run" => {
            dashboard(true)?;
            let extra: Vec<String> = std::env::args().skip(2).collect();
            let mut args = vec!["run", "--release", "-p", "berth", "--bin", "berth", "--", "server"];
            args.extend(extra.iter().map(String::as_str));
            cargo(&args)
        }

        _ => bail!(
            "usage: cargo xtask <test|bench|dashboard|run|dist>\n  test       fmt + clippy + all tests\n  \
             bench      release benchmark (needs Docker, nginx, optionally wrk)\n  \
             bench dashboard  wasm/JS sizes, page TTFB, Deploy click to serving (needs Chromium)\n  \
             bench ingress  the ingress against nginx and HAProxy: HTTP/1.1, HTTPS, handshakes, h2\n  \
             bench failover  two servers on PostgreSQL, the leader killed 10 times: takeover times\n  \
             bench watchers  CPU of the control plane with 1 000 apps and 50 open dashboard pages\n  \
             bench api  the API and the dashboard on SQLite against PostgreSQL\n  \
             dashboard  the dashboard's wasm [--release]\n  run        berth server with its dashboard\n  \
             dist       static binary in dist/"
        ),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("BUG: xtask/ is inside the workspace").to_path_buf()
}

/// The release server (and with `dashboard`, its wasm), then the benchmark binary against it.
fn bench(which: Option<&str>) -> anyhow::Result<()> {
    if !matches!(which, None | Some("dashboard" | "ingress" | "failover" | "watchers" | "api")) {
        bail!("usage: cargo xtask bench [dashboard|ingress|failover|watchers|api]");
    }
    cargo(&["build", "--release", "-p", "berth", "--bin", "berth"])?;
    if which == Some("dashboard") {
        dashboard(true)?;
    }
    let berth = target_dir().join("release/berth");
    let berth = berth.to_str().context("the target directory is not UTF-8")?;
    let mut args = vec!["run", "--release", "-p", "berth-tests", "--bin", "berth-bench"];
    if let Some(which) = which {
        args.extend(["--", which]);
    }
    cargo_with(&args, &[("BERTH_BIN", berth)])
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    cargo_with(args, &[])
}

fn cargo_with(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn test() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    // Dependencies nothing uses: each one costs every build.
    ensure_cargo_tool("cargo-machete", "cargo-machete")?;
    let status = Command::new("cargo-machete").arg(workspace_root()).status().context("running cargo-machete")?;
    if !status.success() {
        bail!("cargo-machete found unused dependencies (listed above)");
    }
    compose_config()?;
    // The end-to-end tests run the real `berth` binary and drive its dashboard in Chromium, so
    // build both first (same profile: server and wasm must match for hydration).
    cargo(&["build", "-p", "berth", "--bin", "berth"])?;
    dashboard(false)?;
    cargo(&["test", "--workspace", "--", "--test-threads", "2"])?;
    postgres_pass()?;
    schemathesis()
}

/// The suites that reach the store (the API's, the control plane's and the end-to-end tests), a
/// second time on PostgreSQL: a cluster the tests start themselves from the `postgresql` package's
/// binaries. The store's own tests run on both engines in the pass before.
fn postgres_pass() -> anyhow::Result<()> {
    let installed = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain(std::fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten().map(|v| v.path().join("bin")))
        .any(|dir| dir.join("initdb").is_file());
    if !installed {
        eprintln!("xtask: PostgreSQL is not installed (apt-get install postgresql): SKIPPING the PostgreSQL pass");
        return Ok(());
    }
    let env = [("BERTH_TEST_STORE", "postgres")];
    cargo_with(&["test", "-p", "berth-api", "-p", "berth-control", "--", "--test-threads", "2"], &env)?;
    cargo_with(&["test", "-p", "berth-tests", "--test", "e2e", "--", "--test-threads", "2"], &env)
}

/// `docker-compose config`: the production-shaped compose file parses and interpolates (its
/// images cannot be pulled here, so this is as far as CI can take it).
fn compose_config() -> anyhow::Result<()> {
    let file = workspace_root().join("docker-compose.yml");
    let candidates: [&[&str]; 2] = [&["docker-compose"], &["docker", "compose"]];
    let installed = candidates.into_iter().find(|command| {
        Command::new(command[0]).args(&command[1..]).arg("version").output().is_ok_and(|o| o.status.success())
    });
    let Some(command) = installed else {
        eprintln!("xtask: neither docker-compose nor `docker compose` is installed: SKIPPING the compose file check");
        return Ok(());
    };
    let output = Command::new(command[0])
        .args(&command[1..])
        .args(["-f", &file.to_string_lossy(), "config", "-q"])
        .env("BERTH_DB_PASSWORD", "compose-config-check")
        .output()
        .with_context(|| format!("running {} config", command.join(" ")))?;
    if !output.status.success() {
        bail!("{} config: docker-compose.yml: {}", command.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    eprintln!("xtask: {} config: docker-compose.yml is valid", command.join(" "));
    Ok(())
}

/// The version `cargo xtask test` installs when `schemathesis` is missing.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// Fuzzes the API of a live server from its OpenAPI document (`tests/schemathesis/run.py`) as
/// three callers; any 5xx or answer the document does not describe fails the run.
fn schemathesis() -> anyhow::Result<()> {
    let present = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("xtask: installing {SCHEMATHESIS} (pip)");
        let pip = |extra: &[&str]| {
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet"])
                .args(extra)
                .arg(SCHEMATHESIS)
                .status()
                .context("running pip (python3 with pip is needed for the API fuzzing)")
        };
        // A Debian-managed python3 refuses a system-wide install without the flag, and a pip older
        // than 23.0.1 does not know the flag.
        if !pip(&[])?.success() && !pip(&["--break-system-packages"])?.success() {
            bail!("pip could not install {SCHEMATHESIS}");
        }
    }
    let binary = target_dir().join("debug/berth");
    eprintln!("xtask: schemathesis against {}", binary.display());
    let status = Command::new("python3")
        .arg(workspace_root().join("tests/schemathesis/run.py"))
        .arg(&binary)
        .status()
        .context("running tests/schemathesis/run.py")?;
    if !status.success() {
        bail!("the API fuzzing found failures (above)");
    }
    Ok(())
}

/// Builds `berth` statically linked (glibc, `crt-static`) into `dist/berth`. The explicit
/// `--target` keeps these flags away from the host build's cache.
fn dist() -> anyhow::Result<()> {
    let target = "x86_64-unknown-linux-gnu";
    cargo_with(
        &["build", "--release", "-p", "berth", "--bin", "berth", "--target", target],
        &[("RUSTFLAGS", "-C target-feature=+crt-static")],
    )?;
    let root = workspace_root();
    let target_dir = target_dir();
    let built = target_dir.join(target).join("release/berth");
    std::fs::create_dir_all(root.join("dist"))?;
    std::fs::copy(&built, root.join("dist/berth")).with_context(|| format!("copying {}", built.display()))?;
    // The dashboard's wasm and JS, next to the binary where `berth server` looks by default.
    dashboard(true)?;
    let pkg = target_dir.join("release/site/pkg");
    let dist_pkg = root.join("dist/site/pkg");
    std::fs::create_dir_all(&dist_pkg)?;
    for entry in std::fs::read_dir(&pkg).with_context(|| format!("reading {}", pkg.display()))? {
        let entry = entry?;
        std::fs::copy(entry.path(), dist_pkg.join(entry.file_name()))?;
    }
    eprintln!("xtask: dist/berth is ready; `docker-compose up --build` runs it");
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace_root().join("target"))
}

/// Builds the dashboard for the browser: the frontend crate with `hydrate` for wasm32, then
/// wasm-bindgen into `<target>/<profile>/site/pkg`, where `berth` (same profile) looks by default.
/// Server and wasm must come from the same kind of build, or hydration breaks.
fn dashboard(release: bool) -> anyhow::Result<()> {
    ensure_dashboard_tools()?;
    let profile = if release { "release" } else { "debug" };
    let mut args =
        vec!["build", "-p", "berth-frontend", "--lib", "--target", "wasm32-unknown-unknown", "--features", "hydrate"];
    // Release wasm uses its own profile (no debug info, optimised for size, LTO).
    let wasm_profile = if release { "wasm-release" } else { "debug" };
    if release {
        args.extend(["--profile", "wasm-release"]);
    }
    cargo(&args)?;
    let target = target_dir();
    let wasm = target.join("wasm32-unknown-unknown").join(wasm_profile).join("berth_frontend.wasm");
    let out = target.join(profile).join("site").join("pkg");
    eprintln!("xtask: wasm-bindgen -> {}", out.display());
    let status = Command::new("wasm-bindgen")
        .args(["--target", "web", "--no-typescript", "--out-name", "berth", "--out-dir"])
        .arg(&out)
        .arg(&wasm)
        .status()
        .context("running wasm-bindgen (cargo install wasm-bindgen-cli at the version in Cargo.lock; .ci/run does)")?;
    if !status.success() {
        bail!("wasm-bindgen failed");
    }
    Ok(())
}

/// Installs a cargo subcommand from crates.io when `binary` is not on the PATH.
fn ensure_cargo_tool(binary: &str, krate: &str) -> anyhow::Result<()> {
    if Command::new(binary).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    cargo(&["install", "--locked", krate])
}

/// Installs what the browser build needs when it is missing: the wasm32 target, and wasm-bindgen
/// at exactly the version of the `wasm-bindgen` crate in `Cargo.lock` (it refuses other versions'
/// output). GitHub is not reachable here, so the CLI is built from crates.io (~2 min, once).
fn ensure_dashboard_tools() -> anyhow::Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    let has_target = installed
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "wasm32-unknown-unknown"))
        .unwrap_or(false);
    if !has_target {
        eprintln!("xtask: rustup target add wasm32-unknown-unknown");
        let status = Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]).status()?;
        if !status.success() {
            bail!("rustup target add wasm32-unknown-unknown failed");
        }
    }
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock"))?;
    let wanted = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"wasm-bindgen\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .and_then(|v| v.strip_suffix('"'))
        .context("no wasm-bindgen in Cargo.lock")?
        .to_string();
    let have = Command::new("wasm-bindgen")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(1).unwrap_or_default().to_string())
        .unwrap_or_default();
    if have != wanted {
        cargo(&["install", "wasm-bindgen-cli", "--version", &wanted])?;
    }
    Ok(())
}
