//! The accept loop: one task per client under a global connection limit, each with a log context
//! naming its id, peer, tenant and user; a maintenance tick for the pools; and a shutdown that
//! stops accepting, tells clients, and ends every task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::{Config, ListenerConfig};
use crate::error::ClientError;
use crate::handshake::{self, Handshake, HandshakeError};
use crate::logging::client::ClientLog;
use crate::pool::{KickSwitch, Pools};
use crate::protocol::messages;
use crate::session::cancel::CancelRegistry;
use crate::session::sockio::RelayIo;
use crate::session::{self, SessionEnd, StartupRequest};
use crate::tenant::catalog::Catalog;
use crate::tls::ListenerTls;

/// How long shutdown waits, past the clients' grace, for their tasks to end.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

/// How often a draining proxy looks for clients that finished their transaction.
const DRAIN_TICK: Duration = Duration::from_millis(20);

/// Pool upkeep period.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

/// State every connection task shares, passed explicitly (no globals).
pub struct Shared {
    /// The routing snapshot and its sources.
    pub catalog: Arc<Catalog>,
    /// Backend pools by tenant.
    pub pools: Pools,
    /// Live cancel keys.
    pub cancels: Arc<CancelRegistry>,
    /// Per-process key for decoy SCRAM salts (unknown users).
    pub decoy_key: [u8; 32],
    client_permits: Arc<Semaphore>,
    next_client_id: AtomicU64,
    shutting_down: AtomicBool,
    /// Set when shutdown starts: clients finish their transaction and start no other.
    draining: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    config_path: std::sync::Mutex<Option<std::path::PathBuf>>,
    /// Each listener's TLS, in config order; certificates reload in place.
    pub tls: Vec<Arc<ListenerTls>>,
}

impl Shared {
    /// The configuration in force (swapped whole by a reload).
    pub fn config(&self) -> Arc<Config> {
        self.catalog.config()
    }

    /// Remembers the file the config came from, for reloads.
    pub fn set_config_path(&self, path: std::path::PathBuf) {
        *self.config_path.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
    }

