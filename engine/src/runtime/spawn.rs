//! The runtime's entry points: checking the options, starting the workers of a server or a
//! client on the chosen driver, and what each worker starts with.
//!
//! Owns: the `spawn_*` functions re-exported from [`crate::runtime`], [`ClientServices`], the
//! process-wide preparation (driver choice, open-file limit and the descriptors it reserves),
//! binding the listeners (one copy per worker), and wiring the shared pieces every worker gets
//! (mailboxes, budgets, stats, reload, resolver threads) before each worker's thread starts.
//! Must not touch: what a worker does once it runs ([`super::event_loop`]), the handle's
//! behaviour ([`RuntimeHandle`] stays in the parent), protocol logic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use super::driver_choice::{DriverKind, choose_driver};
use super::io::{self, Waker};
#[cfg(target_os = "linux")]
use super::uring;
use super::{
    ClientForward, ClientProxy, ExposedService, ListenerRole, ProxyKind, ReverseListener,
    RuntimeError, RuntimeHandle, RuntimeOptions, ShutdownHandle, TargetResolver, api, event_loop,
    listen, rejection_log, reload, resolver, reverse, sockopt, stats, worker,
};

fn prepare(opts: &mut RuntimeOptions) -> Result<DriverKind, RuntimeError> {
    if opts.workers == 0 {
        return Err(RuntimeError::Workers);
    }
    opts.validate()?;
    // A runtime is what exposes the tunnel to a network: no key without an explicit opt-in.
    opts.engine.check_key()?;
    let driver = choose_driver(opts.io)?;
    tracing::info!(driver = driver.name(), requested = ?opts.io, "I/O driver selected");
    match sockopt::raise_nofile_limit() {
        Ok((before, now, hard)) => {
            tracing::info!(soft_before = before, soft = now, hard, "open-file limit");
            reserve_descriptors(opts, now);
        }
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
    Ok(driver)
}

/// Keeps three quarters of the open-file limit `nofile` for tunnels, backend connections and
/// re-dials: a worker's handshakes in progress plus its hand-offs waiting for a full ring (each
/// at most `max_handshakes`) may take the rest, so `max_handshakes` is lowered to
/// `nofile / (8 × workers)` when it is higher.
fn reserve_descriptors(opts: &mut RuntimeOptions, nofile: u64) {
    let share = nofile / (8 * opts.workers.max(1) as u64);
    let share = u32::try_from(share).unwrap_or(u32::MAX).max(1);
    if share < opts.engine.max_handshakes {
        tracing::info!(
            configured = opts.engine.max_handshakes,
            applied = share,
            nofile,
            "handshakes in progress per worker lowered to keep descriptors for tunnels and \
             backend connections"
        );
        opts.engine.max_handshakes = share;
    }
}

/// Starts a server: accepts tunnels on `listen`, connects each stream to what `resolve` says.
/// With several workers, each accepts on its own `SO_REUSEPORT` copy of the listener and hands
/// a tunnel to the worker that owns its session.
pub fn spawn_server(
    opts: RuntimeOptions,
    listen: SocketAddr,
    resolve: TargetResolver,
) -> Result<RuntimeHandle, RuntimeError> {
    start_server(opts, listen, resolve, None)
}

/// [`spawn_server`] with reverse tunnels: each of `reverse` listens (on worker 0) while a
/// client that exposes its name is connected, or always ([`WhenAbsent::Reset`](super::WhenAbsent::Reset)), and carries
/// each connection as a stream the server opens towards that client. Requires a key.
pub fn spawn_reverse_server(
    opts: RuntimeOptions,
    listen: SocketAddr,
    resolve: TargetResolver,
    reverse: &[ReverseListener],
) -> Result<RuntimeHandle, RuntimeError> {
    start_server_with(opts, listen, resolve, None, reverse)
}

/// [`spawn_client`] exposing services: the server's streams for each name in `exposed` are
/// connected to its target (any other name is reset, code 5). Requires a key.
pub fn spawn_exposing_client(
    opts: RuntimeOptions,
    server: SocketAddr,
    forwards: &[ClientForward],
    exposed: &[ExposedService],
) -> Result<RuntimeHandle, RuntimeError> {
    spawn_client_with(
        opts,
        server,
        ClientServices {
            forwards,
            proxies: &[],
            exposed,
        },
    )
}

/// Reverse tunnels need a key (the peer must prove it before a port opens or a target is
/// reached) and names a client can send.
fn check_reverse<'a>(
    opts: &RuntimeOptions,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), RuntimeError> {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        return Ok(());
    }
    if opts.engine.psk.is_empty() {
        return Err(RuntimeError::Reverse(
            "reverse tunnels need a key on both ends (make one with `mtcpd genkey`)".into(),
        ));
    }
    if crate::wire::encode_expose_names(&names).is_none() {
        return Err(RuntimeError::Reverse(format!(
            "names must be distinct, 1 to {} ASCII letters, digits, '.', '_' or '-', and fit in              {} bytes together (one more byte each): {names:?}",
            crate::wire::MAX_EXPOSE_NAME,
            crate::wire::MAX_EXPOSE_BODY
        )));
    }
    Ok(())
}

