//! A private RabbitMQ node, for the integration tests, the benchmarks and the demo.
//!
//! [`Broker::start`] runs a RabbitMQ node that belongs to its process alone: its own node name
//! (`rabbit-<pid>-<n>@localhost`), its own ports, its own Erlang port mapper (epmd), its own data,
//! log and configuration files in a temporary folder, and nothing read from `/etc/rabbitmq` or
//! `/var/lib/rabbitmq`. Every listener is bound to 127.0.0.1. Several test processes can therefore
//! run brokers side by side, and a broker never touches the system service.
//!
//! # What the broker offers
//!
//! - AMQP on [`Broker::amqp_port`], with an administrator made for the test
//!   ([`Broker::amqp_url`] carries its name and password);
//! - AMQPS on [`Broker::amqps_port`], with the development PKI of `certs/dev` (`ca.pem`,
//!   `server.pem`, `server.key`, copied into the temporary folder): the broker asks for a client
//!   certificate (`verify_peer`) without requiring one (`fail_if_no_peer_cert = false`), and the
//!   `rabbitmq_auth_mechanism_ssl` plugin offers SASL EXTERNAL;
//! - EXTERNAL maps a certificate to the user named by its **first URI subject alternative name**
//!   (`ssl_cert_login_from = subject_alternative_name`, `ssl_cert_login_san_type = uri`,
//!   `ssl_cert_login_san_index = 0`): the certificate of partner `ci.ambassade.rabat` logs in as
//!   the broker user `urn:partner:ci.ambassade.rabat`, the gateway's client certificate as
//!   `urn:gateway:passerelle` ([`partner_user`]). The common name is never used, as in the
//!   gateway's own TLS policy (`src/tls.rs`). The user must exist ([`Broker::add_user`]; its
//!   password is never used by EXTERNAL) and have permissions ([`Broker::set_permissions`]).
//!
//! # Processes, and how nothing is left running
//!
//! `start` runs, in one process group of its own:
//!
//! - `epmd -port <epmd port> -address 127.0.0.1`, in the foreground (the broker and the CLI find
//!   it through `ERL_EPMD_PORT`, so the system's epmd on 4369 is neither used nor started);
//! - `rabbitmq-server` (the shell script, which runs the Erlang VM as its child);
//! - every `rabbitmqctl` call, each with a time limit.
//!
//! A watchdog shell (`sh`, in a group of its own so that a Ctrl-C on the terminal does not reach
//! it) reads a pipe whose write end only the test process holds. When the test process ends, in
//! any way (normal exit, panic, `SIGKILL`), or when the [`Broker`] is dropped, the pipe closes; the
//! watchdog then kills the whole process group with `SIGKILL` and deletes the temporary folder.
//! This is what makes a broker shared through a `static` safe: statics are never dropped, but the
//! kernel closes the pipe when the process exits. [`Drop`] closes the pipe itself and waits for the
//! watchdog, so a dropped broker is gone when `drop` returns.
//!
//! [`Broker::stop`] is graceful (`SIGTERM` to `rabbitmq-server`, which stops the node cleanly);
//! [`Broker::restart`] stops then starts the node again with the same node name, ports and data.
//!
//! # Running as root
//!
//! The Debian wrappers in `/usr/sbin` switch to the `rabbitmq` user when run as root and use the
//! system's folders. The harness never runs them: it uses the scripts they wrap (resolving the
//! wrapper's symbolic link when `PATH` leads to one), which run as the current user, root
//! included, with the folders given in the environment.
//!
//! # Finding RabbitMQ
//!
//! `PASSERELLE_RABBITMQ_BIN` (a folder holding `rabbitmq-server` and `rabbitmqctl`) if set, else
//! `rabbitmq-server` found through `PATH`, else `/usr/lib/rabbitmq/bin` (the Debian package's
//! folder). A missing broker makes `start` panic with instructions, so that a test that needs the
//! broker never skips silently; [`Broker::try_start`] returns the reason instead, for callers
//! that can do without a broker (the demo).
//!
//! # Time limits
//!
//! Start-up waits at most `PASSERELLE_RABBITMQ_START_TIMEOUT` seconds (default 120), a graceful
//! stop at most 60 s and a `rabbitmqctl` call at most 60 s; each panics with the broker's log
//! when it runs out.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The environment variable naming a folder that holds `rabbitmq-server` and `rabbitmqctl`.
pub const BIN_ENV: &str = "PASSERELLE_RABBITMQ_BIN";
/// The environment variable bounding the start-up wait, in seconds.
pub const START_TIMEOUT_ENV: &str = "PASSERELLE_RABBITMQ_START_TIMEOUT";
/// The Debian package's folder of RabbitMQ scripts, used when `PATH` has no `rabbitmq-server`.
const DEBIAN_BIN_DIR: &str = "/usr/lib/rabbitmq/bin";
/// The file name of the Debian wrapper that `/usr/sbin/rabbitmq-*` link to.
const DEBIAN_WRAPPER: &str = "rabbitmq-script-wrapper";
/// The default start-up time limit.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(120);
/// The time limit of a graceful stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// The time limit of one `rabbitmqctl` call.
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the harness polls a process or a port.
const POLL: Duration = Duration::from_millis(50);
/// What the node logs once it has booted, plugins included.
const READY_LINE: &str = "Server startup complete";
/// How long the harness waits for [`READY_LINE`] once the AMQP port is open, before asking
/// `rabbitmqctl await_startup` instead.
const READY_LINE_GRACE: Duration = Duration::from_secs(10);
/// The development PKI files the broker's TLS listener uses, copied from `certs/dev`.
const TLS_FILES: [&str; 3] = ["ca.pem", "server.pem", "server.key"];