    /// The file the config came from, if any.
    pub fn config_path(&self) -> Option<std::path::PathBuf> {
        self.config_path
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the proxy to shut down as on SIGTERM (the admin console's SHUTDOWN).
    pub fn request_shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

/// A running proxy.
pub struct ProxyHandle {
    /// Where each listener actually bound (port 0 in config picks a free one).
    pub addrs: Vec<SocketAddr>,
    /// Where the metrics endpoint bound, when configured.
    pub metrics_addr: Option<SocketAddr>,
    /// The shared state, for inspection.
    pub shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl ProxyHandle {
    /// Stops accepting, closes every client with 57P01 and waits for all tasks to end.
    pub async fn shutdown(self) {
        self.shared.request_shutdown();
        let _ = self.task.await;
    }

    /// Resolves once a shutdown was asked for from inside (the admin console's SHUTDOWN).
    pub async fn shutdown_requested(&self) {
        let mut stop = self.shared.stop.subscribe();
        stopped(&mut stop).await;
    }
}

/// Binds every listener, starts following the catalog and serves until shut down.
pub async fn start(config: Config) -> std::io::Result<ProxyHandle> {
    let config = Arc::new(config);
    let catalog = Catalog::new(config.clone());
    let mut decoy_key = [0u8; 32];
    rand::rng().fill_bytes(&mut decoy_key);
    let (stop, stop_rx) = watch::channel(false);
    let mut tls = Vec::new();
    for l in &config.listeners {
        tls.push(Arc::new(
            ListenerTls::load(l).map_err(|e| std::io::Error::other(e.to_string()))?,
        ));
    }
    let shared = Arc::new(Shared {
        client_permits: Arc::new(Semaphore::new(config.proxy.max_client_connections)),
        catalog,
        pools: Pools::default(),
        cancels: Arc::default(),
        decoy_key,
        next_client_id: AtomicU64::new(1),
        shutting_down: AtomicBool::new(false),
        draining: Arc::new(AtomicBool::new(false)),
        stop,
        config_path: std::sync::Mutex::new(None),
        tls: tls.clone(),
    });
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for (l, tls) in config.listeners.iter().zip(tls) {
        let listener = TcpListener::bind(l.address).await?;
        defer_accept(&listener, config.proxy.tcp_defer_accept_secs)?;
        let addr = listener.local_addr()?;
        let offers_tls = tls.acceptor().is_some();
        tracing::info!(%addr, auth = ?l.auth, tls = offers_tls, tls_required = tls.required, "listening");
        addrs.push(addr);
        listeners.push((
            listener,
            Listener {
                config: l.clone(),
                tls,
            },
        ));
    }
    let metrics = match &config.metrics {
        Some(m) => Some(TcpListener::bind(m.address).await?),
        None => None,
    };
    let metrics_addr = match &metrics {
        Some(l) => {
            let addr = l.local_addr()?;
            tracing::info!(%addr, "serving metrics at /metrics");
            Some(addr)
        }
        None => None,
    };
    let task = tokio::spawn(run(shared.clone(), listeners, metrics, stop_rx));
    Ok(ProxyHandle {
        addrs,
        metrics_addr,
        shared,
        task,
    })
}

async fn run(
    shared: Arc<Shared>,
    listeners: Vec<(TcpListener, Listener)>,
    metrics: Option<TcpListener>,
    mut stop: watch::Receiver<bool>,
) {
    let follower = shared.catalog.follower().map(tokio::spawn);
    let mut tasks = JoinSet::new();
    let maint = shared.clone();
    let mut maint_stop = stop.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
        let mut changes = maint.catalog.subscribe();
        loop {
            tokio::select! {
                _ = tick.tick() => maint.pools.maintain(&maint.catalog.snapshot()),
                // A disabled tenant's clients go at once, not at the next tick.
                Ok(()) = changes.changed() => maint.pools.kick_unservable(&maint.catalog.snapshot()),
                _ = stopped(&mut maint_stop) => return,
            }
        }
    });
    for (listener, cfg) in listeners {
        tasks.spawn(accept_loop(shared.clone(), listener, cfg, stop.clone()));
    }
    if let Some(listener) = metrics {
        tasks.spawn(crate::metrics::serve(
            shared.clone(),
            listener,
            stop.clone(),
        ));
    }
    if let Some(c) = &shared.config().catalog
        && c.usage_interval_ms > 0
    {
        let interval = Duration::from_millis(c.usage_interval_ms);
        tasks.spawn(crate::usage::run(
            shared.clone(),
            c.url.clone(),
            interval,
            stop.clone(),
        ));
    }
    stopped(&mut stop).await;
    tracing::info!("shutting down");
    // Accept loops end once every client has been told 57P01; give them a bounded moment.
    let limit = shared.config().proxy.shutdown_grace() + SHUTDOWN_SLACK;
    let drained =
        tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("clients did not close in time; dropping them");
    }
    tasks.shutdown().await;
    if let Some(f) = follower {
        f.abort();
    }
    shared.pools.close_all();
}

/// Sets `TCP_DEFER_ACCEPT` on a listening socket (see `proxy.tcp_defer_accept_secs`); 0 leaves
/// it off. Elsewhere than Linux the option does not exist and nothing is set.
fn defer_accept(listener: &TcpListener, secs: u32) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    if secs > 0 {
        use std::os::fd::AsRawFd;
        let value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
        // SAFETY: a valid descriptor owned by `listener`, and a c_int option of c_int's size.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (listener, secs);
    Ok(())
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    cfg: Listener,
    mut stop: watch::Receiver<bool>,
) {
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let shared = shared.clone();
                    let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
                    let log = ClientLog::new(id, peer);
                    let kick = Arc::new(KickSwitch::new(id, peer, shared.draining.clone(), shared.pools.proxy_pause()));
                    // Boxed: the task's cell then moves a pointer, not the connection's whole
                    // state (kilobytes), each time tokio stores or drops it.
                    let task = Box::pin(handle_client(shared, socket, cfg.clone(), log, kick.clone()));
                    kick.arm(clients.spawn(task));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            _ = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    drain(&shared, &mut clients).await;
    // Each dropped client task says 57P01 on its way out (see ClientSocket).
    shared.shutting_down.store(true, Ordering::Release);
    clients.abort_all();
    while clients.join_next().await.is_some() {}
}

/// Lets clients finish the transaction they are in, up to the shutdown grace: no client starts
/// another (the relays refuse it with 57P01), and clients between transactions are closed at
/// once with 57P01.
async fn drain(shared: &Shared, clients: &mut JoinSet<()>) {
    // SeqCst: pairs with KickSwitch::begin_transaction.
    shared.draining.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + shared.config().proxy.shutdown_grace();
    let reason = ClientError::shutting_down();
    loop {
        let busy = shared.pools.kick_idle(&reason);
        if clients.is_empty() {
            return;
        }
        tokio::select! {
            Some(_) = clients.join_next() => {}
            _ = tokio::time::sleep(DRAIN_TICK) => {}
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(in_transaction = busy, "shutdown grace over; closing the remaining clients");
                return;
            }
        }
    }
}