/// [`spawn_server`], handing the streams routed to [`Route::Accept`](super::Route::Accept) to `accept`.
pub(super) fn start_server(
    opts: RuntimeOptions,
    listen: SocketAddr,
    resolve: TargetResolver,
    accept: Option<api::AcceptSender>,
) -> Result<RuntimeHandle, RuntimeError> {
    start_server_with(opts, listen, resolve, accept, &[])
}

/// [`start_server`] with reverse listeners.
fn start_server_with(
    opts: RuntimeOptions,
    listen: SocketAddr,
    resolve: TargetResolver,
    accept: Option<api::AcceptSender>,
    reverse: &[ReverseListener],
) -> Result<RuntimeHandle, RuntimeError> {
    check_reverse(&opts, reverse.iter().map(|r| r.name.as_str()))?;
    let mut opts = opts;
    let driver = prepare(&mut opts)?;
    let tls = opts.tls.server_setup()?;
    let listeners = listen::listeners_per_worker(listen, opts.workers, true)?;
    let local = listeners[0].local_addr()?;
    tracing::info!(%local, workers = opts.workers, "listening for tunnels");
    let setup = WorkerSetup::Server {
        listeners: listeners.into_iter().map(Some).collect(),
        resolve,
        accept,
        reverse: (!reverse.is_empty()).then(|| Arc::new(reverse::ReverseTable::new(reverse))),
    };
    start(driver, opts, vec![local], setup, tls)
}

/// Starts a client: opens the tunnel pool to `server` and carries every connection accepted on a
/// forward's listen address as a stream. With several workers, each runs its own session (and
/// pool) and takes the connections the kernel gives its copy of each listener.
pub fn spawn_client(
    opts: RuntimeOptions,
    server: SocketAddr,
    forwards: &[ClientForward],
) -> Result<RuntimeHandle, RuntimeError> {
    spawn_client_with(
        opts,
        server,
        ClientServices {
            forwards,
            ..ClientServices::default()
        },
    )
}

/// [`spawn_client`] with proxy listeners too (SOCKS5, HTTP): each of their connections names
/// its own target. A client may have proxies and no forward.
pub fn spawn_client_with_proxies(
    opts: RuntimeOptions,
    server: SocketAddr,
    forwards: &[ClientForward],
    proxies: &[ClientProxy],
) -> Result<RuntimeHandle, RuntimeError> {
    spawn_client_with(
        opts,
        server,
        ClientServices {
            forwards,
            proxies,
            exposed: &[],
        },
    )
}

/// Everything a client serves besides its tunnels: forwards, proxy listeners and the services
/// the server's reverse listeners reach. A client needs at least one of them to be useful, but
/// the runtime does not insist (a library client may only open streams itself).
#[derive(Clone, Copy, Default)]
pub struct ClientServices<'a> {
    /// Local listeners whose connections go to a fixed target.
    pub forwards: &'a [ClientForward],
    /// Local SOCKS5 / HTTP proxy listeners: each connection names its own target.
    pub proxies: &'a [ClientProxy],
    /// Services this client connects the server's reverse streams to (requires a key).
    pub exposed: &'a [ExposedService],
}

/// Starts a client with all of `services`: the general form of [`spawn_client`],
/// [`spawn_client_with_proxies`] and [`spawn_exposing_client`].
pub fn spawn_client_with(
    opts: RuntimeOptions,
    server: SocketAddr,
    services: ClientServices<'_>,
) -> Result<RuntimeHandle, RuntimeError> {
    spawn_client_with_servers(opts, &[server], services)
}