/// The broker user that SASL EXTERNAL maps the development certificate of `partner` to: its URI
/// subject alternative name, `urn:partner:<id>`.
pub fn partner_user(partner: &str) -> String {
    format!("urn:partner:{partner}")
}

/// The development PKI folder, `certs/dev` from the repository's root (the working folder of
/// tests, benchmarks and the demo).
pub fn dev_certs_dir() -> PathBuf {
    PathBuf::from("certs/dev")
}

/// Whether RabbitMQ looks installed: its scripts and Erlang's `epmd` are found.
pub fn is_installed() -> bool {
    find_rabbitmq_bin_quietly().is_some() && find_in_path("epmd").is_some()
}

/// A private RabbitMQ node, killed (with its epmd) when dropped or when the test process ends.
#[derive(Debug)]
pub struct Broker {
    /// The folder of the RabbitMQ scripts.
    bin: PathBuf,
    /// The temporary folder: configuration, data, logs, cookie. `None` once dropped.
    dir: Option<tempfile::TempDir>,
    node: String,
    amqp_port: u16,
    amqps_port: u16,
    dist_port: u16,
    epmd_port: u16,
    admin_user: String,
    admin_password: String,
    /// The environment every RabbitMQ process of this broker runs with.
    env: Vec<(String, OsString)>,
    /// The process group of epmd, the node and the CLI calls (epmd's pid).
    group: u32,
    epmd: Child,
    /// The watchdog and the write end of its pipe.
    watchdog: Child,
    watchdog_pipe: Option<ChildStdin>,
    /// `rabbitmq-server`, while it runs.
    server: Option<Child>,
    /// How long the last start took, until the node accepted AMQP and had booted.
    last_start: Duration,
    /// How long the last graceful stop took.
    last_stop: Option<Duration>,
}

