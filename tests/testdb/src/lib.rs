//! A real PostgreSQL for tests, run from the binaries of the Debian `postgresql` package: one
//! cluster per test process in a temporary directory, started by the first [`fresh_database`] and
//! shared by every later call, and a new empty database for every call, so tests stay isolated.
//!
//! Nothing outlives the test process. `postgres` is started by a thread that never exits, with
//! SIGQUIT as its parent-death signal, and a `sh` watchdog removes the cluster directory once the
//! process is gone. A directory left by a run killed harder than that is named after its pid, and
//! the next run removes it.

use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rustix::process::{Gid, Signal, Uid};

/// The cluster's superuser, and the system user that runs the server when the tests run as root.
const SUPERUSER: &str = "postgres";

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The cluster directories in the temporary directory are named this, then the pid.
const DIR_PREFIX: &str = "berth-testdb-";

/// Where Debian installs each PostgreSQL version, in `<version>/bin`.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// A fresh, empty database on this process's PostgreSQL cluster, as a sqlx-style URL
/// (`postgres://postgres@127.0.0.1:PORT/NAME`), or `None` after printing a line to stderr when
/// the PostgreSQL binaries are absent, so that a skipped test shows in the output.
///
/// The first call starts the cluster (one to two seconds, mostly `initdb`); later calls only
/// create a database (a tenth of a second or two). It blocks: an async test may call it all the
/// same, the stall is short.
pub fn fresh_database() -> anyhow::Result<Option<String>> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let Some(cluster) = cluster()? else {
        let thread = std::thread::current();
        // The test harness names each test's thread after the test.
        let test = thread.name().filter(|name| *name != "main").unwrap_or("this test");
        // Straight to stderr rather than through `eprintln!`, which the test harness captures:
        // a skipped test must be visible.
        let _ = writeln!(
            std::io::stderr(),
            "berth-testdb: PostgreSQL binaries not found (looked in PATH and {DEBIAN_ROOT}/*/bin); skipping {test}"
        );
        return Ok(None);
    };
    let name = format!("t_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    psql(&cluster.psql, &cluster.url(SUPERUSER), &format!("CREATE DATABASE {name}"))
        .with_context(|| format!("creating database {name}; the end of the server's log:\n{}", cluster.log_tail()))?;
    Ok(Some(cluster.url(&name)))
}

/// True when the tests were asked to run on PostgreSQL: `BERTH_TEST_STORE=postgres`.
pub fn postgres_requested() -> bool {
    std::env::var("BERTH_TEST_STORE").is_ok_and(|store| store == "postgres")
}

/// This process's cluster, started at the first call; `None` when the binaries are absent. A
/// failed start is kept, so every test reports it rather than each waiting for its own failure.
fn cluster() -> anyhow::Result<Option<&'static Cluster>> {
    static CLUSTER: OnceLock<Result<Option<Cluster>, String>> = OnceLock::new();
    match CLUSTER.get_or_init(|| Cluster::start().map_err(|error| format!("{error:#}"))) {
        Ok(cluster) => Ok(cluster.as_ref()),
        Err(error) => bail!("starting the tests' PostgreSQL cluster: {error}"),
    }
}

/// A running cluster: trust authentication, TCP on 127.0.0.1, the unix socket in its directory.
struct Cluster {
    port: u16,
    dir: PathBuf,
    psql: PathBuf,
    /// The watchdog's stdin, held open for as long as this process lives: the watchdog removes
    /// the directory when it reads the end of it.
    _watchdog: ChildStdin,
}

impl Cluster {
    fn start() -> anyhow::Result<Option<Cluster>> {
        let Some(binaries) = Binaries::find() else { return Ok(None) };
        // initdb and postgres refuse to run as root, as CI and the test machines run the tests.
        let owner = if rustix::process::geteuid().is_root() { Some(system_user(SUPERUSER)?) } else { None };
        let temp = std::env::temp_dir();
        remove_stale_clusters(&temp);
        let dir = temp.join(format!("{DIR_PREFIX}{}", std::process::id()));
        // Left by a killed process that had this pid before.
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing the stale {}", dir.display()))?;
        }
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid.as_raw()), Some(gid.as_raw()))
                .with_context(|| format!("giving {} to the {SUPERUSER} user", dir.display()))?;
        }
        let watchdog = spawn_watchdog(&dir)?;
        // The parent-death signal fires when the thread that forked the server exits, not the
        // process: the server is started by a thread that never does.
        let (sender, receiver) = mpsc::channel();
        let (server_binaries, server_dir) = (binaries.clone(), dir.clone());
        std::thread::Builder::new()
            .name("berth-testdb-postgres".into())
            .spawn(move || {
                match boot(&server_binaries, owner, &server_dir) {
                    Ok((mut server, port)) => {
                        let _ = sender.send(Ok(port));
                        // Reaps the server should it exit.
                        let _ = server.wait();
                    }
                    Err(error) => {
                        let _ = sender.send(Err(error));
                    }
                }
                loop {
                    std::thread::park();
                }
            })
            .context("starting the thread that runs the PostgreSQL server")?;
        let port = receiver.recv().context("the thread that runs the PostgreSQL server died")??;
        Ok(Some(Cluster { port, dir, psql: binaries.psql, _watchdog: watchdog }))
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    fn log_tail(&self) -> String {
        log_tail(&self.dir.join("postgres.log"))
    }
}