/// [`spawn_client_with`] given several servers: each session dials the first that works,
/// moving on round-robin when one cannot be established (see [`server_list`](super::server_list)).
pub fn spawn_client_with_servers(
    opts: RuntimeOptions,
    servers: &[SocketAddr],
    services: ClientServices<'_>,
) -> Result<RuntimeHandle, RuntimeError> {
    let Some(&server) = servers.first() else {
        return Err(RuntimeError::NoServer);
    };
    let ClientServices {
        forwards,
        proxies,
        exposed,
    } = services;
    check_reverse(&opts, exposed.iter().map(|e| e.name.as_str()))?;
    let mut opts = opts;
    let driver = prepare(&mut opts)?;
    let tls = opts.tls.client_setup()?;
    let mut listeners: Vec<Vec<(std::net::TcpListener, ListenerRole)>> =
        (0..opts.workers).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for f in forwards {
        let copies = listen::listeners_per_worker(f.listen, opts.workers, true)?;
        let local = copies[0].local_addr()?;
        tracing::info!(
            %local,
            forward = f.name.as_deref().unwrap_or_default(),
            target = f.target.as_deref().unwrap_or("<server default>"),
            %server,
            "listening for applications"
        );
        addrs.push(local);
        let forward = Arc::new(ClientForward {
            listen: local,
            ..f.clone()
        });
        for (w, l) in copies.into_iter().enumerate() {
            listeners[w].push((l, ListenerRole::Forward(forward.clone())));
        }
    }
    for p in proxies {
        let copies = listen::listeners_per_worker(p.listen, opts.workers, true)?;
        let local = copies[0].local_addr()?;
        let kind = match &p.kind {
            ProxyKind::Socks5 { credentials: None } => "SOCKS5",
            ProxyKind::Socks5 { .. } => "SOCKS5 (username/password)",
            ProxyKind::Http => "HTTP",
        };
        tracing::info!(%local, proxy = kind, %server, "listening for proxy requests");
        addrs.push(local);
        for (w, l) in copies.into_iter().enumerate() {
            listeners[w].push((l, ListenerRole::Proxy(p.kind.clone())));
        }
    }
    start(
        driver,
        opts,
        addrs,
        WorkerSetup::Client {
            servers: servers.into(),
            listeners,
            exposed: exposed.into(),
        },
        tls,
    )
}

/// What each worker of a runtime starts with.
enum WorkerSetup {
    Server {
        listeners: Vec<Option<std::net::TcpListener>>,
        resolve: TargetResolver,
        /// Where streams routed to [`Route::Accept`](super::Route::Accept) go (every worker holds a sender).
        accept: Option<api::AcceptSender>,
        /// The reverse listeners and their owners, shared by every worker.
        reverse: Option<Arc<reverse::ReverseTable>>,
    },
    Client {
        servers: Arc<[SocketAddr]>,
        listeners: Vec<Vec<(std::net::TcpListener, ListenerRole)>>,
        /// The services this client exposes.
        exposed: Arc<[ExposedService]>,
    },
}

impl WorkerSetup {
    fn name(&self) -> &'static str {
        match self {
            WorkerSetup::Server { .. } => "mtcpd-server",
            WorkerSetup::Client { .. } => "mtcpd-client",
        }
    }

    /// Worker `w`'s event loop on driver `io`.
    fn build<D: io::Driver>(
        &mut self,
        w: usize,
        io: D,
        opts: RuntimeOptions,
        ctx: event_loop::WorkerContext,
    ) -> std::io::Result<event_loop::EventLoop<D>> {
        match self {
            WorkerSetup::Server {
                listeners, resolve, ..
            } => {
                let listener = listeners[w]
                    .take()
                    .ok_or_else(|| std::io::Error::other("worker listener taken twice"))?;
                event_loop::EventLoop::server(io, opts, listener, resolve.clone(), ctx)
            }
            WorkerSetup::Client {
                servers, listeners, ..
            } => {
                let mine = std::mem::take(&mut listeners[w]);
                event_loop::EventLoop::client(io, opts, servers.clone(), mine, ctx)
            }
        }
    }
}

/// Starts the workers on the chosen driver.
fn start(
    driver: DriverKind,
    opts: RuntimeOptions,
    local_addrs: Vec<SocketAddr>,
    setup: WorkerSetup,
    tls: crate::tls::TlsSetup,
) -> Result<RuntimeHandle, RuntimeError> {
    match driver {
        DriverKind::Mio => start_on(io::Mio::new, driver.name(), opts, local_addrs, setup, tls),
        #[cfg(target_os = "linux")]
        DriverKind::Uring => {
            let chunk = opts.read_chunk;
            start_on(
                move || uring::Uring::new(chunk),
                driver.name(),
                opts,
                local_addrs,
                setup,
                tls,
            )
        }
    }
}