impl Broker {
    /// Starts a private broker, or says why it could not. The harness reports its failures by
    /// panicking (it serves tests first); this turns such a failure into an error.
    pub fn try_start() -> Result<Self, String> {
        std::panic::catch_unwind(Self::start).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "the broker did not start".to_owned())
        })
    }

    /// Starts a private broker and waits until it is ready, or panics saying why.
    ///
    /// # Panics
    ///
    /// When RabbitMQ or epmd is not installed, when a file cannot be written, or when the node
    /// does not boot within the time limit (the broker's log is printed).
    pub fn start() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let bin = find_rabbitmq_bin();
        let epmd_program = find_in_path("epmd").unwrap_or_else(|| {
            panic!(
                "\n\n*** cannot start a test RabbitMQ broker: `epmd` (Erlang's port mapper) is not \
                 in PATH. Install the Debian package `rabbitmq-server` (it brings Erlang). ***\n"
            )
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let node = format!("rabbit-{}-{n}@localhost", std::process::id());
        let [amqp_port, amqps_port, dist_port, epmd_port] = crate::loopback::free_ports();
        let dir = tempfile::Builder::new()
            .prefix("passerelle-rabbit-")
            .tempdir()
            .expect("create the broker's temporary folder");
        let admin_user = format!("passerelle-test-{n}");
        let admin_password = random_hex(16);
        write_files(
            dir.path(),
            amqp_port,
            amqps_port,
            &admin_user,
            &admin_password,
        );
        let env = environment(dir.path(), &node, amqp_port, dist_port, epmd_port);

        // epmd first: its pid names the process group of everything else.
        let epmd = Command::new(&epmd_program)
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", epmd_program.display()));
        let group = epmd.id();
        let (watchdog, watchdog_pipe) = match spawn_watchdog(group, dir.path()) {
            Ok(watchdog) => watchdog,
            Err(error) => {
                let mut epmd = epmd;
                let _ = epmd.kill();
                let _ = epmd.wait();
                panic!("cannot run the broker's watchdog (sh): {error}");
            }
        };
        let mut broker = Self {
            bin,
            dir: Some(dir),
            node,
            amqp_port,
            amqps_port,
            dist_port,
            epmd_port,
            admin_user,
            admin_password,
            env,
            group,
            epmd,
            watchdog,
            watchdog_pipe: Some(watchdog_pipe),
            server: None,
            last_start: Duration::ZERO,
            last_stop: None,
        };
        let started = Instant::now();
        broker.wait_for_port(epmd_port, started + Duration::from_secs(10), "epmd");
        broker.start_node();
        broker
    }

    /// The node name, `rabbit-<pid>-<n>@localhost`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The plain AMQP port, on 127.0.0.1.
    pub fn amqp_port(&self) -> u16 {
        self.amqp_port
    }

    /// The AMQPS port (TLS, development PKI, EXTERNAL), on 127.0.0.1.
    pub fn amqps_port(&self) -> u16 {
        self.amqps_port
    }

    /// The Erlang distribution port of the node, on 127.0.0.1.
    pub fn dist_port(&self) -> u16 {
        self.dist_port
    }

    /// The port of this broker's own epmd, on 127.0.0.1.
    pub fn epmd_port(&self) -> u16 {
        self.epmd_port
    }

    /// The administrator made for the test: user name and password.
    pub fn admin(&self) -> (&str, &str) {
        (&self.admin_user, &self.admin_password)
    }

    /// `amqp://<admin>:<password>@127.0.0.1:<port>/%2f`: plain AMQP as the administrator, on the
    /// default virtual host.
    pub fn amqp_url(&self) -> String {
        self.amqp_url_for(&self.admin_user, &self.admin_password)
    }

    /// `amqp://<user>:<password>@127.0.0.1:<port>/%2f` (user and password percent-encoded).
    pub fn amqp_url_for(&self, user: &str, password: &str) -> String {
        format!(
            "amqp://{}:{}@127.0.0.1:{}/%2f",
            percent_encode(user),
            percent_encode(password),
            self.amqp_port
        )
    }

    /// `amqps://127.0.0.1:<port>/%2f`, the URL for EXTERNAL over TLS.
    pub fn amqps_url(&self) -> String {
        format!("amqps://127.0.0.1:{}/%2f", self.amqps_port)
    }

    /// How long the last start took, from launching the node until it had booted.
    pub fn start_time(&self) -> Duration {
        self.last_start
    }

    /// How long the last graceful stop took, if there was one.
    pub fn stop_time(&self) -> Option<Duration> {
        self.last_stop
    }

    /// The temporary folder of the broker (configuration, `mnesia/`, `log/`).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the broker is running").path()
    }

    /// Adds a user on the broker.
    pub fn add_user(&self, name: &str, password: &str) {
        self.rabbitmqctl(&["add_user", "--", name, password]);
    }

    /// Deletes a user.
    pub fn delete_user(&self, name: &str) {
        self.rabbitmqctl(&["delete_user", "--", name]);
    }

    /// Sets a user's permissions on the virtual host `/`: `configure`, `write` and `read` are
    /// regular expressions on resource names (`""` grants nothing, `".*"` everything).
    pub fn set_permissions(&self, user: &str, configure: &str, write: &str, read: &str) {
        self.rabbitmqctl(&[
            "set_permissions",
            "-p",
            "/",
            "--",
            user,
            configure,
            write,
            read,
        ]);
    }

    /// Runs `rabbitmqctl -q -n <node> <args…>` against this broker and returns its standard
    /// output.
    ///
    /// # Panics
    ///
    /// When the command fails or outlives its time limit (its output is printed).
    pub fn rabbitmqctl(&self, args: &[&str]) -> String {
        let mut full = vec!["-q", "-n", &self.node];
        full.extend_from_slice(args);
        match self.ctl(&full, CTL_TIMEOUT) {
            Ok(output) => output,
            Err(failure) => panic!(
                "rabbitmqctl {} failed on {}:\n{failure}\n{}",
                args.join(" "),
                self.node,
                self.log_tail()
            ),
        }
    }

    /// Stops the node gracefully: `SIGTERM` to `rabbitmq-server`, which stops RabbitMQ and halts
    /// the Erlang VM. epmd and the data stay, for [`Broker::restart`].
    ///
    /// # Panics
    ///
    /// When the node is not running, or does not stop within the time limit (it is then killed).
    pub fn stop(&mut self) {
        let mut server = self.server.take().expect("the broker is not running");
        let started = Instant::now();
        let signalled = Command::new("sh")
            .args(["-c", r#"kill -TERM "$1""#, "sh", &server.id().to_string()])
            .status();
        if !matches!(signalled, Ok(status) if status.success()) {
            let _ = server.kill();
        }
        let deadline = started + STOP_TIMEOUT;
        loop {
            match server.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                _ => {
                    self.kill_vm(&mut server);
                    panic!(
                        "the broker {} did not stop within {STOP_TIMEOUT:?}; it was killed\n{}",
                        self.node,
                        self.log_tail()
                    );
                }
            }
        }
        // The script waits for the VM; make sure the VM is gone before reusing its ports.
        self.wait_until_unregistered(deadline);
        let elapsed = started.elapsed();
        self.last_stop = Some(elapsed);
        eprintln!("[rabbit] {} stopped in {elapsed:.2?}", self.node);
    }

    /// Stops the node gracefully, then starts it again on the same ports with the same name and
    /// data, and waits until it is ready.
    pub fn restart(&mut self) {
        self.stop();
        self.start_node();
    }

    /// Launches `rabbitmq-server` and waits until it accepts AMQP connections and has booted.
    fn start_node(&mut self) {
        assert!(self.server.is_none(), "the broker is already running");
        let dir = self.dir().to_owned();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.out"))
            .expect("open the broker's console log");
        let log_offset = fs::metadata(self.node_log()).map_or(0, |meta| meta.len());
        let started = Instant::now();
        let mut command = Command::new(self.bin.join("rabbitmq-server"));
        self.prepare(&mut command);
        let server = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicate the console log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run {}: {error}",
                    self.bin.join("rabbitmq-server").display()
                )
            });
        self.server = Some(server);
        let deadline = started + start_timeout();
        self.wait_for_port(self.amqp_port, deadline, "the AMQP listener");
        // The listener opens near the end of the boot; the node logs READY_LINE once the rest
        // (plugins included, such as the EXTERNAL mechanism) has started. Reading the log spares
        // a `rabbitmqctl` call (an Erlang VM start, about a second); should the line not come
        // (another RabbitMQ version), `rabbitmqctl await_startup` decides.
        let grace = deadline.min(Instant::now() + READY_LINE_GRACE);
        if !self.wait_for_log_line(log_offset, grace) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let node = self.node.clone();
            if let Err(failure) = self.ctl(
                &["-q", "-n", &node, "await_startup", "--timeout", "60"],
                remaining.max(Duration::from_secs(5)),
            ) {
                panic!(
                    "the broker {node} opened its AMQP port but did not finish booting:\n{failure}\n{}",
                    self.log_tail()
                );
            }
        }
        self.last_start = started.elapsed();
        eprintln!(
            "[rabbit] {} ready in {:.2?} (amqp 127.0.0.1:{}, amqps 127.0.0.1:{}, dist {}, epmd {})",
            self.node,
            self.last_start,
            self.amqp_port,
            self.amqps_port,
            self.dist_port,
            self.epmd_port
        );
    }

    /// The node's log file.
    fn node_log(&self) -> PathBuf {
        self.dir().join("log").join(format!("{}.log", self.node))
    }

    /// Waits until the node's log, past `offset`, says that the node has booted; `false` if it
    /// has not said so by `deadline`.
    fn wait_for_log_line(&mut self, offset: u64, deadline: Instant) -> bool {
        let log = self.node_log();
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        loop {
            let text = fs::read(&log).unwrap_or_default();
            if text
                .get(offset..)
                .is_some_and(|new| String::from_utf8_lossy(new).contains(READY_LINE))
            {
                return true;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "the broker {} exited ({status}) while booting\n{}",
                    self.node,
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until `port` on 127.0.0.1 accepts connections, checking that the node still runs.
    fn wait_for_port(&mut self, port: u16, deadline: Instant, what: &str) {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "the broker {} exited ({status}) before {what} accepted connections on \
                     127.0.0.1:{port}\n{}",
                    self.node,
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "the broker {}: {what} did not accept connections on 127.0.0.1:{port} in \
                     time (raise {START_TIMEOUT_ENV}, in seconds, on a slow machine)\n{}",
                    self.node,
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Whether epmd or `rabbitmq-server` has exited, and how.
    fn exited(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.epmd.try_wait() {
            return Some(status);
        }
        match self.server.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(status),
            _ => None,
        }
    }

    /// Waits until the node is no longer registered with epmd (its VM has exited).
    fn wait_until_unregistered(&self, deadline: Instant) {
        let short_name = self.node.split('@').next().unwrap_or_default();
        while Instant::now() < deadline {
            let names = Command::new(find_in_path("epmd").unwrap_or_else(|| "epmd".into()))
                .args(["-port", &self.epmd_port.to_string(), "-names"])
                .output();
            match names {
                Ok(output)
                    if !String::from_utf8_lossy(&output.stdout)
                        .lines()
                        .any(|line| line.starts_with(&format!("name {short_name} "))) =>
                {
                    return;
                }
                Err(_) => return,
                _ => std::thread::sleep(POLL),
            }
        }
    }

    /// Kills the VM of a node that would not stop (its pid is in the pid file), and the script.
    fn kill_vm(&self, server: &mut Child) {
        if let Ok(pid) = fs::read_to_string(self.dir().join("rabbit.pid")) {
            let _ = Command::new("sh")
                .args(["-c", r#"kill -9 "$1""#, "sh", pid.trim()])
                .status();
        }
        let _ = server.kill();
        let _ = server.wait();
    }

    /// Gives a command this broker's environment and process group.
    fn prepare(&self, command: &mut Command) {
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("RABBITMQ_") || name.starts_with("ERL_") {
                command.env_remove(&*name);
            }
        }
        command
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .current_dir(self.dir())
            .process_group(self.group as i32);
    }

    /// Runs `rabbitmqctl` with a time limit; its output on success, or a description of the
    /// failure.
    fn ctl(&self, args: &[&str], timeout: Duration) -> Result<String, String> {
        let dir = self.dir();
        let n = {
            static CALLS: AtomicUsize = AtomicUsize::new(0);
            CALLS.fetch_add(1, Ordering::Relaxed)
        };
        let out_path = dir.join(format!("ctl-{n}.out"));
        let err_path = dir.join(format!("ctl-{n}.err"));
        let stdout = fs::File::create(&out_path).map_err(|e| e.to_string())?;
        let stderr = fs::File::create(&err_path).map_err(|e| e.to_string())?;
        let mut command = Command::new(self.bin.join("rabbitmqctl"));
        self.prepare(&mut command);
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|error| format!("cannot run rabbitmqctl: {error}"))?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("rabbitmqctl did not finish within {timeout:?}"));
                }
                Err(error) => return Err(error.to_string()),
            }
        };
        let stdout = fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        let _ = fs::remove_file(out_path);
        let _ = fs::remove_file(err_path);
        if status.success() {
            Ok(stdout)
        } else {
            Err(format!("{status}\n{stdout}{stderr}"))
        }
    }

    /// The end of the broker's console output and log file, for panic messages.
    fn log_tail(&self) -> String {
        let Some(dir) = self.dir.as_ref().map(|dir| dir.path()) else {
            return String::new();
        };
        let mut tail = String::new();
        for file in [dir.join("server.out"), self.node_log()] {
            let text = fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            let _ = writeln!(tail, "--- last lines of {} ---", file.display());
            for line in &lines[from..] {
                let _ = writeln!(tail, "{line}");
            }
        }
        tail
    }
}