/// Initializes the cluster in `dir` and starts its server on a free port. Runs on the thread that
/// stays, since the server's parent-death signal is tied to it.
fn boot(binaries: &Binaries, owner: Option<(Uid, Gid)>, dir: &Path) -> anyhow::Result<(Child, u16)> {
    let data = dir.join("data");
    let mut initdb = Command::new(&binaries.initdb);
    initdb.args(["-A", "trust", "-U", SUPERUSER, "--no-sync", "-E", "UTF8", "--locale=C", "-D"]).arg(&data);
    let output = as_server(&mut initdb, dir, owner, Signal::KILL)
        .output()
        .with_context(|| format!("running {}", binaries.initdb.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            binaries.initdb.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let log = dir.join("postgres.log");
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("finding a free port")?
            .port();
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut postgres = Command::new(&binaries.postgres);
        postgres
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Speed over durability: a test database dies with its test.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            // Each store under test opens a pool of up to 16 connections (a server, two), and tests run
            // at once.
            .args(["-c", "max_connections=400"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("duplicating the log file")?)
            .stderr(log_file);
        // SIGQUIT rather than SIGKILL: an immediate shutdown that still removes the server's
        // System V shared memory segment, which a killed server leaves behind for good.
        let mut server = as_server(&mut postgres, dir, owner, Signal::QUIT)
            .spawn()
            .with_context(|| format!("starting {}", binaries.postgres.display()))?;
        let url = format!("postgres://{SUPERUSER}@127.0.0.1:{port}/{SUPERUSER}");
        match wait_until_ready(&mut server, &binaries.psql, &url)? {
            Started::Ready => return Ok((server, port)),
            // Someone took the port between our check and the server's bind: another one.
            Started::Exited(_)
                if fs::read_to_string(&log).is_ok_and(|text| text.contains("Address already in use")) =>
            {
                continue;
            }
            Started::Exited(status) => {
                bail!("{} exited ({status}) while starting:\n{}", binaries.postgres.display(), log_tail(&log))
            }
            Started::TimedOut(last_error) => {
                stop(&mut server);
                bail!(
                    "{} did not accept connections within {START_TIMEOUT:?} ({last_error:#}):\n{}",
                    binaries.postgres.display(),
                    log_tail(&log)
                )
            }
        }
    }
    bail!("{} found no free port in five tries:\n{}", binaries.postgres.display(), log_tail(&log))
}

enum Started {
    Ready,
    Exited(ExitStatus),
    /// With the last connection attempt's error.
    TimedOut(anyhow::Error),
}

/// Polls the server with `psql` until it answers a query, it exits or [`START_TIMEOUT`] passes.
fn wait_until_ready(server: &mut Child, psql_binary: &Path, url: &str) -> anyhow::Result<Started> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = server.try_wait().context("checking on the PostgreSQL server")? {
            return Ok(Started::Exited(status));
        }
        match psql(psql_binary, url, "SELECT 1") {
            Ok(_) => return Ok(Started::Ready),
            Err(error) if Instant::now() > deadline => return Ok(Started::TimedOut(error)),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Shuts the server down as its parent-death signal would, and waits for it.
fn stop(server: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(server.id() as i32) {
        let _ = rustix::process::kill_process(pid, Signal::QUIT);
    }
    let _ = server.wait();
}

/// Runs `sql` on the database at `url` with `psql`, and returns what it printed (unaligned, no
/// headers).
fn psql(psql: &Path, url: &str, sql: &str) -> anyhow::Result<String> {
    let mut command = Command::new(psql);
    command.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, "-d", url]).stdin(Stdio::null());
    without_pg_environment(&mut command).env("PGCONNECT_TIMEOUT", "10");
    let output = command.output().with_context(|| format!("running {}", psql.display()))?;
    if !output.status.success() {
        bail!(
            "{} -c {sql:?} on {url} failed ({}): {}",
            psql.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Removes the caller's `PG*` variables (PGHOST, PGOPTIONS, PGSERVICE…) from `command`: the
/// cluster's clients and server are configured by their arguments only.
fn without_pg_environment(command: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"PG") {
            command.env_remove(key);
        }
    }
    command
}

/// Prepares `command` to run in `dir` as `owner` (the current user when `None`), in a process
/// group of its own so that a Ctrl-C reaches only the tests, and with `death_signal` sent to it
/// when the forking thread exits.
#[allow(unsafe_code)] // `pre_exec`; see the SAFETY comment.
fn as_server<'c>(
    command: &'c mut Command,
    dir: &Path,
    owner: Option<(Uid, Gid)>,
    death_signal: Signal,
) -> &'c mut Command {
    without_pg_environment(command).current_dir(dir).process_group(0);
    let parent = rustix::process::getpid();
    let in_child = move || -> std::io::Result<()> {
        if let Some((uid, gid)) = owner {
            // The thread calls change the whole process: after the fork it is the only thread.
            rustix::thread::set_thread_groups(&[gid])?;
            rustix::thread::set_thread_gid(gid)?;
            rustix::thread::set_thread_uid(uid)?;
        }
        // After the credentials: changing them clears the parent-death signal.
        rustix::process::set_parent_process_death_signal(Some(death_signal))?;
        // The parent may have died before the signal was set, and then nothing would send it.
        if rustix::process::getppid() != Some(parent) {
            return Err(rustix::io::Errno::SRCH.into());
        }
        Ok(())
    };
    // SAFETY: between fork and exec the closure only makes system calls; it neither allocates
    // nor takes a lock, which another thread of the parent may have held at the fork.
    unsafe { command.pre_exec(in_child) }
}