fn start_on<D: io::Driver>(
    new_driver: impl Fn() -> std::io::Result<(D, Waker)>,
    io_name: &'static str,
    opts: RuntimeOptions,
    local_addrs: Vec<SocketAddr>,
    mut setup: WorkerSetup,
    tls: crate::tls::TlsSetup,
) -> Result<RuntimeHandle, RuntimeError> {
    let workers = opts.workers;
    let mut drivers = Vec::with_capacity(workers);
    let mut wakers = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (driver, waker) = new_driver()?;
        drivers.push(driver);
        wakers.push(Arc::new(waker));
    }
    let wakers: Arc<[Arc<Waker>]> = wakers.into();
    let stop = Arc::new(AtomicBool::new(false));
    let budget = crate::endpoint::SessionBudget::new(opts.max_sessions);
    let rejections = rejection_log::RejectionLog::shared(std::time::Instant::now());
    let streams_cut = Arc::new(AtomicU64::new(0));
    let shutdown = ShutdownHandle {
        stop: stop.clone(),
        wakers: wakers.clone(),
        streams_cut: streams_cut.clone(),
    };
    let (stats, stats_inboxes) = stats::StatsProbe::wire(io_name, &wakers);
    let resolver = match &setup {
        WorkerSetup::Server { resolve, .. } => {
            Some(resolver::ResolverPool::start(resolve.clone())?)
        }
        WorkerSetup::Client { .. } => None,
    };
    let (reload, reload_inboxes) =
        reload::ReloadHandle::wire(&wakers, resolver.clone(), stop.clone());
    let mut handle = RuntimeHandle {
        reload,
        shutdown,
        threads: Vec::with_capacity(workers),
        local_addrs,
        hubs: Vec::with_capacity(workers),
        stats,
    };
    let accept = match &setup {
        WorkerSetup::Server { accept, .. } => accept.clone(),
        WorkerSetup::Client { .. } => None,
    };
    // Hand-offs waiting for a full ring are connections before authentication too: as many as
    // a worker may have handshakes.
    let mailboxes = worker::Mailbox::wire(
        wakers.clone(),
        opts.engine.max_handshakes as usize,
        worker::Placement::random(),
    );
    let sources = crate::endpoint::SourceBudget::new(opts.engine.max_handshakes_per_source);
    let backends = resolver::BackendBudget::new(opts.max_backend_connections);
    let (reverse_table, exposed) = match &setup {
        WorkerSetup::Server { reverse, .. } => (reverse.clone(), Arc::from([])),
        WorkerSetup::Client { exposed, .. } => (None, exposed.clone()),
    };
    let workers_inputs = drivers
        .into_iter()
        .zip(mailboxes)
        .zip(stats_inboxes)
        .zip(reload_inboxes);
    for (w, (((driver, mailbox), stats_inbox), reload_inbox)) in workers_inputs.enumerate() {
        let ctx = event_loop::WorkerContext {
            stop: stop.clone(),
            mailbox,
            budget: budget.clone(),
            rejections: rejections.clone(),
            sources: sources.clone(),
            backends: backends.clone(),
            resolver: resolver
                .as_ref()
                .map(|pool| pool.for_worker(wakers[w].clone())),
            tls: tls.clone(),
            reverse_table: reverse_table.clone(),
            exposed: exposed.clone(),
            worker: w,
            stats: Some(stats_inbox),
            reload: Some(reload_inbox),
            streams_cut: streams_cut.clone(),
        };
        // On failure `handle` is dropped, which stops and joins the workers already started.
        let mut event_loop = setup.build(w, driver, opts.clone(), ctx)?;
        handle
            .hubs
            .push(event_loop.attach_local(wakers[w].clone(), accept.clone()));
        let thread = std::thread::Builder::new()
            .name(format!("{}-{w}", setup.name()))
            .spawn(move || {
                let _span = tracing::info_span!("worker", id = w).entered();
                if workers > 1 {
                    match worker::pin_to_core(w) {
                        Some(core) => tracing::info!(core, "worker pinned"),
                        None => {
                            tracing::warn!("cannot pin worker to a core; left to the scheduler")
                        }
                    }
                }
                event_loop.run()
            })?;
        handle.threads.push(thread);
    }
    Ok(handle)
}