impl Drop for Broker {
    /// Kills the node, its VM and epmd (the watchdog kills the process group when its pipe
    /// closes), reaps them, and deletes the temporary folder.
    fn drop(&mut self) {
        drop(self.watchdog_pipe.take());
        let _ = self.watchdog.wait();
        // Should the watchdog have died before its time, kill the group here. The group still
        // exists: epmd, our child, is not reaped yet.
        let _ = Command::new("sh")
            .args([
                "-c",
                r#"kill -9 "-$1" 2>/dev/null"#,
                "sh",
                &self.group.to_string(),
            ])
            .status();
        let _ = self.epmd.kill();
        let _ = self.epmd.wait();
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        drop(self.dir.take());
    }
}

/// Starts the watchdog: when its standard input closes, it kills the process group `group` and
/// deletes `dir`. It ignores the terminal's signals and sits in a process group of its own.
fn spawn_watchdog(group: u32, dir: &Path) -> std::io::Result<(Child, ChildStdin)> {
    const SCRIPT: &str = r#"trap '' INT HUP QUIT TSTP
while read -r _; do :; done
kill -9 "-$1" 2>/dev/null
rm -rf -- "$2"
"#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("passerelle-rabbit-watchdog")
        .arg(group.to_string())
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let pipe = child.stdin.take().expect("the watchdog's stdin is piped");
    Ok((child, pipe))
}