/// A client's socket. If its task is dropped while the proxy shuts down, it says goodbye with
/// 57P01 on the way out: no per-wakeup cost for watching the shutdown signal.
struct ClientSocket {
    /// None once a TLS handshake took it over (then [`crate::tls::TlsClient`] says goodbye).
    stream: Option<TcpStream>,
    shared: Arc<Shared>,
    kick: Arc<KickSwitch>,
}

/// What a client whose task is being dropped must hear, if anything.
fn goodbye(shared: &Shared, kick: &KickSwitch) -> Option<ClientError> {
    if shared.shutting_down.load(Ordering::Acquire) {
        Some(ClientError::shutting_down())
    } else {
        kick.reason().cloned()
    }
}

impl Drop for ClientSocket {
    fn drop(&mut self) {
        if let (Some(reason), Some(stream)) = (goodbye(&self.shared, &self.kick), &self.stream) {
            let mut out = BytesMut::new();
            messages::error_response(&mut out, &reason);
            let _ = stream.try_write(&out);
        }
    }
}

/// Serves one connection. Its lines name it through `log`, in scope for everything but the relay
/// (see `session::serve`).
async fn handle_client(
    shared: Arc<Shared>,
    socket: TcpStream,
    listener: Listener,
    log: Arc<ClientLog>,
    kick: Arc<KickSwitch>,
) {
    let _ = socket.set_nodelay(true);
    let mut client = ClientSocket {
        stream: Some(socket),
        shared: shared.clone(),
        kick: kick.clone(),
    };
    let Some(socket) = client.stream.as_mut() else {
        return;
    };
    let started = tokio::time::Instant::now();
    let Ok(_permit) = shared.client_permits.clone().try_acquire_owned() else {
        log.in_scope(|| tracing::warn!("client refused: too many clients"));
        let limit = shared.config().proxy.max_client_connections;
        write_error(socket, &ClientError::too_many_clients(limit)).await;
        return;
    };
    let login = Login {
        shared: &shared,
        auth: listener.config.auth,
        deadline: started + shared.config().proxy.startup_timeout(),
        started,
        log: &log,
        kick,
    };
    let offer = listener.tls.acceptor();
    let mut early = BytesMut::new();
    let Some(hs) = first_packets(socket, &mut early, login.deadline, offer.is_some(), &log).await
    else {
        return;
    };
    match (hs, offer) {
        (Handshake::Tls, Some(acceptor)) => {
            if socket.write_all(b"S").await.is_err() {
                return;
            }
            if let Some(tcp) = client.stream.take() {
                // Boxed: a TLS stream is large, and the plain path should not carry (and copy)
                // room for it in every connection's future.
                Box::pin(serve_tls(tcp, acceptor, login)).await;
            }
        }
        (Handshake::Startup { .. }, _) if listener.tls.required => {
            log.in_scope(|| tracing::info!("client refused: TLS required"));
            let e = ClientError::fatal(
                crate::error::sqlstate::INVALID_AUTHORIZATION,
                "this listener requires TLS; connect with sslmode=require",
            );
            write_error(socket, &e).await;
        }
        (hs, _) => login.serve(socket, hs, early, None).await,
    }
}