/// Starts a `sh` that waits for the end of its stdin, which comes when this process exits (the
/// pipe is close-on-exec, so no other child holds it), then for the server to remove its pid file
/// on the way out, and removes `dir`. Its own process group keeps a Ctrl-C off it.
fn spawn_watchdog(dir: &Path) -> anyhow::Result<ChildStdin> {
    const SCRIPT: &str = r#"read -r line
i=0
while [ -e "$1/data/postmaster.pid" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
rm -rf "$1""#;
    let mut watchdog = Command::new("/bin/sh")
        .args(["-c", SCRIPT, "berth-testdb-watchdog"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting /bin/sh to remove the cluster directory at exit")?;
    Ok(watchdog.stdin.take().expect("BUG: the watchdog's stdin is piped"))
}

/// Removes the cluster directories in `parent` whose process is gone: a run killed before its
/// watchdog could act leaves about 40 MB.
fn remove_stale_clusters(parent: &Path) {
    // Without /proc every process would look dead, live clusters included.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|name| name.strip_prefix(DIR_PREFIX)).and_then(|pid| pid.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) && !Path::new(&format!("/proc/{pid}")).exists() {
            // Another run may be removing it too, or it may be another user's: not ours to fail on.
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The uid and gid of the system user `name`, from /etc/passwd.
fn system_user(name: &str) -> anyhow::Result<(Uid, Gid)> {
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if let [user, _, uid, gid, ..] = fields[..]
            && user == name
        {
            let uid = uid.parse().with_context(|| format!("the uid of {name} in /etc/passwd: {uid:?}"))?;
            let gid = gid.parse().with_context(|| format!("the gid of {name} in /etc/passwd: {gid:?}"))?;
            return Ok((Uid::from_raw(uid), Gid::from_raw(gid)));
        }
    }
    bail!(
        "the tests run as root, where initdb and postgres refuse to run, and there is no `{name}` user \
         to run them as (the Debian `postgresql` package creates it)"
    )
}

/// The PostgreSQL programs the cluster needs.
#[derive(Clone)]
struct Binaries {
    initdb: PathBuf,
    postgres: PathBuf,
    psql: PathBuf,
}

impl Binaries {
    /// The directory of the `postgres` on PATH (through symlinks such as /usr/local/bin/postgres),
    /// else the newest `/usr/lib/postgresql/<version>/bin`, that has `initdb` too. `psql` comes
    /// from the same directory, else from PATH.
    fn find() -> Option<Binaries> {
        let from_path = on_path("postgres")
            .and_then(|postgres| fs::canonicalize(postgres).ok())
            .and_then(|postgres| Some(postgres.parent()?.to_path_buf()));
        let dir = from_path
            .into_iter()
            .chain(debian_bin_dirs())
            .find(|dir| is_executable(&dir.join("postgres")) && is_executable(&dir.join("initdb")))?;
        let psql = Some(dir.join("psql")).filter(|psql| is_executable(psql)).or_else(|| on_path("psql"))?;
        Some(Binaries { initdb: dir.join("initdb"), postgres: dir.join("postgres"), psql })
    }
}

/// The `/usr/lib/postgresql/<version>/bin` directories, newest version first.
fn debian_bin_dirs() -> Vec<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(DEBIAN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name.to_str()?.split('.').map(|part| part.parse().ok()).collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The last lines of the server's log, for error messages.
fn log_tail(log: &Path) -> String {
    let text = fs::read(log).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_gets_its_own_database_reachable_at_its_url() -> anyhow::Result<()> {
        let Some(first) = fresh_database()? else { return Ok(()) };
        let second = fresh_database()?.context("BUG: the binaries were found for the first database")?;
        assert_ne!(first, second);
        let psql_binary = &cluster()?.context("BUG: the cluster runs")?.psql;
        for url in [&first, &second] {
            assert_eq!(psql(psql_binary, url, "SELECT 1")?, "1");
            let name = url.rsplit('/').next().expect("BUG: a URL has a slash");
            assert_eq!(psql(psql_binary, url, "SELECT current_database()")?, name);
        }
        psql(psql_binary, &first, "CREATE TABLE only_in_the_first (id integer)")?;
        let count = "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_the_first'";
        assert_eq!(psql(psql_binary, &first, count)?, "1");
        assert_eq!(psql(psql_binary, &second, count)?, "0", "the databases are distinct");
        Ok(())
    }

    #[test]
    fn the_server_runs_as_postgres_under_root_else_as_the_caller() -> anyhow::Result<()> {
        let Some(_) = fresh_database()? else { return Ok(()) };
        let cluster = cluster()?.context("BUG: the cluster runs")?;
        let pid = fs::read_to_string(cluster.dir.join("data/postmaster.pid"))?;
        let pid = pid.lines().next().context("an empty postmaster.pid")?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let uid = status.lines().find_map(|line| line.strip_prefix("Uid:")).context("no Uid in the status")?;
        let uid: u32 = uid.split_whitespace().next().context("an empty Uid line")?.parse()?;
        let euid = rustix::process::geteuid();
        let expected = if euid.is_root() { system_user(SUPERUSER)?.0 } else { euid };
        assert_eq!(uid, expected.as_raw());
        Ok(())
    }

    #[test]
    fn stale_cluster_directories_are_removed_and_live_ones_kept() -> anyhow::Result<()> {
        // Not a cluster directory name itself (no pid right after the prefix), so that other
        // runs' sweeps leave it alone.
        let parent = std::env::temp_dir().join(format!("{DIR_PREFIX}sweep-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&parent);
        let pid_max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")?.trim().parse()?;
        // No pid reaches pid_max.
        let dead = parent.join(format!("{DIR_PREFIX}{}", pid_max * 2));
        let live = parent.join(format!("{DIR_PREFIX}{}", std::process::id()));
        let not_a_cluster = parent.join(format!("{DIR_PREFIX}notes"));
        for dir in [&dead, &live, &not_a_cluster] {
            fs::create_dir_all(dir.join("data"))?;
            fs::write(dir.join("data/PG_VERSION"), "15\n")?;
        }
        remove_stale_clusters(&parent);
        let kept = (dead.exists(), live.exists(), not_a_cluster.exists());
        fs::remove_dir_all(&parent)?;
        assert_eq!(kept, (false, true, true), "(dead, live, not a cluster) kept");
        Ok(())
    }

    /// Run in a child process by [`nothing_outlives_the_test_process`]: starts the cluster and
    /// prints its directory and the server's pid.
    #[test]
    #[ignore = "run in a child process by nothing_outlives_the_test_process"]
    fn start_a_cluster_and_exit() -> anyhow::Result<()> {
        let Some(_) = fresh_database()? else { return Ok(()) };
        let cluster = cluster()?.context("BUG: the cluster runs")?;
        let pid = fs::read_to_string(cluster.dir.join("data/postmaster.pid"))?;
        let pid = pid.lines().next().context("an empty postmaster.pid")?;
        println!("\nstarted-cluster {} {pid}", cluster.dir.display());
        Ok(())
    }

    #[test]
    fn nothing_outlives_the_test_process() -> anyhow::Result<()> {
        if Binaries::find().is_none() {
            // Prints the skip line.
            return fresh_database().map(drop);
        }
        let output = Command::new(std::env::current_exe()?)
            .args(["--exact", "tests::start_a_cluster_and_exit", "--ignored", "--nocapture", "--test-threads=1"])
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        let line = stdout.lines().find_map(|line| line.strip_prefix("started-cluster "));
        let line = line.with_context(|| format!("no started-cluster line in the child's output:\n{stdout}"))?;
        let (dir, pid) = line.rsplit_once(' ').context("no pid in the cluster line")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        // A zombie waits for the init process to reap it; it is gone as far as the tests care.
        let server_alive = || {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
        };
        while (server_alive() || Path::new(dir).exists()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!server_alive(), "the server {pid} outlived its test process");
        assert!(!Path::new(dir).exists(), "{dir} outlived its test process");
        Ok(())
    }
}