/// Finds the folder of the RabbitMQ scripts, or panics with instructions.
fn find_rabbitmq_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_ENV) {
        let dir = PathBuf::from(dir);
        assert!(
            holds_scripts(&dir),
            "{BIN_ENV}={} holds no rabbitmq-server and rabbitmqctl",
            dir.display()
        );
        return dir;
    }
    find_rabbitmq_bin_quietly().unwrap_or_else(|| {
        panic!(
            "\n\n*** RabbitMQ is not installed: these tests need a real broker, and found no \
             `rabbitmq-server` in PATH nor in {DEBIAN_BIN_DIR}.\n*** Install it (Debian: `apt-get \
             install rabbitmq-server`; the system service need not run) or set {BIN_ENV} to the \
             folder holding rabbitmq-server and rabbitmqctl. ***\n"
        )
    })
}

fn holds_scripts(dir: &Path) -> bool {
    dir.join("rabbitmq-server").is_file() && dir.join("rabbitmqctl").is_file()
}

/// The folder of the RabbitMQ scripts, if any is found.
fn find_rabbitmq_bin_quietly() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_ENV) {
        return Some(PathBuf::from(dir)).filter(|d| holds_scripts(d));
    }
    if let Some(found) = find_in_path("rabbitmq-server") {
        // The Debian wrapper (/usr/sbin/rabbitmq-server) switches to the `rabbitmq` user as
        // root: use the scripts next to the wrapper it links to instead.
        let resolved = fs::canonicalize(&found).unwrap_or(found.clone());
        let dir = if resolved
            .file_name()
            .is_some_and(|name| name == DEBIAN_WRAPPER)
        {
            resolved.parent().map(Path::to_path_buf)
        } else {
            found.parent().map(Path::to_path_buf)
        };
        if let Some(dir) = dir.filter(|dir| holds_scripts(dir)) {
            return Some(dir);
        }
    }
    Some(PathBuf::from(DEBIAN_BIN_DIR)).filter(|d| holds_scripts(d))
}

