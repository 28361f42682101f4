//! Throwaway local Postgres clusters, for `pgtenant quickstart` and the integration tests: find
//! the server binaries, initdb (as the `postgres` user when running as root, since initdb
//! refuses root), start on a free loopback port, and stop and delete everything on drop.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a fresh cluster may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before the postmaster is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// What the cluster should look like.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Password of the `postgres` superuser (SCRAM over TCP).
    pub superuser_password: String,
    /// pg_hba.conf lines placed before the defaults (first match wins).
    pub hba_prepend: Vec<String>,
    /// `-c name=value` server settings added to the defaults.
    pub settings: Vec<(String, String)>,
}

/// A running throwaway cluster; dropped means stopped and deleted.
pub struct LocalCluster {
    root: PathBuf,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
    /// Loopback port it listens on.
    pub port: u16,
    password: String,
}

/// The directory holding initdb and postgres: PATH first, then Debian's
/// /usr/lib/postgresql/<newest>/bin.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    find_bin_dir_in(
        std::env::var_os("PATH").as_deref(),
        Path::new("/usr/lib/postgresql"),
    )
}

fn find_bin_dir_in(path: Option<&std::ffi::OsStr>, debian_root: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = path {
        for dir in std::env::split_paths(path) {
            // Follow symlinks (/usr/local/bin/initdb -> …/15/bin/initdb) to the directory that
            // also holds pg_isready and the rest.
            if let Ok(initdb) = std::fs::canonicalize(dir.join("initdb"))
                && let Some(real) = initdb.parent()
                && real.join("postgres").is_file()
                && real.join("pg_isready").is_file()
            {
                return Ok(real.to_path_buf());
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(debian_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "PostgreSQL server binaries (initdb, postgres) were not found on PATH or in /usr/lib/postgresql/*/bin; \
             install them, e.g. `apt-get install postgresql` on Debian or Ubuntu"
        ),
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn postgres_ids() -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .context("running id")?;
        if !out.status.success() {
            bail!(
                "running as root needs a `postgres` system user to own the cluster (initdb refuses root)"
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

fn unique_root() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "pgtenant-pg-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

impl LocalCluster {
    /// Creates and starts a cluster.
    pub fn start(opts: &ClusterOptions) -> anyhow::Result<LocalCluster> {
        let bin = find_bin_dir()?;
        // SAFETY: geteuid has no preconditions.
        let owner = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_ids()?)
        } else {
            None
        };
        let root = unique_root();
        std::fs::create_dir_all(&root)?;
        let mut cluster = LocalCluster {
            root,
            bin,
            owner,
            child: None,
            port: 0,
            password: opts.superuser_password.clone(),
        };
        cluster.init(opts)?;
        cluster.launch(opts, free_port()?)?;
        Ok(cluster)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(&self.root);
        cmd
    }

    fn own(&self, path: &Path) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn init(&mut self, opts: &ClusterOptions) -> anyhow::Result<()> {
        self.own(&self.root)?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))?;
        let pwfile = self.root.join("pwfile");
        std::fs::write(&pwfile, &opts.superuser_password)?;
        self.own(&pwfile)?;
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data())
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--auth-local=trust",
            ])
            .args(["--auth-host=scram-sha-256", "--pwfile"])
            .arg(&pwfile)
            .stdin(Stdio::null())
            .output()
            .context("running initdb")?;
        let _ = std::fs::remove_file(&pwfile);
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        if !opts.hba_prepend.is_empty() {
            let hba = self.data().join("pg_hba.conf");
            let old = std::fs::read_to_string(&hba)?;
            std::fs::write(&hba, format!("{}\n{old}", opts.hba_prepend.join("\n")))?;
        }
        Ok(())
    }

    fn launch(&mut self, opts: &ClusterOptions, port: u16) -> anyhow::Result<()> {
        self.port = port;
        let log = std::fs::File::create(self.root.join("postgres.log"))?;
        self.own(&self.root.join("postgres.log"))?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.root);
        let defaults = [
            ("listen_addresses", "127.0.0.1"),
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("shared_buffers", "32MB"),
            ("max_connections", "300"),
        ];
        for (k, v) in defaults
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(opts.settings.iter().cloned())
        {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().context("starting postgres")?);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let status = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()?;
            if status.success() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(exit) = child.try_wait()?
            {
                let log =
                    std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default();
                bail!("postgres exited with {exit} while starting:\n{log}");
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("postgres did not become ready within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Turns TLS on with this PEM certificate and key: both go into the data directory (the
    /// key readable by the server's owner only), `ssl = on` into postgresql.conf, and the
    /// server reloads its configuration (it takes a moment to apply).
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        let data = self.data();
        let (cert, key) = (data.join("server.crt"), data.join("server.key"));
        std::fs::write(&cert, cert_pem)?;
        std::fs::write(&key, key_pem)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        self.own(&cert)?;
        self.own(&key)?;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(&mut conf, b"\nssl = on\n")?;
        let child = self.child.as_ref().context("the cluster is not running")?;
        let pid = i32::try_from(child.id()).context("pid")?;
        // SAFETY: signalling a child we spawned and have not reaped.
        if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
            bail!(
                "could not signal postgres: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// A URL for the superuser on `database`.
    pub fn superuser_url(&self, database: &str) -> String {
        format!(
            "postgresql://postgres:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// Stops the server (fast shutdown, then kill), leaving the data directory for a restart.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill with a pid we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let started = Instant::now();
        while started.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the server again on the same port after [`stop`](Self::stop).
    pub fn restart(&mut self, opts: &ClusterOptions) -> anyhow::Result<()> {
        self.launch(opts, self.port)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_say_how_to_install_them() {
        let empty = std::env::temp_dir().join("pgtenant-no-such-dir");
        let err =
            find_bin_dir_in(Some(std::ffi::OsStr::new("")), &empty).expect_err("nothing to find");
        assert!(
            err.to_string().contains("apt-get install postgresql"),
            "{err}"
        );
    }

    #[test]
    fn debian_layout_is_found_without_path() {
        let root = std::env::temp_dir().join(format!("pgtenant-fake-pg-{}", std::process::id()));
        for v in ["13", "15"] {
            let bin = root.join(v).join("bin");
            std::fs::create_dir_all(&bin).expect("mkdir");
            std::fs::write(bin.join("initdb"), "").expect("initdb");
        }
        let found = find_bin_dir_in(None, &root).expect("found");
        assert_eq!(
            found,
            root.join("15").join("bin"),
            "the newest version wins"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