/// The TLS handshake, then the startup packet and the session over TLS.
async fn serve_tls(tcp: TcpStream, acceptor: Arc<tokio_rustls::TlsAcceptor>, login: Login<'_>) {
    let log = login.log;
    let tls = match tokio::time::timeout_at(login.deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            log.in_scope(|| tracing::info!(error = %e, "TLS handshake failed"));
            return;
        }
        Err(_) => return,
    };
    let sni = tls.get_ref().1.server_name().map(str::to_owned);
    let (shared, kick) = (login.shared.clone(), login.kick.clone());
    let mut tls = crate::tls::TlsClient {
        stream: tls,
        goodbye: Box::new(move || goodbye(&shared, &kick)),
    };
    let mut early = BytesMut::new();
    let Some(hs) = first_packets(&mut tls, &mut early, login.deadline, false, log).await else {
        return;
    };
    login.serve(&mut tls, hs, early, sni).await;
}

/// A listener's settings and TLS, as each of its connections needs them.
#[derive(Clone)]
struct Listener {
    config: ListenerConfig,
    tls: Arc<ListenerTls>,
}

/// What a connection carries from accept to login.
struct Login<'a> {
    shared: &'a Arc<Shared>,
    auth: crate::config::AuthMethod,
    deadline: tokio::time::Instant,
    started: tokio::time::Instant,
    log: &'a Arc<ClientLog>,
    kick: Arc<KickSwitch>,
}

impl Login<'_> {
    /// Serves the session (or cancel) the handshake asked for, over plain TCP or TLS.
    async fn serve<S: AsyncRead + AsyncWrite + RelayIo + Unpin>(
        self,
        stream: &mut S,
        hs: Handshake,
        early: BytesMut,
        sni: Option<String>,
    ) {
        let (shared, log) = (self.shared, self.log);
        let params = match hs {
            Handshake::Cancel { pid, secret } => {
                return log.scope(shared.cancels.cancel(pid, &secret)).await;
            }
            // A second SSLRequest inside TLS was answered 'N' by negotiate; this cannot be.
            Handshake::Tls => return,
            Handshake::Startup { params } => params,
        };
        let req = StartupRequest {
            params,
            auth: self.auth,
            login_deadline: self.deadline,
            early,
            kick: self.kick,
            sni,
        };
        let end = if crate::admin::wants_console(&shared.config(), &req.params) {
            log.scope(crate::admin::serve(shared, stream, req)).await
        } else {
            session::serve(shared, stream, req, log).await
        };
        let ms = self.started.elapsed().as_millis() as u64;
        log.in_scope(|| match end {
            SessionEnd::Refused(e) => {
                tracing::info!(duration_ms = ms, error = %e, "client refused")
            }
            other => tracing::info!(duration_ms = ms, end = ?other, "client disconnected"),
        })
    }
}

/// The handshake under the login deadline; `None` when the client was answered or left. Not
/// run in `log`'s scope (nothing to name in it but these lines, which enter it themselves).
async fn first_packets<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut S,
    early: &mut BytesMut,
    deadline: tokio::time::Instant,
    offer_tls: bool,
    log: &Arc<ClientLog>,
) -> Option<Handshake> {
    match tokio::time::timeout_at(deadline, handshake::negotiate(socket, early, offer_tls)).await {
        Err(_) => {
            log.in_scope(|| tracing::info!("client sent no startup packet in time"));
            write_error(socket, &ClientError::protocol("startup timed out")).await;
            None
        }
        Ok(Err(HandshakeError::Io(e))) => {
            log.in_scope(|| tracing::debug!(error = %e, "client left during startup"));
            None
        }
        Ok(Err(HandshakeError::Rejected(e))) => {
            log.in_scope(|| tracing::info!(error = %e, "startup rejected"));
            write_error(socket, &e).await;
            None
        }
        Ok(Ok(hs)) => Some(hs),
    }
}

/// Resolves once shutdown is signalled. Cancel-safe.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn write_error<S: AsyncWrite + Unpin>(socket: &mut S, err: &ClientError) {
    let mut out = BytesMut::new();
    messages::error_response(&mut out, err);
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.write_all(&out)).await;
}