/// The first executable file called `program` in `PATH`.
fn find_in_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// The start-up time limit.
fn start_timeout() -> Duration {
    std::env::var(START_TIMEOUT_ENV)
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map_or(DEFAULT_START_TIMEOUT, Duration::from_secs)
}

/// Writes the configuration, the plugin list, an empty `rabbitmq-env.conf` and the TLS files.
fn write_files(dir: &Path, amqp_port: u16, amqps_port: u16, user: &str, password: &str) {
    let tls = dir.join("tls");
    fs::create_dir_all(&tls).expect("create the broker's tls folder");
    for name in TLS_FILES {
        fs::copy(dev_certs_dir().join(name), tls.join(name)).unwrap_or_else(|error| {
            panic!(
                "cannot copy {} for the broker: {error}",
                dev_certs_dir().join(name).display()
            )
        });
    }
    let config = format!(
        "\
listeners.tcp.1 = 127.0.0.1:{amqp_port}
listeners.ssl.1 = 127.0.0.1:{amqps_port}
ssl_options.cacertfile = {ca}
ssl_options.certfile = {cert}
ssl_options.keyfile = {key}
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = subject_alternative_name
ssl_cert_login_san_type = uri
ssl_cert_login_san_index = 0
default_user = {user}
default_pass = {password}
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.write = .*
default_permissions.read = .*
log.console = false
log.file.level = info
",
        ca = tls.join("ca.pem").display(),
        cert = tls.join("server.pem").display(),
        key = tls.join("server.key").display(),
    );
    write(&dir.join("rabbitmq.conf"), &config);
    write(
        &dir.join("enabled_plugins"),
        "[rabbitmq_auth_mechanism_ssl].\n",
    );
    write(&dir.join("rabbitmq-env.conf"), "");
}

