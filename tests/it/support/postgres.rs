//! Throwaway PostgreSQL servers for the tests: `DATABASE_URL`'s server when it is set, else one
//! started from the machine's PostgreSQL binaries in a temporary directory, with a fresh database
//! per test (dropped when the test is done with it); and dedicated servers a test may stop and
//! start again. The servers started here listen on a Unix socket in their own directory only, so
//! no TCP port is picked, released and bound later by someone else.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::sync::OnceCell;

/// Where the server binaries are looked for, in order, after `$OPAMPD_PG_BIN`.
fn binary_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("OPAMPD_PG_BIN")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.push(PathBuf::from("/usr/local/pgsql/bin"));
    dirs
}

fn find_binaries() -> PathBuf {
    let dirs = binary_dirs();
    dirs.iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server binaries (initdb and postgres) found in $OPAMPD_PG_BIN, \
                 PATH, /usr/lib/postgresql/*/bin or /usr/local/pgsql/bin; install PostgreSQL \
                 (Debian: apt-get install postgresql), set OPAMPD_PG_BIN to their directory, or set \
                 DATABASE_URL to a PostgreSQL server whose user may create databases"
            )
        })
}

/// The unprivileged account to run PostgreSQL as when the tests run as root (initdb refuses root).
fn unprivileged() -> Option<(u32, u32)> {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let ids = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"nobody"))
            .then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
            .flatten()
    });
    Some(ids.unwrap_or((65534, 65534)))
}

/// `program args…`, as the unprivileged user when there is one.
fn as_user(user: Option<(u32, u32)>, program: &Path) -> Command {
    match user {
        Some((uid, gid)) => {
            let mut command = Command::new("setpriv");
            command
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// The port only names the socket file (`.s.PGSQL.5432`) in the server's own directory.
const SOCKET_PORT: u16 = 5432;

/// initdb, a start or a stop: seconds on an idle machine, never this long.
const SERVER_DEADLINE: Duration = Duration::from_mins(1);

/// Keeps PostgreSQL running and cleans up after it. It reads commands on stdin (`stop`, `start`,
/// each acknowledged with `done`); at end of input, which comes at the latest when the test
/// process exits however it exits, it stops the server at once and deletes its directory.
const WATCHDOG: &str = r#"
dir=$1; port=$2; postgres=$3; durability=$4; shift 4
start() {
    "$@" "$postgres" -D "$dir/data" -p "$port" -k "$dir" -c listen_addresses='' \
        $durability -c max_connections=300 \
        >>"$dir/server.log" 2>&1 &
    pid=$!
}
start "$@"
while read -r command; do
    case "$command" in
        stop) kill -INT "$pid"; wait "$pid" ;;
        start) start "$@" ;;
    esac
    echo done
done
kill -QUIT "$pid" 2>/dev/null
wait "$pid"
rm -rf "$dir"
"#;

struct Process {
    dir: PathBuf,
    watchdog: Child,
    commands: ChildStdin,
    acks: BufReader<ChildStdout>,
    port: u16,
}

/// Tests trade durability for speed; benchmarks measure a server that keeps its promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync, full page writes and synchronous commit off.
    Off,
    /// PostgreSQL's defaults: fsync on.
    #[allow(dead_code)] // for the benchmarks, which include this file
    On,
}

impl Process {
    /// initdb in a new temporary directory, then the server on its socket there.
    fn launch() -> Self {
        Self::launch_with(Durability::Off)
    }

    fn launch_with(durability: Durability) -> Self {
        Self::launch_on(durability, None)
    }

    /// With `tls` (a certificate and its key, PEM), the server also listens on 127.0.0.1 at
    /// a free port with `ssl = on` (the socket stays, for the admin connection).
    fn launch_on(durability: Durability, tls: Option<(&str, &str)>) -> Self {
        let bin = find_binaries();
        // The socket lives in the server's own directory, so every server can use the same
        // port; one that also listens on TCP needs a port nobody holds.
        let port = if tls.is_some() {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port()
        } else {
            SOCKET_PORT
        };
        let user = unprivileged();
        let dir = tempfile::Builder::new()
            .prefix("opampd-pg-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the directory");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let initdb = as_user(user, &bin.join("initdb"))
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(dir.join("data"))
            .output()
            .expect("initdb runs");
        assert!(
            initdb.status.success(),
            "initdb failed in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&initdb.stderr)
        );
        let mut options = match durability {
            Durability::Off => "-c fsync=off -c full_page_writes=off -c synchronous_commit=off",
            Durability::On => "-c fsync=on",
        }
        .to_owned();
        if let Some((cert, key)) = tls {
            // The key must belong to the server's user and be readable by it alone.
            for (name, pem, mode) in [("server.pem", cert, 0o644), ("server.key", key, 0o600)] {
                let path = dir.join(name);
                std::fs::write(&path, pem).expect("write a TLS file");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .expect("chmod a TLS file");
                if let Some((uid, gid)) = user {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
                }
            }
            // Later settings win over the watchdog's `listen_addresses=''`.
            let dir = dir.display();
            options = format!(
                "{options} -c listen_addresses=127.0.0.1 -c ssl=on \
                 -c ssl_cert_file={dir}/server.pem -c ssl_key_file={dir}/server.key"
            );
        }
        let mut command = Command::new("sh");
        command
            .args(["-c", WATCHDOG, "watchdog"])
            .arg(&dir)
            .arg(port.to_string())
            .arg(bin.join("postgres"))
            .arg(options);
        if let Some((uid, gid)) = user {
            command.args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
            ]);
        }
        let mut watchdog = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the PostgreSQL watchdog starts");
        let commands = watchdog.stdin.take().expect("piped stdin");
        let acks = BufReader::new(watchdog.stdout.take().expect("piped stdout"));
        Self {
            dir,
            watchdog,
            commands,
            acks,
            port,
        }
    }

    fn admin_url(&self) -> String {
        format!(
            "postgres://postgres@localhost:{}/postgres?host={}",
            self.port,
            self.dir.display()
        )
    }

    fn tell(&mut self, command: &str) {
        writeln!(self.commands, "{command}").expect("the watchdog takes commands");
        let mut ack = String::new();
        self.acks.read_line(&mut ack).expect("the watchdog answers");
        assert_eq!(ack.trim(), "done", "watchdog: {ack:?}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Polls until the server accepts connections.
    async fn ready(&self) {
        assert!(
            self.ready_or_port_taken().await,
            "PostgreSQL in {} could not bind its port; its log:\n{}",
            self.dir.display(),
            self.log()
        );
    }

    /// Polls until the server accepts connections (true), or says it could not bind its TCP
    /// port (false): the free port it was given was taken by someone else in between.
    async fn ready_or_port_taken(&self) -> bool {
        let url = self.admin_url();
        let deadline = tokio::time::Instant::now() + SERVER_DEADLINE;
        loop {
            if PgConnection::connect(&url).await.is_ok() {
                return true;
            }
            if self.log().contains("could not create any TCP/IP sockets") {
                return false;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "PostgreSQL in {} did not accept connections; its log:\n{}",
                self.dir.display(),
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// `url` with its database name replaced by `name` (its query, a socket directory say, kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (server, _) = base.rsplit_once('/').expect("a URL with a database");
    if query.is_empty() {
        format!("{server}/{name}")
    } else {
        format!("{server}/{name}?{query}")
    }
}

/// Creates database `name` on the server at `admin_url` and returns its URL.
async fn create_database(admin_url: &str, name: &str) -> String {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {admin_url}: {e}"));
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    with_database(admin_url, name)
}

/// Runs a blocking step of a server's life on a thread of its own, within the deadline.
async fn blocking<T: Send + 'static>(what: &str, step: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::time::timeout(SERVER_DEADLINE, tokio::task::spawn_blocking(step))
        .await
        .unwrap_or_else(|_| panic!("PostgreSQL: {what} took longer than {SERVER_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("PostgreSQL: {what} failed: {e}"))
}

/// The shared server's admin URL; the process (if we started one) lives as long as the tests.
static SHARED: OnceCell<(String, Option<Mutex<Process>>)> = OnceCell::const_new();

async fn shared_admin_url() -> &'static str {
    let (url, _) = SHARED
        .get_or_init(|| async {
            if let Ok(url) = std::env::var("DATABASE_URL") {
                assert!(
                    url.starts_with("postgres://") || url.starts_with("postgresql://"),
                    "DATABASE_URL must be a postgres:// URL, got {url}"
                );
                return (url, None);
            }
            let process = blocking("initdb and start", Process::launch).await;
            process.ready().await;
            (process.admin_url(), Some(Mutex::new(process)))
        })
        .await;
    url
}

/// A new, empty database on the shared server, dropped when this is dropped: a shared server
/// (`DATABASE_URL`) does not collect one database per test run.
pub struct PgDatabase {
    pub url: String,
    admin_url: &'static str,
    name: String,
}

pub async fn fresh_database() -> PgDatabase {
    let name = format!("opampd_test_{}", uuid::Uuid::now_v7().simple());
    let admin_url = shared_admin_url().await;
    PgDatabase {
        url: create_database(admin_url, &name).await,
        admin_url,
        name,
    }
}

impl Drop for PgDatabase {
    /// On a thread with a runtime of its own: the test's runtime may be the one being dropped.
    /// `FORCE` ends the sessions a server under test still holds.
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url, self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let mut admin = PgConnection::connect(admin_url).await?;
                let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                sqlx::query(&drop).execute(&mut admin).await?;
                Ok::<_, sqlx::Error>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("cannot drop test database {}: {err}", self.name),
            Err(_) => eprintln!(
                "cannot drop test database {}: the thread panicked",
                self.name
            ),
        }
    }
}

/// A server of the test's own, which it may stop and start again (same socket, same data).
pub struct PgServer {
    process: Option<Process>,
}

impl PgServer {
    pub async fn start() -> Self {
        Self::start_with(Durability::Off).await
    }

    pub async fn start_with(durability: Durability) -> Self {
        let process = blocking("initdb and start", move || Process::launch_with(durability)).await;
        process.ready().await;
        Self {
            process: Some(process),
        }
    }

    /// A server that also takes TLS connections on 127.0.0.1, with this certificate and key
    /// (PEM). Returns it and the TCP URL of database
    /// `name`, created on it, without TLS parameters.
    #[allow(dead_code)] // the benchmarks include this file
    pub async fn start_tls(cert: &str, key: &str, name: &str) -> (Self, String) {
        // The port is picked free, let go and bound by PostgreSQL, which cannot say which port
        // it took: another process may take it in between, so a refused bind starts again.
        let mut attempts = 0;
        let mut server = loop {
            let (cert, key) = (cert.to_owned(), key.to_owned());
            let process = blocking("initdb and start", move || {
                Process::launch_on(Durability::Off, Some((&cert, &key)))
            })
            .await;
            let up = process.ready_or_port_taken().await;
            let server = Self {
                process: Some(process),
            };
            if up {
                break server;
            }
            attempts += 1;
            assert!(attempts < 5, "PostgreSQL never found its TCP port free");
        };
        let port = server.process().port;
        server.create_database(name).await;
        (
            server,
            format!("postgres://postgres@127.0.0.1:{port}/{name}"),
        )
    }

    fn process(&mut self) -> &mut Process {
        self.process.as_mut().expect("the server process")
    }

    pub async fn create_database(&mut self, name: &str) -> String {
        create_database(&self.process().admin_url(), name).await
    }

    /// Fast shutdown: connections are cut, and the call returns once the server has exited.
    pub async fn stop(&mut self) {
        let mut process = self.process.take().expect("the server process");
        let process = blocking("stop", move || {
            process.tell("stop");
            process
        })
        .await;
        self.process = Some(process);
    }

    /// Starts it again on the same socket and data directory, and waits until it accepts connections.
    pub async fn restart(&mut self) {
        let mut process = self.process.take().expect("the server process");
        let process = blocking("start", move || {
            process.tell("start");
            process
        })
        .await;
        process.ready().await;
        self.process = Some(process);
    }
}

impl Drop for PgServer {
    /// Closing the watchdog's input stops the server and deletes its directory.
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            let Process {
                mut watchdog,
                commands,
                ..
            } = process;
            drop(commands);
            let deadline = std::time::Instant::now() + SERVER_DEADLINE;
            while matches!(watchdog.try_wait(), Ok(None)) {
                if std::time::Instant::now() > deadline {
                    eprintln!("the PostgreSQL watchdog did not stop in time; killing it");
                    let _ = watchdog.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