fn write(path: &Path, contents: &str) {
    let mut file = fs::File::create(path)
        .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
    file.write_all(contents.as_bytes())
        .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
}

/// The environment of the node and of the CLI: every file in `dir`, every port private, every
/// listener on 127.0.0.1.
fn environment(
    dir: &Path,
    node: &str,
    amqp_port: u16,
    dist_port: u16,
    epmd_port: u16,
) -> Vec<(String, OsString)> {
    let path = |name: &str| dir.join(name).into_os_string();
    let loopback_dist = "-kernel inet_dist_use_interface {127,0,0,1}";
    vec![
        // The Erlang cookie lives in $HOME; the node and the CLI share it.
        ("HOME".into(), dir.as_os_str().to_owned()),
        ("LC_ALL".into(), "C.UTF-8".into()),
        // Not /etc/rabbitmq/rabbitmq-env.conf, nor advanced.config.
        ("RABBITMQ_CONF_ENV_FILE".into(), path("rabbitmq-env.conf")),
        ("RABBITMQ_CONFIG_FILE".into(), path("rabbitmq.conf")),
        (
            "RABBITMQ_ADVANCED_CONFIG_FILE".into(),
            path("advanced.config"),
        ),
        (
            "RABBITMQ_ENABLED_PLUGINS_FILE".into(),
            path("enabled_plugins"),
        ),
        ("RABBITMQ_MNESIA_BASE".into(), path("mnesia")),
        ("RABBITMQ_LOG_BASE".into(), path("log")),
        ("RABBITMQ_PID_FILE".into(), path("rabbit.pid")),
        ("RABBITMQ_NODENAME".into(), node.into()),
        ("RABBITMQ_NODE_IP_ADDRESS".into(), "127.0.0.1".into()),
        ("RABBITMQ_NODE_PORT".into(), amqp_port.to_string().into()),
        ("RABBITMQ_DIST_PORT".into(), dist_port.to_string().into()),
        (
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS".into(),
            loopback_dist.into(),
        ),
        // The CLI's own distribution listener: any free port, on 127.0.0.1.
        ("RABBITMQ_CTL_DIST_PORT_MIN".into(), "0".into()),
        ("RABBITMQ_CTL_DIST_PORT_MAX".into(), "0".into()),
        ("RABBITMQ_CTL_ERL_ARGS".into(), loopback_dist.into()),
        ("ERL_EPMD_PORT".into(), epmd_port.to_string().into()),
        ("ERL_EPMD_ADDRESS".into(), "127.0.0.1".into()),
    ]
}

/// `n` random bytes, hex-encoded.
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0; n];
    getrandom::fill(&mut bytes).expect("the system's random number generator");
    hex::encode(bytes)
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for URL user info.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}
